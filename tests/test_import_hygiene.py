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
    pytest.param(["gradtui"], ["torch", "textual", "rich"], id="package-root-is-light"),
    pytest.param(["gradtui.core.*"], ["torch", "textual", "rich"], id="core-is-numpy-only"),
    pytest.param(["gradtui.training.probe"], ["textual", "rich"], id="probe-without-textual"),
    pytest.param(["gradtui.training.catalog", "gradtui.demo"], ["torch"], id="demo-viewer-without-torch"),
    pytest.param(["gradtui.cli"], ["torch", "textual"], id="cli-imports-lazily"),
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


FORBIDDEN_IMPORTS = {
    "gradtui/core": {"torch", "textual", "rich", "gradtui.ui", "gradtui.training"},
    "gradtui/training": {"textual", "rich", "gradtui.ui"},
    "gradtui/ui": {"torch", "gradtui.training.probe", "gradtui.training.scenarios"},
}


@pytest.mark.parametrize("folder", sorted(FORBIDDEN_IMPORTS))
def test_no_module_imports_across_its_layer_even_lazily(folder: str) -> None:
    """Static check: also catches imports inside functions, which the run-time check misses."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    bad = []
    for path in sorted((root / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                if any(name == f or name.startswith(f + ".") for f in FORBIDDEN_IMPORTS[folder]):
                    bad.append(f"{path.relative_to(root)}:{node.lineno} imports {name}")
    assert not bad, "\n".join(bad)
