"""The explorer's floor plan (house style 16), as tests/test_layers.py keeps the library's: every module of
app/ lives on a floor and imports only from its own floor or the floors below (no loops), the tabs
never import each other, nothing imports inside a function, and no function is longer than 60 lines."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "app"
# bottom to top; a module may import its own floor and the floors before it, except on the tabs' floor
FLOORS = {
    "ground": ("text", "memory", "plots", "controls", "axes", "payload", "components", "lessons"),
    "helpers": ("charts", "errors", "permalink", "claims"),
    "models": ("trajectory", "stops", "catalogue", "engine"),
    "shared": ("render", "stepper", "shared", "inpaint", "rescoring"),
    "tabs": ("unmask", "compare", "lab", "analysis"),
    "page": ("ui", "site"),  # the Gradio page, and the same runs as a static site
    "launcher": ("launch",),
}
# the one function that imports inside itself, and why: the launcher sets the environment torch and
# gradio read at import (OMP_NUM_THREADS, the temp folder) before it imports them
DEFERRED = {("launch", "main")}
TABS = "tabs"
MAX_LINES = 60
ORDER = list(FLOORS)
FLOOR_OF = {m: f for f, mods in FLOORS.items() for m in mods}
MODULES = sorted(p.stem for p in ROOT.glob("*.py") if p.stem != "__init__")


def _deferred(tree: ast.Module, module: str) -> set[int]:
    """ids of the import nodes inside the DEFERRED functions of `module`."""
    return {id(n) for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef) and (module, fn.name) in DEFERRED
            for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}


def _imports(name: str) -> list[tuple[str, bool]]:
    """(imported app module, at module level?) for every import of app/<name>.py that names the app
    (an import in a DEFERRED function counts as at module level)."""
    tree = ast.parse((ROOT / f"{name}.py").read_text())
    top = {id(n) for n in tree.body} | _deferred(tree, name)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:  # from . import x / from .x import y
                mods = [node.module] if node.module else [a.name for a in node.names]
            elif node.module and (node.module == "app" or node.module.startswith("app.")):
                mods = [node.module.split(".")[1]] if "." in node.module else [a.name for a in node.names]
            else:
                continue
            found += [(m.split(".")[0], id(node) in top) for m in mods]
        elif isinstance(node, ast.Import):
            found += [(a.name.split(".")[1], id(node) in top) for a in node.names if a.name.startswith("app.")]
    return found


def test_every_module_lives_on_a_floor():
    assert sorted(FLOOR_OF) == MODULES, f"modules without a floor: {sorted(set(MODULES) - set(FLOOR_OF))}; " \
                                        f"floors naming no module: {sorted(set(FLOOR_OF) - set(MODULES))}"


@pytest.mark.parametrize("module", MODULES)
def test_imports_go_down_and_tabs_never_import_each_other(module):
    for name, at_top in _imports(module):
        assert at_top, f"app.{module} imports app.{name} inside a function"
        mine, theirs = ORDER.index(FLOOR_OF[module]), ORDER.index(FLOOR_OF[name])
        assert theirs <= mine, f"app.{module} ({FLOOR_OF[module]}) imports app.{name} from above ({FLOOR_OF[name]})"
        assert not (FLOOR_OF[module] == TABS and FLOOR_OF[name] == TABS), \
            f"tab module app.{module} imports tab module app.{name}: what both need belongs in app.shared"


@pytest.mark.parametrize("module", MODULES)
def test_no_import_inside_a_function(module):
    """Not even of a third-party package: the app is a thin shell whose imports are all at the top."""
    tree = ast.parse((ROOT / f"{module}.py").read_text())
    allowed = _deferred(tree, module)
    for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
        inner = [n for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in allowed]
        assert not inner, f"app.{module}.{fn.name} imports inside itself (line {inner[0].lineno})"


def test_no_import_loops():
    graph = {m: {n for n, _ in _imports(m) if n != m} for m in MODULES}
    state: dict[str, str] = {}

    def visit(m, path):
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                raise AssertionError("import loop: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n, path + [n])
        state[m] = "done"
    for m in MODULES:
        if m not in state:
            visit(m, [m])


def function_lengths() -> list[tuple[int, str]]:
    """(lines, app.module.function) of every function of app/, longest first."""
    out = []
    for m in MODULES:
        for n in ast.walk(ast.parse((ROOT / f"{m}.py").read_text())):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([n.lineno] + [d.lineno for d in n.decorator_list])
                out.append((n.end_lineno - start + 1, f"app.{m}.{n.name}"))
    return sorted(out, reverse=True)


def test_no_function_is_longer_than_60_lines():
    long = [f"{name} ({n} lines)" for n, name in function_lengths() if n > MAX_LINES]
    assert not long, f"functions over {MAX_LINES} lines: {long}"
