"""The house rules of DESIGN.md, checked: which layer may import which, no import cycle,
no module over 600 lines.

Two checks: a static one over every `import` in the source (also the lazy ones inside
functions, which a run-time check misses), and a run-time one that imports each layer in a
fresh interpreter and looks at `sys.modules` (it catches what a dependency drags in).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gradtui"

# (layer prefix, gradtui layers it may import, outside packages it must not import)
_STDLIB_IO = {"threading", "socket", "subprocess", "selectors", "multiprocessing", "signal", "atexit"}
RULES: list[tuple[str, set[str], set[str]]] = [
    ("gradtui.model", {"gradtui.model"}, {"torch", "textual", "rich", "msgpack"} | _STDLIB_IO),
    ("gradtui.wire", {"gradtui.model", "gradtui.wire"}, {"torch", "textual", "rich"}),
    (
        "gradtui.probe",
        {"gradtui.model", "gradtui.wire", "gradtui.probe"},
        {"textual", "rich"},
    ),
    (
        "gradtui.sources",
        {"gradtui.model", "gradtui.wire", "gradtui.sources"},
        {"torch", "textual", "rich"},
    ),
    ("gradtui.ui", {"gradtui.model", "gradtui.wire", "gradtui.sources", "gradtui.ui"}, {"torch"}),
    # The tour's catalog and launcher are viewer side; scenarios and worker train (torch).
    ("gradtui.demo.catalog", set(), {"torch", "textual", "rich"}),
    (
        "gradtui.demo.launcher",
        {"gradtui.errors", "gradtui.model", "gradtui.wire", "gradtui.sources", "gradtui.ui", "gradtui.demo.catalog"},
        {"torch"},
    ),
    (
        "gradtui.demo",
        {"gradtui", "gradtui.model", "gradtui.wire", "gradtui.probe", "gradtui.demo"},
        {"textual", "rich"},
    ),
    (
        "gradtui.integrations",
        {"gradtui.model", "gradtui.wire", "gradtui.probe", "gradtui.integrations"},
        {"textual", "rich"},
    ),
    (
        "gradtui.cli",
        {"gradtui", "gradtui.errors", "gradtui.model", "gradtui.wire", "gradtui.sources", "gradtui.ui",
         "gradtui.demo.launcher"},
        {"torch", "textual", "rich"},
    ),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, known: set[str], *, typing: bool = False) -> list[tuple[int, str]]:
    """(line, module) of every import in `path`, gradtui ones resolved to the module imported;
    with `typing`, those under `if TYPE_CHECKING:` too."""
    out: list[tuple[int, str]] = []
    tree = ast.parse(path.read_text(), str(path))
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only.update(id(n) for sub in node.body for n in ast.walk(sub))
    for node in ast.walk(tree):
        if id(node) in type_only and not typing:
            continue
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.append((node.lineno, full if full in known else node.module))
    return out


def _rule(module: str) -> tuple[set[str], set[str]] | None:
    best = None
    for prefix, allowed, forbidden in RULES:
        if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, allowed, forbidden)
    return None if best is None else (best[1], best[2])


def _inside(name: str, prefixes: set[str]) -> bool:
    # "gradtui" allows the package root itself (`import gradtui`, `gradtui.watch`), not all below it.
    return any(name == p or (p != "gradtui" and name.startswith(p + ".")) for p in prefixes)


def test_every_module_imports_only_what_its_layer_may() -> None:
    modules = _modules()
    known = set(modules)
    bad: list[str] = []
    for module, path in modules.items():
        rule = _rule(module)
        if rule is None:
            continue
        allowed, forbidden = rule
        for line, name in _imports(path, known):
            top = name.split(".")[0]
            if top in forbidden:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
            elif top == "gradtui" and name != module and not _inside(name, allowed | {module}):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name} across its layer")
    assert not bad, "\n".join(bad)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_no_import_cycle_among_gradtui_modules() -> None:
    modules = _modules()
    known = set(modules)
    # Imports for type checking count: two modules that need each other's names are one module's job.
    graph = {
        module: {name for _, name in _imports(path, known, typing=True) if name in known and name != module}
        for module, path in modules.items()
    }
    # A package's __init__ is imported before any module in it: that edge is not an import cycle.
    for module in graph:
        graph[module] = {n for n in graph[module] if not module.startswith(n + ".")}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


LONGER = {
    "gradtui/probe/monitor.py": (700, "one job: the Monitor wires every part at the step boundary"),
}
"""Modules with one job allowed past 600 lines (STYLE.md section 7), with the reason."""


def test_no_module_is_over_600_lines() -> None:
    big = {
        str(p.relative_to(ROOT)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > LONGER.get(str(p.relative_to(ROOT)), (600, ""))[0]
    }
    assert not big, big


CASES = [
    pytest.param(["gradtui"], ["torch", "textual", "rich"], id="package-root-is-light"),
    pytest.param(["gradtui.model.*"], ["torch", "textual", "rich", "msgpack"], id="model-is-numpy-only"),
    pytest.param(["gradtui.wire.*"], ["torch", "textual", "rich"], id="wire-without-torch-or-ui"),
    pytest.param(["gradtui.sources.*"], ["torch", "textual", "rich"], id="sources-without-torch-or-ui"),
    pytest.param(["gradtui.probe.*"], ["textual", "rich"], id="probe-without-textual"),
    pytest.param(["gradtui.demo.catalog", "gradtui.demo.launcher"], ["torch"], id="demo-viewer-without-torch"),
    pytest.param(["gradtui.cli"], ["torch", "textual"], id="cli-imports-lazily"),
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
def test_imports_stay_inside_their_layer_at_run_time(modules: list[str], forbidden: list[str]) -> None:
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
