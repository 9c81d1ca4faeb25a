"""The architecture's rules, checked on the source: a module imports only from its own row of
docs/architecture.md or a row below (imports inside functions count too), so imports form no cycle; almost
none hide inside functions; files and functions stay short; export/ holds few modules of its own."""

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

# docs/architecture.md's rows, top to bottom: a module's row is that of the longest prefix naming it, and
# every module not named is the core (the last row).
ROWS: list[tuple[str, ...]] = [
    ("deepshrink.cli", "deepshrink.cli_search", "deepshrink.cli_options", "deepshrink.__main__"),
    ("deepshrink", "deepshrink.api", "deepshrink.steps"),
    ("deepshrink.search",),
    ("deepshrink.study",),
    ("deepshrink.mcu", "deepshrink.report"),
    ("deepshrink.compress",),
    ("deepshrink.export", "deepshrink.export.exporters"),
    ("deepshrink.export.choice", "deepshrink.export.files"),
    ("deepshrink.export.base",),
    ("deepshrink.export.runtimes",),
    ("deepshrink.export.formats",),
    ("deepshrink.ingest",),
    ("deepshrink.measure",),
    ("deepshrink.quant",),
]


def row_of(module: str) -> int:
    """The row index (0 = top) of `module`: its longest matching prefix; the core is below every row."""
    best, found = -1, len(ROWS)
    for i, row in enumerate(ROWS):
        for prefix in row:
            inside = module.startswith(prefix + ".") and prefix != "deepshrink"  # the package's __init__ alone
            if (module == prefix or inside) and len(prefix) > best:
                best, found = len(prefix), i
    return found


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a module from a row above its own, as `importer -> imported`."""
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if row_of(b) < row_of(a))


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


def test_no_module_imports_from_a_row_above_its_own() -> None:
    assert upward_imports(GRAPH) == []


def test_an_upward_import_is_caught() -> None:
    """A planted import of the study from the core (variant.py), and of an exporter from a file format."""
    planted = {**GRAPH, "deepshrink.variant": GRAPH["deepshrink.variant"] | {"deepshrink.study.run"},
               "deepshrink.export.formats.dsz": {"deepshrink.export.exporters.dsz"}}
    assert upward_imports(planted) == ["deepshrink.export.formats.dsz -> deepshrink.export.exporters.dsz",
                                       "deepshrink.variant -> deepshrink.study.run"]
    assert row_of("deepshrink.variant") == len(ROWS) and row_of("deepshrink.export") < row_of("deepshrink.export.base")


def test_every_row_names_modules_that_exist() -> None:
    packages = {name for name in MODULES} | {name.rpartition(".")[0] for name in MODULES}
    assert [p for row in ROWS for p in row if p not in packages] == []


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_few_imports_inside_functions() -> None:
    counts = {name: _imports(path)[1] for name, path in MODULES.items() if name != "deepshrink.cli"}
    assert sum(counts.values()) <= MAX_FUNCTION_IMPORTS, {k: v for k, v in counts.items() if v}


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_source_files_stay_short(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= 450


MAX_FUNCTION_LINES = 60


def test_functions_stay_short() -> None:
    long = [f"{path.relative_to(SRC)}:{fn.lineno} {fn.name} ({fn.end_lineno - fn.lineno + 1} lines)"
            for path in SRC.rglob("*.py") for fn in ast.walk(ast.parse(path.read_text()))
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef) and fn.end_lineno is not None
            and fn.end_lineno - fn.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


def test_export_keeps_its_modules_in_subpackages() -> None:
    """export/ by role: formats/, runtimes/, exporters/, and at most six modules of its own."""
    own = sorted(p.name for p in (SRC / "export").glob("*.py"))
    assert len(own) <= 6, own


def test_ds_study_is_the_verb_and_the_subpackage(tmp_path: Path) -> None:
    """SPEC §10's `ds.study(recipe)` must not hide `deepshrink.study.*` from `import ... as`."""
    import deepshrink as ds
    import deepshrink.study.run as run

    assert run.__name__ == "deepshrink.study.run"
    with pytest.raises(ds.UserError, match="no-such-recipe"):
        ds.study(tmp_path / "no-such-recipe.toml", out=tmp_path / "out")
