"""The package's floor plan: emigm's sub-packages import only from floors below them (or, inside a
floor, from modules that do not import them back), and no module imports the project inside a function."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "emigm"
# bottom to top; a module may import its own floor and the floors before it
FLOORS = ("core", "data", "nn", "tokenize", "sample", "io", "eval", "train", "cli")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        out[name] = path
    return out


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported emigm module, at module level?) for every import statement of the file."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("emigm"):
            assert node.level == 0, f"{path}: relative import"
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found += [(n, id(node) in top) for n in names]
        elif isinstance(node, ast.Import):
            found += [(a.name, id(node) in top) for a in node.names if a.name.startswith("emigm")]
    return found


MODULES = _modules()


def _floor(module: str) -> int:
    parts = module.split(".")
    return FLOORS.index(parts[1]) if len(parts) > 1 and parts[1] in FLOORS else len(FLOORS)


def _graph() -> dict[str, set[str]]:
    return {m: {n for n, _ in _imports(p) if n in MODULES and n != m} for m, p in MODULES.items()}


def test_every_module_lives_on_a_floor():
    loose = [m for m in MODULES if m not in ("emigm", "emigm.__main__") and m.split(".")[1] not in FLOORS]
    assert not loose, f"modules outside the floors {FLOORS}: {loose}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_and_stay_at_module_level(module):
    for name, at_top in _imports(MODULES[module]):
        if name not in MODULES:
            continue
        assert at_top, f"{module} imports {name} inside a function"
        assert _floor(name) <= _floor(module), f"{module} (floor {_floor(module)}) imports {name} from above"


def test_no_import_loops():
    graph, state = _graph(), {}

    def visit(m, path):
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                raise AssertionError("import loop: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n, path + [n])
        state[m] = "done"
    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
