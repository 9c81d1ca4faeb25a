"""`deepshrink search`: trials until the count is reached (resuming a killed search), then the chosen
pipelines re-measured on the test set and written as `compress` writes them, beside trials.csv and
pareto.csv (SPEC §13)."""

import dataclasses
import hashlib
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from filelock import FileLock, Timeout

from deepshrink import provenance
from deepshrink.checkpoint import load_checkpoint, paths_for, read_manifest
from deepshrink.data import DataSplits, load_dataset
from deepshrink.errors import UserError
from deepshrink.measure.latency import LatencyConfig, measure_latency
from deepshrink.progress import Progress
from deepshrink.report import render_report
from deepshrink.search.budget import Budget
from deepshrink.search.sensitivity import layer_caps, layer_curves, layer_floors
from deepshrink.search.space import TEMPLATES, SearchSpace, model_info
from deepshrink.search.study import Draw, check_resumable, enqueue_seeds, open_study, seeds, trials_done
from deepshrink.search.tables import write_tables
from deepshrink.search.trial import Env, Hopeless, measure_trial, validation_view
from deepshrink.study.run import resolve_device
from deepshrink.study.variant import Measured, measure_variant, write_measured
from deepshrink.variant import StepContext, Variant, variant_id


@dataclass(frozen=True)
class SearchOptions:
    trials: int = 40
    seed: int = 0
    space: SearchSpace = field(default_factory=SearchSpace)
    fresh: bool = False
    device: str = "auto"
    quiet: bool = False
    mcu_target: str = "cortex-m4"


@dataclass
class SearchResult:
    out: Path
    trials: list[dict[str, Any]]  # the rows of trials.csv
    picked: list[dict[str, Any]]  # the chosen trials' rows
    chosen: list[dict[str, Any]]  # their results rows, re-measured on the test set
    feasible: bool  # False: nothing fit the budget; `chosen` are the closest trials
    budget: Budget


def _weights_hash(checkpoint: Path) -> str:
    return hashlib.sha256(paths_for(checkpoint)[0].read_bytes()).hexdigest()[:16]


def run_search(checkpoint: Path, budget: Budget, out: Path, opts: SearchOptions = SearchOptions(),
               dataset: str | None = None, data_dir: Path | None = None) -> SearchResult:
    if opts.trials < 1:
        raise UserError(f"--trials {opts.trials}: must be >= 1")
    manifest = read_manifest(checkpoint)
    data = load_dataset(dataset or manifest.dataset, data_dir, allow_empty_classes=True)
    out.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(out / ".search.lock"), timeout=0):
            return _run(checkpoint, budget, out, opts, data)
    except Timeout:
        raise UserError(f"{out}: another search is running in this directory") from None


def _run(checkpoint: Path, budget: Budget, out: Path, opts: SearchOptions, data: DataSplits) -> SearchResult:
    model, manifest = load_checkpoint(checkpoint)
    info = model_info(model)
    templates = opts.space.default_templates(info, budget.objectives)
    weights = _weights_hash(checkpoint)
    check_resumable(out, {"checkpoint": weights, "dataset": data.fingerprint, "budget": budget.describe(),
                          "seed": opts.seed, "space": dataclasses.asdict(opts.space)}, opts.fresh)
    device = resolve_device(opts.device)
    found = seeds(manifest.dataset, manifest.model, info, opts.space, templates)
    opts = dataclasses.replace(opts, space=_shaped(opts.space, layer_curves(model, data, out), info, budget, found))
    base = Variant(variant_id(manifest.dataset, manifest.model, []), model, manifest, seed=opts.seed)
    started = time.perf_counter()
    with Progress(enabled=not opts.quiet) as progress:
        ctx = StepContext(data=data, device=device, seed=opts.seed, progress=progress,
                          cache_dir=out / "cache" / "steps")
        base_val = measure_variant(base, validation_view(data), out / ".trials" / "baseline")
        env = Env(base, f"weights:{weights}", data, out, ctx, budget, base_val, opts.mcu_target)
        study = open_study(out, budget, opts.seed)
        seeded = enqueue_seeds(study, found)
        if seeded:
            progress.log(f"search: {seeded} hand-tuned pipeline(s) from the built-in recipes run first")
        _trials(study, env, info, templates, opts, progress)
        rows = write_tables(out, study, budget)
        chosen, feasible = _choose(rows, budget)
        measured = _remeasure(env, [tuple(r["steps"]) for r in chosen], progress) if chosen else []
    shutil.rmtree(out / ".trials", ignore_errors=True)
    provenance.write(out, data=data, device=device, seeds={"search": opts.seed}, extra={
        "search": {"budget": budget.describe(), "trials": len(rows), "templates": list(templates),
                   "seconds_this_invocation": round(time.perf_counter() - started, 1),
                   "chosen_trials": [r["number"] for r in chosen], "feasible": feasible,
                   "chosen_variants": {str(r["number"]): m["variant"] for r, m in zip(chosen, measured, strict=True)}}})
    if measured:
        render_report(out)  # the search's section, from trials.csv, results.csv and provenance.json
    return SearchResult(out, rows, chosen, measured, feasible, budget)


def _shaped(space: SearchSpace, curves: list[dict[str, Any]], info: Any, budget: Budget,
            found: list[tuple[str, tuple[str, ...], dict[str, Any]]]) -> SearchSpace:
    """The per-layer sparsity ranges from the sensitivity curves (ceilings always, floors when the
    objective is bytes or flash), widened so every hand-tuned fraction lies inside its layer's range."""
    caps = {**layer_caps(curves, info), **space.layer_caps}
    floors = {**layer_floors(curves, info), **space.layer_floors} if {"bytes", "flash"} & set(budget.objectives) \
        else dict(space.layer_floors)
    for _, _, params in found:
        for key, value in params.items():
            layer = key.rpartition("sparsity.")[2] if ".sparsity." in key else None
            if layer in caps:
                caps[layer] = max(caps[layer], float(value))
            if layer in floors:
                floors[layer] = min(floors[layer], float(value))
    return dataclasses.replace(space, layer_caps=caps, layer_floors=floors)


def _trials(study: optuna.Study, env: Env, info: Any, templates: tuple[str, ...], opts: SearchOptions,
            progress: Progress) -> None:
    done = trials_done(study)
    task = progress.add("search trials", total=opts.trials)
    progress.update(task, advance=min(done, opts.trials))
    for _ in range(max(0, opts.trials - done)):
        trial = study.ask()
        template = trial.suggest_categorical("template", list(templates))
        steps = TEMPLATES[template](Draw(trial, template), info, opts.space)
        steps = tuple(trial.user_attrs.get("steps") or steps)  # a seeded trial runs the recipe's own steps
        trial.set_user_attr("steps", list(steps))
        state, values = _evaluate(env, trial, steps)
        if values is not None:
            trial.set_user_attr("metrics", values)
        study.tell(trial, [values[o] for o in env.budget.objectives] if state is None and values else None,
                   state=state)
        write_tables(env.out, study, env.budget)
        progress.update(task, advance=1, info=f"#{trial.number} {template}: {_brief(values, state)}")
    progress.finish(task)


Outcome = tuple[optuna.trial.TrialState | None, dict[str, float] | None]  # (state unless complete, metrics)


def _evaluate(env: Env, trial: optuna.Trial, steps: tuple[str, ...]) -> Outcome:
    start = time.perf_counter()

    def check(i: int, acc: float) -> None:
        trial.report(acc, i)
        if acc < env.hopeless_below():
            trial.set_user_attr("stopped", f"after step {i}: validation {acc:.2f} % < {env.hopeless_below():.2f} %")
            raise Hopeless

    try:
        v = env.variant(steps, check)
        values = measure_trial(env, v, trial.number)
        state = None
    except Hopeless:
        values, state = None, optuna.trial.TrialState.PRUNED
    except (UserError, RuntimeError, ValueError) as e:  # a pipeline this model cannot take: recorded, not fatal
        trial.set_user_attr("error", " ".join(str(e).split())[:300])
        values, state = None, optuna.trial.TrialState.FAIL
    trial.set_user_attr("seconds", round(time.perf_counter() - start, 2))
    return state, values


def _brief(values: dict[str, float] | None, state: optuna.trial.TrialState | None) -> str:
    if values is None:
        return "stopped early" if state == optuna.trial.TrialState.PRUNED else "failed"
    return f"{values['bytes']:.0f} B, val {values['val_accuracy_pct']:.2f} %"


def _choose(rows: list[dict[str, Any]], budget: Budget) -> tuple[list[dict[str, Any]], bool]:
    """The best feasible trial (the feasible Pareto front for two objectives); when none fits, the
    three closest (least total relative miss), which trials.csv says by how much each misses."""
    done = [r for r in rows if r["state"] == "COMPLETE"]
    fit = [r for r in done if r["feasible"]]
    if fit:
        if len(budget.objectives) == 1:
            return [min(fit, key=lambda r: (r[budget.objectives[0]], r["drop"]))], True
        return [r for r in fit if r["pareto"]], True
    caps = dict(budget.limits)

    def miss(r: dict[str, Any]) -> float:
        return sum(max(0.0, r[m] - c) / max(abs(c), 1e-9) for m, c in caps.items() if math.isfinite(r[m]))

    return sorted(done, key=miss)[:3], False


def _remeasure(env: Env, pipelines: list[tuple[str, ...]], progress: Progress) -> list[dict[str, Any]]:
    """The chosen pipelines (from the cache: nothing retrains) measured on the test set beside the
    baseline, and written as `compress` writes them: results.csv, layers.csv, latency.csv, artifacts."""
    base_m = measure_variant(env.base, env.data, env.out)
    base_acc = float(base_m.row["accuracy_pct"])
    measured: list[Measured] = [base_m]
    for steps in pipelines:
        v = env.variant(steps)
        measured.append(measure_variant(v, env.data, env.out, baseline=(env.base.id, base_acc)))
    lat = measure_latency([(m.row["variant"], m.artifact) for m in measured], env.data.test_x.numpy(),
                          LatencyConfig(threads=(1,)), progress)
    write_measured(env.out, measured, lat)
    return [m.row for m in measured[1:]]
