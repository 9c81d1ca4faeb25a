"""`search` and `sensitivity` (SPEC §13), what `deepshrink search` and `deepshrink sensitivity` call."""

from pathlib import Path
from typing import Any

from deepshrink.api.model import RUNS
from deepshrink.checkpoint import load_checkpoint, read_manifest
from deepshrink.config import coerce
from deepshrink.data import load_dataset
from deepshrink.errors import UserError
from deepshrink.progress import Progress
from deepshrink.search import SearchOptions, SearchResult, SearchSpace, parse_budget, run_search
from deepshrink.search.sensitivity import run_sensitivity
from deepshrink.study.recipe import SEARCH_KEYS

CheckpointLike = Any  # a checkpoint path, or a `ds.train` / `ds.compress` Result


def _checkpoint(source: CheckpointLike) -> Path:
    """A checkpoint path, or the one a `ds.train`/`ds.compress` result wrote."""
    row, out = getattr(source, "row", None), getattr(source, "out", None)
    return Path(out) / str(row["checkpoint"]) if row is not None and out is not None else Path(source)


def search(checkpoint: CheckpointLike, budget: str = "", minimize: str | None = None,
           pareto: str | None = None, trials: int = 40, out: str | Path | None = None, seed: int = 0,
           space: SearchSpace | None = None, dataset: str | None = None, data_dir: str | Path | None = None,
           fresh: bool = False, device: str = "auto", quiet: bool = True, executor: str = "local", jobs: int = 1,
           address: str | None = None, cpus_per_task: float = 1.0) -> SearchResult:
    """The best pipeline for `checkpoint` within `budget` (e.g. "drop<=0.5,bytes<=20000"), minimizing
    one metric or giving the Pareto front of two; see `deepshrink search --help`. `jobs` trials are
    evaluated at once, in spawned processes (`executor="local"`) or as Ray tasks of `cpus_per_task`
    CPUs on the cluster at `address` (`executor="ray"`)."""
    opts = SearchOptions(trials=trials, seed=seed, space=space or SearchSpace(), fresh=fresh, device=device,
                         quiet=quiet, executor=executor, jobs=jobs, address=address, cpus_per_task=cpus_per_task)
    return run_search(_checkpoint(checkpoint), parse_budget(budget, minimize, pareto),
                      Path(out) if out else RUNS / "search", opts, dataset, Path(data_dir) if data_dir else None)


def sensitivity(checkpoint: CheckpointLike, dataset: str | None = None, data_dir: str | Path | None = None,
                drop: float = 0.5, out: str | Path | None = None, quiet: bool = True) -> dict[str, Any]:
    """Per-layer accuracy against sparsity on the validation split, and the per-layer fractions within `drop`
    points it suggests; {rows, suggested, step, csv, plot}, written to `out` (default runs/sensitivity)."""
    if not 0.0 <= drop <= 100.0:
        raise UserError(f"--drop {drop}: accuracy points, between 0 and 100")
    path = _checkpoint(checkpoint)
    manifest = read_manifest(path)
    data = load_dataset(dataset or manifest.dataset, Path(data_dir) if data_dir else None, allow_empty_classes=True)
    model, _ = load_checkpoint(path)
    with Progress(enabled=not quiet) as progress:
        return run_sensitivity(model, data, Path(out) if out else RUNS / "sensitivity", drop,
                               title=f"{manifest.display} on {manifest.dataset}", progress=progress)


def parse_space(items: list[str]) -> SearchSpace:
    """`--space KEY=V1,V2` options (the keys of a recipe's `[search]` section that shape the space) as a
    SearchSpace; a bad key or value is one line naming it."""
    lists = {k: v for k, v in SEARCH_KEYS.items() if isinstance(v, list)}
    keys: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in lists:
            raise UserError(f"--space {item!r}: expected KEY=V1,V2 with KEY one of {', '.join(lists)}")
        keys[key] = tuple(coerce(v.strip(), lists[key][0], f"--space {key}") for v in value.split(","))
    return SearchSpace(**keys)
