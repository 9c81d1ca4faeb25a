"""The run verbs: `study` (a whole study from a recipe), `report` (re-rendered from a run's files), `show`
(a run's results rows, or what a .dsz stores), `recipes`, and the `data_*` verbs of `deepshrink data`."""

from pathlib import Path
from typing import Any

from deepshrink.api.model import RUNS
from deepshrink.data.sources import SOURCES, download, locate, search_roots
from deepshrink.data.verify import FileReport, verify
from deepshrink.errors import UserError
from deepshrink.export.formats.dsz import describe
from deepshrink.report import render_report
from deepshrink.results import read_rows
from deepshrink.study.recipe import builtin_names
from deepshrink.study.recipe import describe as describe_recipe
from deepshrink.study.run import run_study


def study(recipe: str | Path, out: str | Path | None = None, jobs: int | None = None,
          overrides: tuple[str, ...] = (), fresh: bool = False, data_dir: str | Path | None = None,
          device: str = "auto", quiet: bool = True, executor: str = "local",
          address: str | None = None, allow_empty_classes: bool = False) -> tuple[Path, dict[str, str]]:
    """Run a whole study from a recipe (a built-in name or a .toml path; resumes by default), its `[search]`
    included, and write the report; (run directory, variant -> status). The run directory defaults to
    runs/RECIPE. `executor="ray"` runs its units on the Ray cluster at `address` (else $RAY_ADDRESS, else a
    local Ray)."""
    return run_study(str(recipe), Path(out) if out else None, Path(data_dir) if data_dir else None, device, jobs,
                     tuple(overrides), fresh, quiet, executor, address, allow_empty_classes)


def report(run_dir: str | Path) -> tuple[Path, Path]:
    """Re-render report.md, report.html and figures/ from a run's result files alone (no training)."""
    return render_report(Path(run_dir))


def show(path: str | Path) -> list[dict[str, Any]]:
    """A run directory's results.csv rows, or, for a .dsz file, one row per tensor: how it is stored."""
    path = Path(path)
    if path.suffix == ".dsz":
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        return describe(path.read_bytes(), str(path))
    table = path / "results.csv"
    if not table.is_file():
        raise UserError(f"{table}: no results.csv in this run directory")
    return list(read_rows(table))


def recipes() -> list[tuple[str, str, float]]:
    """The built-in recipes: (name, one-line description, expected minutes on 2 CPU cores)."""
    return [describe_recipe(name) for name in builtin_names()]


def data_where(data_dir: str | Path | None = None) -> tuple[list[tuple[str, Path]], dict[str, Path | None]]:
    """(where datasets are looked up, in order; each dataset -> where it was found, None when it was not)."""
    root = Path(data_dir) if data_dir else None
    found = {name: (hits[0] if (hits := locate(source, root)) else None) for name, source in SOURCES.items()}
    return list(search_roots(root)), found


def data_verify(name: str | None = None, data_dir: str | Path | None = None) -> list[FileReport]:
    """Each dataset file checked: structure, sample and class counts, canonical checksum or not."""
    root = Path(data_dir) if data_dir else None
    return [r for ds in ([name] if name else sorted(SOURCES)) for r in verify(ds, root)]


def data_download(name: str | None = None) -> dict[str, Path]:
    """Datasets downloaded into the user cache, checked against published hashes: name -> folder."""
    names = [name] if name else sorted(SOURCES)
    for ds in names:
        if ds not in SOURCES:
            raise UserError(f"unknown dataset {ds!r} (known: {', '.join(sorted(SOURCES))})")
    return {ds: download(SOURCES[ds]) for ds in names}


__all__ = ["RUNS", "data_download", "data_verify", "data_where", "recipes", "report", "show", "study"]
