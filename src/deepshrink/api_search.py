"""The Python side of SPEC §13: `ds.search(...)` and `ds.sensitivity(...)`, what the CLI calls."""

from pathlib import Path
from typing import Any

from deepshrink.api import Result
from deepshrink.checkpoint import load_checkpoint, read_manifest
from deepshrink.data import load_dataset
from deepshrink.search import SearchOptions, SearchResult, SearchSpace, parse_budget, run_search
from deepshrink.search.sensitivity import run_sensitivity


def _checkpoint(source: Result | str | Path) -> Path:
    """A checkpoint path, or the one a `ds.train`/`ds.compress` result wrote."""
    return source.out / str(source.row["checkpoint"]) if isinstance(source, Result) else Path(source)


def search(checkpoint: Result | str | Path, budget: str = "", minimize: str | None = None,
           pareto: str | None = None, trials: int = 40, out: str | Path = "runs/search", seed: int = 0,
           space: SearchSpace | None = None, dataset: str | None = None, data_dir: str | Path | None = None,
           fresh: bool = False, device: str = "auto", quiet: bool = True) -> SearchResult:
    """The best pipeline for `checkpoint` within `budget` (e.g. "drop<=0.5,bytes<=20000"), minimizing
    one metric or giving the Pareto front of two; see `deepshrink search --help`."""
    opts = SearchOptions(trials=trials, seed=seed, space=space or SearchSpace(), fresh=fresh, device=device,
                         quiet=quiet)
    return run_search(_checkpoint(checkpoint), parse_budget(budget, minimize, pareto), Path(out), opts, dataset,
                      Path(data_dir) if data_dir else None)


def sensitivity(checkpoint: Result | str | Path, dataset: str | None = None, data_dir: str | Path | None = None,
                drop: float = 0.5, out: str | Path = "runs/sensitivity") -> dict[str, Any]:
    """Per-layer accuracy against sparsity on the validation split; {rows, suggested, step, csv, plot}."""
    path = _checkpoint(checkpoint)
    manifest = read_manifest(path)
    data = load_dataset(dataset or manifest.dataset, Path(data_dir) if data_dir else None, allow_empty_classes=True)
    model, _ = load_checkpoint(path)
    return run_sensitivity(model, data, Path(out), drop, title=f"{manifest.model} on {manifest.dataset}")
