"""The one place that knows the whole sequence: config -> data -> baseline -> steps -> export ->
measure -> result files -> report. The API's `train`, `compress` and `study` (and through them the CLI's)
call into here.
"""

import copy
import dataclasses
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from torch import nn

from deepshrink import provenance
from deepshrink.compress import apply
from deepshrink.compress.distill import control_of
from deepshrink.data import DataSplits
from deepshrink.errors import UserError
from deepshrink.export.choice import DEFAULT_MARGIN
from deepshrink.measure.latency import LatencyConfig, measure_latency
from deepshrink.progress import Progress
from deepshrink.provenance import all_cores
from deepshrink.report import render_report
from deepshrink.results import TABLES, finished, read_rows, remove_variant
from deepshrink.study.executor import Executor, LocalExecutor, wait_for_orphans
from deepshrink.study.plan import StudyOptions, code_version, plan, units
from deepshrink.study.preflight import check_study
from deepshrink.study.ray_executor import RayExecutor
from deepshrink.study.recipe import Recipe, load_recipe
from deepshrink.study.variant import Measured, measure_variant, train_baseline, write_measured
from deepshrink.train import TrainConfig
from deepshrink.variant import StepContext, Variant, slug, variant_id


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available on this machine")
    return device


def _latency(device: str, latency: LatencyConfig | None) -> LatencyConfig:
    return latency or LatencyConfig(devices=("cpu", "cuda") if device == "cuda" else ("cpu",))


def train_measured(model: str | nn.Module, data: DataSplits, cfg: TrainConfig, out: Path, device: str = "auto",
                   latency: LatencyConfig | None = None, quiet: bool = False,
                   model_args: dict[str, Any] | None = None,
                   choice_margin: float = DEFAULT_MARGIN) -> tuple[Measured, Variant]:
    """Train a baseline (a model name or reference, or a module of the caller's), export and measure it,
    and write its rows and provenance to `out`."""
    device = resolve_device(device)
    with Progress(enabled=not quiet) as progress:
        variant = train_baseline(data.name, model, cfg, data, device, progress, model_args=model_args)
        measured = measure_variant(variant, data, out, choice_margin=choice_margin)
        lat = measure_latency([(variant.id, measured.artifact)], data.test_x.numpy(), _latency(device, latency),
                              progress)
    write_measured(out, [measured], lat)
    provenance.write(out, data=data, device=device, seeds={"train": cfg.seed})
    return measured, variant


def compress_measured(base: Variant, configs: list[Any], data: DataSplits, out: Path, device: str = "auto",
                      latency: LatencyConfig | None = None, quiet: bool = False, seed: int = 0,
                      choice_margin: float = DEFAULT_MARGIN) -> list[tuple[Measured, Variant]]:
    """[baseline, compressed, (no-teacher control)], each measured from what ships and timed together."""
    device = resolve_device(device)
    chains = [configs] + [[c] for c in [control_of(configs)] if c is not None]
    with Progress(enabled=not quiet) as progress:
        base_m = measure_variant(base, data, out, choice_margin=choice_margin)
        ctx = StepContext(data=data, device=device, seed=seed, progress=progress, cache_dir=out / "cache")
        measured = [(base_m, base)]
        for chain in chains:
            v = Variant(base.id, copy.deepcopy(base.model), copy.deepcopy(base.manifest), seed=seed)
            for cfg in chain:
                v = apply(v, cfg, ctx)
            v.id = variant_id(base.manifest.dataset, base.manifest.display, v.manifest.pipeline)
            measured.append((measure_variant(v, data, out, baseline=(base.id, base_m.row["accuracy_pct"]),
                                             choice_margin=choice_margin), v))
        lat = measure_latency([(m.row["variant"], m.artifact) for m, _ in measured], data.test_x.numpy(),
                              _latency(device, latency), progress)
    write_measured(out, [m for m, _ in measured], lat)
    provenance.write(out, data=data, device=device, seeds={"compress": seed})
    return measured


@dataclasses.dataclass(frozen=True)
class StageContext:
    """What a stage may use beside the run directory and the recipe: the study's own options."""

    data_dir: Path | None
    device: str
    quiet: bool
    address: str | None


@dataclasses.dataclass(frozen=True)
class Stage:
    """Work a recipe section asks for after the study's variants (its `[search]`): `check` validates the
    section with the recipe, before any work (None: the recipe has no such section), and `run` does it
    before the report. Packages above this one register theirs in STAGES (search/recipe.py), so every
    way into a study runs them."""

    check: Callable[[Recipe], Any]
    run: Callable[[Path, Recipe, Any, StageContext], Any]


STAGES: dict[str, Stage] = {}


def _clear(run_dir: Path) -> None:
    for name in TABLES:
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "cache", ignore_errors=True)


def _drop_stale(run_dir: Path, planned: set[str]) -> None:
    """Rows of variants the recipe no longer makes (edited recipe, --set) would mislead the report."""
    for r in read_rows(run_dir / "results.csv"):
        if r["variant"] not in planned:
            remove_variant(run_dir, r["variant"])


def _study_provenance(run_dir: Path, recipe: Recipe, jobs: int, device: str, executor: Executor) -> None:
    seeds = {"study": recipe.seeds[0]} if len(recipe.seeds) == 1 else {f"seed{i}": s for i, s in
                                                                        enumerate(recipe.seeds)}
    provenance.write(run_dir, device=device, seeds=seeds, extra={
        "recipe": recipe.raw, "recipe_source": recipe.source, "jobs": jobs,
        "torch_threads_per_job": max(1, all_cores() // jobs) if jobs > 1 else 0, "cache_code_version": code_version(),
        **executor.describe()})


def execute(recipe: Recipe, opts: StudyOptions, executor: Executor, jobs: int = 1,
            fresh: bool = False) -> dict[str, str]:
    """Run every variant of `recipe` not yet `ok` in the run directory; returns variant -> status."""
    works = plan(recipe)
    opts.out.mkdir(parents=True, exist_ok=True)
    guard = FileLock(str(opts.out / ".study.lock"), timeout=0)  # released by the OS if we are killed
    try:
        guard.acquire()
    except Timeout:
        raise UserError(f"{opts.out}: another study is writing this run directory (lock {guard.lock_file})") from None
    try:
        opts = dataclasses.replace(opts, code=code_version())
        wait_for_orphans(opts.out)
        if fresh:
            _clear(opts.out)
        _drop_stale(opts.out, {w.vid for w in works})
        done = finished(opts.out)
        statuses = {w.vid: "ok" for w in works if w.vid in done}
        with Progress(enabled=not opts.quiet) as progress:
            overall = progress.add(f"study {recipe.name}", total=len(works))
            progress.update(overall, advance=len(statuses))
            _study_provenance(opts.out, recipe, jobs, opts.device, executor)
            t0, already = time.perf_counter(), len(statuses)
            statuses.update(executor.run(recipe, opts, units(works, executor.parallel), done, progress, overall))
        # This invocation's wall time, so "how long does the study take" is read from the run directory
        # (a resumed study counts only its own part: `variants_run` says how much that was).
        provenance.update(opts.out, study_seconds=round(time.perf_counter() - t0, 3),
                          study_variants_run=len(works) - already, study_variants=len(works))
    finally:
        guard.release()
    return statuses


def _local(jobs: int, address: str | None) -> Executor:
    if address:
        raise UserError(f"--address {address}: only with --executor ray")
    return LocalExecutor(jobs)


EXECUTORS: dict[str, Callable[[int, str | None], Executor]] = {
    "local": _local,
    "ray": lambda jobs, address: RayExecutor(address),  # Ray decides how many tasks run at once
}


def create_executor(name: str, jobs: int, address: str | None = None) -> Executor:
    if name not in EXECUTORS:
        raise UserError(f"--executor {name!r}: unknown (known: {', '.join(EXECUTORS)})")
    return EXECUTORS[name](jobs, address)


def run_study(recipe_name: str, out: Path | None = None, data_dir: Path | None = None, device: str = "auto",
              jobs: int | None = None, overrides: tuple[str, ...] = (), fresh: bool = False,
              quiet: bool = False, executor: str = "local", address: str | None = None,
              allow_empty_classes: bool = False) -> tuple[Path, dict[str, str]]:
    """`deepshrink study`: validate the recipe and every input it names, run what is not yet done, render the
    report."""
    recipe = load_recipe(recipe_name, list(overrides))  # every problem surfaces before any work
    staged = {name: stage.check(recipe) for name, stage in STAGES.items()}
    jobs = recipe.jobs if jobs is None else jobs
    runner = create_executor(executor, jobs, address)
    out = out or Path("runs") / slug(recipe.name)
    opts = StudyOptions(out=out, data_dir=data_dir, device=resolve_device(device), quiet=quiet,
                        allow_empty_classes=allow_empty_classes)
    check_study(recipe, opts)  # data, model references, checkpoints: exit 2 before anything is trained
    statuses = execute(recipe, opts, runner, jobs=jobs, fresh=fresh)
    ctx = StageContext(data_dir, opts.device, quiet, address)
    for name, stage in STAGES.items():
        if staged[name] is not None:
            stage.run(out, recipe, staged[name], ctx)
    render_report(out)
    return out, statuses
