"""The Python side of SPEC §13: `ds.search(...)` and `ds.sensitivity(...)`, what the CLI calls."""

import dataclasses
from pathlib import Path
from typing import Any

from deepshrink.checkpoint import load_checkpoint, read_manifest
from deepshrink.config import coerce
from deepshrink.data import load_dataset
from deepshrink.errors import UserError
from deepshrink.results import read_rows
from deepshrink.search import Budget, SearchOptions, SearchResult, SearchSpace, parse_budget, run_search
from deepshrink.search.parallel import check_executor
from deepshrink.search.sensitivity import run_sensitivity
from deepshrink.study.recipe import SEARCH_KEYS, Recipe

Source = Any  # a checkpoint path, or a `ds.train` / `ds.compress` Result (api.py imports this module)


def _checkpoint(source: Source) -> Path:
    """A checkpoint path, or the one a `ds.train`/`ds.compress` result wrote."""
    row, out = getattr(source, "row", None), getattr(source, "out", None)
    return Path(out) / str(row["checkpoint"]) if row is not None and out is not None else Path(source)


def search(checkpoint: Source, budget: str = "", minimize: str | None = None,
           pareto: str | None = None, trials: int = 40, out: str | Path = "runs/search", seed: int = 0,
           space: SearchSpace | None = None, dataset: str | None = None, data_dir: str | Path | None = None,
           fresh: bool = False, device: str = "auto", quiet: bool = True, executor: str = "local", jobs: int = 1,
           address: str | None = None, cpus_per_task: float = 1.0) -> SearchResult:
    """The best pipeline for `checkpoint` within `budget` (e.g. "drop<=0.5,bytes<=20000"), minimizing
    one metric or giving the Pareto front of two; see `deepshrink search --help`. `jobs` trials are
    evaluated at once, in spawned processes (`executor="local"`) or as Ray tasks of `cpus_per_task`
    CPUs on the cluster at `address` (`executor="ray"`)."""
    opts = SearchOptions(trials=trials, seed=seed, space=space or SearchSpace(), fresh=fresh, device=device,
                         quiet=quiet, executor=executor, jobs=jobs, address=address, cpus_per_task=cpus_per_task)
    return run_search(_checkpoint(checkpoint), parse_budget(budget, minimize, pareto), Path(out), opts, dataset,
                      Path(data_dir) if data_dir else None)


def sensitivity(checkpoint: Source, dataset: str | None = None, data_dir: str | Path | None = None,
                drop: float = 0.5, out: str | Path = "runs/sensitivity") -> dict[str, Any]:
    """Per-layer accuracy against sparsity on the validation split; {rows, suggested, step, csv, plot}."""
    path = _checkpoint(checkpoint)
    manifest = read_manifest(path)
    data = load_dataset(dataset or manifest.dataset, Path(data_dir) if data_dir else None, allow_empty_classes=True)
    model, _ = load_checkpoint(path)
    return run_sensitivity(model, data, Path(out), drop, title=f"{manifest.model} on {manifest.dataset}")


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


@dataclasses.dataclass(frozen=True)
class RecipeSearch:
    """A recipe's `[search]`: run after its baselines, one search per baseline (the study's first seed)."""

    budget: Budget
    opts: SearchOptions


def recipe_search(recipe: Recipe) -> RecipeSearch | None:
    """The `[search]` section checked before any work; None when the recipe has none."""
    cfg = recipe.search
    if not cfg:
        return None
    fields = {f.name for f in dataclasses.fields(SearchSpace)}
    try:
        budget = parse_budget(str(cfg.get("budget", "")), cfg.get("minimize") or None, cfg.get("pareto") or None)
        keys: dict[str, Any] = {k: tuple(v) for k, v in cfg.items() if k in fields}
        space = SearchSpace(**keys)
        executor, jobs = str(cfg.get("executor", "local")), int(cfg.get("jobs", 1))
        check_executor(executor, jobs, None)
    except UserError as e:
        raise UserError(f"{recipe.source}: search: {e}") from None
    return RecipeSearch(budget, SearchOptions(trials=int(cfg.get("trials", 40)), seed=int(cfg.get("seed", 0)),
                                              space=space, executor=executor, jobs=jobs,
                                              cpus_per_task=recipe.cpus_per_task))


def run_recipe_search(run_dir: Path, plan: RecipeSearch, recipe: Recipe, data_dir: Path | None, device: str,
                      quiet: bool, address: str | None = None) -> dict[str, SearchResult]:
    """variant -> its search, in run_dir/search/<variant> (resumable like any search). `address`: the
    study's --address, the cluster of a `[search] executor = "ray"` too."""
    first = str(recipe.seeds[0])
    bases = [r for r in read_rows(run_dir / "results.csv")
             if r.get("label") == "baseline" and r.get("status") == "ok" and r.get("seed") == first]
    opts = dataclasses.replace(plan.opts, device=device, quiet=quiet,
                               address=address if plan.opts.executor == "ray" else None)
    return {r["variant"]: run_search(run_dir / r["checkpoint"], plan.budget, run_dir / "search" / r["variant"],
                                     opts, r["dataset"], data_dir) for r in bases}
