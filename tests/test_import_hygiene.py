"""Layer boundaries checked at run time: each module is imported in a fresh interpreter
and must not pull in the packages its layer may not use (see DESIGN.md).

Add a case per boundary: (what to import, packages that must stay out of sys.modules).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CASES = [
    pytest.param(["gradtui.ui.app"], ["torch"], id="ui.app-without-torch"),
    pytest.param(["gradtui.ui.*"], ["torch"], id="every-ui-module-without-torch"),
]

_PROBE = r"""
import importlib, json, pkgutil, sys
names = json.loads(sys.argv[1])
for name in names:
    if name.endswith(".*"):
        pkg = importlib.import_module(name[:-2])
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            importlib.import_module(info.name)
    else:
        importlib.import_module(name)
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


@pytest.mark.parametrize(("modules", "forbidden"), CASES)
def test_imports_stay_inside_their_layer(modules: list[str], forbidden: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(modules)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    leaked = sorted(loaded & set(forbidden))
    assert not leaked, f"importing {modules} loaded {leaked}"
