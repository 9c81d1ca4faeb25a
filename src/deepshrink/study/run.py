"""The one place that knows the whole sequence: config -> data -> baseline -> steps -> export ->
measure -> result files -> report. `train`, `compress` and `study` (CLI and Python API) call into here.
"""

import copy
import dataclasses
import shutil
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout

from deepshrink import provenance
from deepshrink.checkpoint import load_checkpoint, read_manifest
from deepshrink.compress import apply, parse_step
from deepshrink.compress.distill import control_of
from deepshrink.data import load_dataset
from deepshrink.errors import UserError
from deepshrink.measure.latency import LatencyConfig, all_cores, measure_latency
from deepshrink.models import create_model
from deepshrink.progress import Progress
from deepshrink.report import render_report
from deepshrink.results import finished, read_rows, remove_variant
from deepshrink.study.executor import Executor, LocalExecutor, wait_for_orphans
from deepshrink.study.plan import StudyOptions, code_version, plan, units
from deepshrink.study.recipe import Recipe, load_recipe
from deepshrink.study.variant import measure_variant, train_baseline, write_measured
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


def run_train(dataset: str, model_name: str, cfg: TrainConfig, out: Path, data_dir: Path | None = None,
              device: str = "auto", latency: LatencyConfig | None = None, quiet: bool = False) -> dict[str, Any]:
    """`deepshrink train`: one baseline, exported and measured, written as a run directory."""
    device = resolve_device(device)
    create_model(model_name, dataset)  # fail fast on an unknown model name before loading data
    data = load_dataset(dataset, data_dir)
    with Progress(enabled=not quiet) as progress:
        variant = train_baseline(dataset, model_name, cfg, data, device, progress)
        measured = measure_variant(variant, data, out)
        lat = measure_latency([(variant.id, measured.artifact)], data.test_x.numpy(), _latency(device, latency),
                              progress)
    write_measured(out, [measured], lat)
    provenance.write(out, data=data, device=device, seeds={"train": cfg.seed})
    return measured.row


def run_compress(checkpoint: Path, steps: list[str], out: Path, data_dir: Path | None = None,
                 device: str = "auto", latency: LatencyConfig | None = None, quiet: bool = False,
                 seed: int = 0) -> dict[str, Any]:
    """`deepshrink compress`: a chain of steps applied to a trained checkpoint, measured beside it;
    a distilled student is measured beside its no-teacher control."""
    read_manifest(checkpoint)
    configs = [parse_step(s) for s in steps]  # every step validated before any work starts
    device = resolve_device(device)
    model, manifest = load_checkpoint(checkpoint)
    data = load_dataset(manifest.dataset, data_dir)
    base = Variant(variant_id(manifest.dataset, manifest.model, manifest.pipeline), model, manifest, seed=seed)
    chains = [configs] + [[c] for c in [control_of(configs)] if c is not None]
    with Progress(enabled=not quiet) as progress:
        base_m = measure_variant(base, data, out)
        ctx = StepContext(data=data, device=device, seed=seed, progress=progress, cache_dir=out / "cache")
        measured = [base_m]
        for chain in chains:
            v = Variant(base.id, copy.deepcopy(model), copy.deepcopy(manifest), seed=seed)
            for cfg in chain:
                v = apply(v, cfg, ctx)
            v.id = variant_id(manifest.dataset, manifest.model, v.manifest.pipeline)
            measured.append(measure_variant(v, data, out, baseline=(base.id, base_m.row["accuracy_pct"])))
        lat = measure_latency([(x.row["variant"], x.artifact) for x in measured], data.test_x.numpy(),
                              _latency(device, latency), progress)
    write_measured(out, measured, lat)
    provenance.write(out, data=data, device=device, seeds={"compress": seed})
    main = dict(measured[1].row)
    if len(measured) > 2:
        main["control"] = measured[2].row  # not a results.csv column: the rows are already written
    return main


def _clear(run_dir: Path) -> None:
    for name in ("results.csv", "latency.csv", "layers.csv"):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "cache", ignore_errors=True)


def _drop_stale(run_dir: Path, planned: set[str]) -> None:
    """Rows of variants the recipe no longer makes (edited recipe, --set) would mislead the report."""
    for r in read_rows(run_dir / "results.csv"):
        if r["variant"] not in planned:
            remove_variant(run_dir, r["variant"])


def _study_provenance(run_dir: Path, recipe: Recipe, jobs: int, device: str) -> None:
    seeds = {"study": recipe.seeds[0]} if len(recipe.seeds) == 1 else {f"seed{i}": s for i, s in
                                                                        enumerate(recipe.seeds)}
    provenance.write(run_dir, device=device, seeds=seeds, extra={
        "recipe": recipe.raw, "recipe_source": recipe.source, "jobs": jobs,
        "torch_threads_per_job": max(1, all_cores() // jobs) if jobs > 1 else 0, "cache_code_version": code_version()})


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
            _study_provenance(opts.out, recipe, jobs, opts.device)
            statuses.update(executor.run(recipe, opts, units(works), done, progress, overall))
    finally:
        guard.release()
    return statuses


def run_study(recipe_name: str, out: Path | None = None, data_dir: Path | None = None, device: str = "auto",
              jobs: int | None = None, overrides: tuple[str, ...] = (), fresh: bool = False,
              quiet: bool = False) -> tuple[Path, dict[str, str]]:
    """`deepshrink study`: validate the recipe, run what is not yet done, render the report."""
    recipe = load_recipe(recipe_name, list(overrides))  # every problem surfaces before any work
    jobs = recipe.jobs if jobs is None else jobs
    executor = LocalExecutor(jobs)
    out = out or Path("runs") / slug(recipe.name)
    opts = StudyOptions(out=out, data_dir=data_dir, device=resolve_device(device), quiet=quiet)
    statuses = execute(recipe, opts, executor, jobs=jobs, fresh=fresh)
    render_report(out)
    return out, statuses
