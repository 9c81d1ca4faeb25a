"""The architecture's one rule, checked on the source: imports between deepshrink modules form no
cycle (imports inside functions count too), and almost none hide inside functions."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "deepshrink"
MAX_FUNCTION_IMPORTS = 5  # outside cli.py, which imports lazily for a fast --help


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in SRC.rglob("*.py")}


def _targets(node: ast.Import | ast.ImportFrom) -> list[str]:
    """The deepshrink modules an import statement loads (`from pkg import sub` names the submodule)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "deepshrink"]
    if node.level or not node.module or node.module.split(".")[0] != "deepshrink":
        return []
    return [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module for a in node.names]


def _imports(path: Path) -> tuple[set[str], int]:
    """(modules imported, imports of deepshrink modules inside functions)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    inside = 0
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            inside += sum(bool(_targets(n)) for n in ast.walk(fn) if isinstance(n, ast.Import | ast.ImportFrom))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            found |= {t for t in _targets(node) if t in MODULES}
    return found, inside


GRAPH = {name: _imports(path)[0] for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path [a, b, ..., a], or [] when the graph is acyclic."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return []


def test_no_import_cycle_between_deepshrink_modules() -> None:
    assert find_cycle(GRAPH) == [], "import cycle: " + " -> ".join(find_cycle(GRAPH))


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_few_imports_inside_functions() -> None:
    counts = {name: _imports(path)[1] for name, path in MODULES.items() if name != "deepshrink.cli"}
    assert sum(counts.values()) <= MAX_FUNCTION_IMPORTS, {k: v for k, v in counts.items() if v}


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_source_files_stay_short(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= 450


def test_ds_study_is_the_verb_and_the_subpackage(tmp_path: Path) -> None:
    """SPEC §10's `ds.study(recipe)` must not hide `deepshrink.study.*` from `import ... as`."""
    import deepshrink as ds
    import deepshrink.study.run as run

    assert run.__name__ == "deepshrink.study.run"
    with pytest.raises(ds.UserError, match="no-such-recipe"):
        ds.study(tmp_path / "no-such-recipe.toml", out=tmp_path / "out")
