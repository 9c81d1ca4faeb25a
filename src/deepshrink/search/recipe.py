"""A recipe's `[search]` (SPEC §13): after the study's variants, one search per baseline of its first seed,
each in RUN_DIR/search/<variant>. Registered as a study stage (study/run.py `STAGES`), so the section runs
the same whichever way the study starts: `deepshrink study`, `ds.study` or `study.run.run_study`."""

import dataclasses
from pathlib import Path
from typing import Any

from deepshrink.errors import UserError
from deepshrink.results import read_rows
from deepshrink.search.budget import Budget, parse_budget
from deepshrink.search.parallel import check_executor
from deepshrink.search.run import SearchOptions, SearchResult, run_search
from deepshrink.search.space import SearchSpace
from deepshrink.study.recipe import Recipe
from deepshrink.study.run import STAGES, Stage, StageContext


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


def run_recipe_search(run_dir: Path, recipe: Recipe, plan: Any, ctx: StageContext) -> dict[str, SearchResult]:
    """variant -> its search, in run_dir/search/<variant> (resumable like any search). The study's
    `--address` is the cluster of a `[search] executor = "ray"` too."""
    assert isinstance(plan, RecipeSearch)
    first = str(recipe.seeds[0])
    bases = [r for r in read_rows(run_dir / "results.csv")
             if r.get("label") == "baseline" and r.get("status") == "ok" and r.get("seed") == first]
    opts = dataclasses.replace(plan.opts, device=ctx.device, quiet=ctx.quiet,
                               address=ctx.address if plan.opts.executor == "ray" else None)
    return {r["variant"]: run_search(run_dir / r["checkpoint"], plan.budget, run_dir / "search" / r["variant"],
                                     opts, r["dataset"], ctx.data_dir) for r in bases}


STAGES["search"] = Stage(check=recipe_search, run=run_recipe_search)
