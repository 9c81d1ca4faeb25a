"""`deepshrink search`: trials until the count is reached (resuming a killed search), then the chosen
pipelines re-measured on the test set and written as `compress` writes them, beside trials.csv and
pareto.csv (SPEC §13)."""

import dataclasses
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from filelock import FileLock, Timeout

from deepshrink import provenance
from deepshrink.checkpoint import load_checkpoint, read_manifest
from deepshrink.data import DataSplits
from deepshrink.errors import UserError
from deepshrink.export.exporters.int8 import SMALLEST
from deepshrink.measure.latency import LatencyConfig, measure_latency
from deepshrink.progress import Progress
from deepshrink.report import render_report
from deepshrink.search.budget import CLOSEST, TIMED_METRICS, Budget
from deepshrink.search.finals import finalists, race
from deepshrink.search.foresee import armed, complete, foresee
from deepshrink.search.parallel import Evaluator, Job, Setup, check_executor, evaluator, model_data
from deepshrink.search.sensitivity import layer_caps, layer_curves, layer_floors
from deepshrink.search.space import PER_LAYER, TEMPLATES, SearchSpace, model_info, with_deploy
from deepshrink.search.study import Draw, check_resumable, enqueue_seeds, open_study, seeds, stretched, trials_done
from deepshrink.search.tables import write_tables
from deepshrink.search.trial import Env, Outcome, validation_view, weights_hash
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
    # Trials evaluated at once, and where (parallel.py); the batch size alone decides which trials are drawn.
    executor: str = "local"
    jobs: int = 1
    address: str | None = None  # --executor ray: the cluster (else $RAY_ADDRESS, else a local Ray)
    cpus_per_task: float = 1.0  # --executor ray: CPUs of one trial's task


@dataclass
class SearchResult:
    out: Path
    trials: list[dict[str, Any]]  # the rows of trials.csv
    picked: list[dict[str, Any]]  # the chosen trials' rows
    chosen: list[dict[str, Any]]  # their results rows, re-measured on the test set
    feasible: bool  # False: nothing fit the budget; `chosen` are the closest trials
    budget: Budget


def run_search(checkpoint: Path, budget: Budget, out: Path, opts: SearchOptions = SearchOptions(),
               dataset: str | None = None, data_dir: Path | None = None) -> SearchResult:
    if opts.trials < 1:
        raise UserError(f"--trials {opts.trials}: must be >= 1")
    check_executor(opts.executor, opts.jobs, opts.address)
    manifest = read_manifest(checkpoint)
    data = model_data(dataset or manifest.dataset, data_dir, manifest)
    out.mkdir(parents=True, exist_ok=True)
    # What a worker process builds its own Env from (device and threads are set per executor).
    setup = Setup(str(checkpoint.resolve()), dataset or manifest.dataset, str(data_dir.resolve()) if data_dir else None,
                  str(out.resolve()), opts.seed, device="cpu", budget=budget, mcu_target=opts.mcu_target, threads=1)
    try:
        with FileLock(str(out / ".search.lock"), timeout=0):
            return _run(checkpoint, budget, out, opts, data, setup)
    except Timeout:
        raise UserError(f"{out}: another search is running in this directory") from None


def _run(checkpoint: Path, budget: Budget, out: Path, opts: SearchOptions, data: DataSplits,
         setup: Setup) -> SearchResult:
    model, manifest = load_checkpoint(checkpoint)
    info = model_info(model, data.train_x[:1])
    templates = opts.space.default_templates(info, budget.objectives)
    weights = weights_hash(checkpoint)
    check_resumable(out, {"checkpoint": weights, "dataset": data.fingerprint, "budget": budget.describe(),
                          "seed": opts.seed, "space": dataclasses.asdict(opts.space)}, opts.fresh)
    device = resolve_device(opts.device)
    found = seeds(manifest.dataset, manifest.model, info, opts.space, templates)
    # Only the per-layer sparsity templates read the curves (a structured search skips their 3 minutes on resnet8).
    curves = layer_curves(model, data, out) if set(templates) & PER_LAYER else []
    opts = dataclasses.replace(opts, space=_shaped(opts.space, curves, info, budget, found))
    base = Variant(variant_id(manifest.dataset, manifest.display, []), model, manifest, seed=opts.seed)
    started = time.perf_counter()
    with Progress(enabled=not opts.quiet) as progress:
        ctx = StepContext(data=data, device=device, seed=opts.seed, progress=progress,
                          cache_dir=out / "cache" / "steps")
        base_val = measure_variant(base, validation_view(data), out / ".trials" / "baseline")
        env = Env(base, f"weights:{weights}", data, out, ctx, budget, base_val, opts.mcu_target)
        study = open_study(out, budget, opts.seed)
        pushed = stretched(found, opts.space, info, budget.objectives)
        if enqueue_seeds(study, found + pushed):
            progress.log(f"search: {len(found)} seeded pipeline(s) run first ({', '.join(f[0] for f in found)})"
                         + (f", then {len(pushed)} of them stretched toward fewer bytes" if pushed else ""))
        runner = evaluator(opts.executor, opts.jobs, env, dataclasses.replace(setup, device=device), opts.address,
                           opts.cpus_per_task)
        try:
            nodes = _trials(study, env, info, templates, opts, progress, runner)
        finally:
            runner.close()
        ran = _where(runner, nodes, budget, progress)
        rows = write_tables(out, study, budget)
        chosen, feasible = _choose(rows, budget)
        chosen, raced = _final(env, rows, chosen, feasible, progress)
        measured = _remeasure(env, [tuple(r["steps"]) for r in chosen], progress) if chosen else []
    shutil.rmtree(out / ".trials", ignore_errors=True)
    provenance.write(out, data=data, device=device, seeds={"search": opts.seed}, extra={
        "search": {"budget": budget.describe(), "trials": len(rows), "templates": list(templates),
                   "seconds_this_invocation": round(time.perf_counter() - started, 1),
                   "chosen_trials": [r["number"] for r in chosen], "feasible": feasible, **raced,
                   "chosen_variants": {str(r["number"]): m["variant"] for r, m in zip(chosen, measured, strict=True)},
                   **ran}})
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
            progress: Progress, runner: Evaluator) -> set[str]:
    """Batches of `opts.jobs` trials until the count is reached; returns the nodes that ran them."""
    done = trials_done(study)
    task = progress.add("search trials", total=opts.trials)
    progress.update(task, advance=min(done, opts.trials))
    left, nodes = max(0, opts.trials - done), set()
    while left > 0:
        batch: list[tuple[optuna.Trial, tuple[str, ...]]] = []
        while len(batch) < min(opts.jobs, left):
            trial, steps = _ask(study, info, templates, opts, env.budget)
            started = time.perf_counter()
            early = foresee(env, study, trial.number, steps)
            if early is None:
                batch.append((trial, steps))
                continue
            attrs = {**early, "seconds": round(time.perf_counter() - started, 2)}
            _tell(study, trial, Outcome(state="pruned", metrics=None, reports=[], attrs=attrs, node=""), env.budget)
            write_tables(env.out, study, env.budget)
            progress.update(task, advance=1, info=f"#{trial.number} {trial.params['template']}: stopped untrained")
            left -= 1
        stop = _stop_below(env, study)
        jobs = [Job(t.number, steps, stop) for t, steps in batch]
        for (trial, _), outcome in zip(batch, runner.map(jobs) if jobs else [], strict=True):
            _tell(study, trial, outcome, env.budget)
            write_tables(env.out, study, env.budget)
            nodes.add(outcome["node"])
            progress.update(task, advance=1, info=f"#{trial.number} {trial.params['template']}: {_brief(outcome)}")
        left -= len(batch)
    progress.finish(task)
    return nodes - {""}


def _stop_below(env: Env, study: optuna.Study) -> float:
    """The validation accuracy under which a half-done trial stops (foresee.armed says from when)."""
    return env.hopeless_below() if armed(env.budget, complete(study)) else -math.inf


def _ask(study: optuna.Study, info: Any, templates: tuple[str, ...], opts: SearchOptions,
         budget: Budget) -> tuple[optuna.Trial, tuple[str, ...]]:
    """The next trial and its pipeline. Without a timed objective each INT8 step ships its smallest file
    (quantize.deploy=smallest) rather than the mode a timing picks: a clock then decides no figure a
    bytes search compares (two same-seed searches measured one trial at 22,567 and 22,128 B when the
    timed choice flipped), and no trial spends time timing modes it is not judged on."""
    trial = study.ask()
    template = trial.suggest_categorical("template", list(templates))
    steps = TEMPLATES[template](Draw(trial, template), info, opts.space)
    steps = tuple(trial.user_attrs.get("steps") or steps)  # a seeded trial runs the recipe's own steps
    if not budget.metrics & TIMED_METRICS:
        steps = with_deploy(steps, SMALLEST)
    trial.set_user_attr("steps", list(steps))
    return trial, steps


STATES = {"pruned": optuna.trial.TrialState.PRUNED, "failed": optuna.trial.TrialState.FAIL}


def _tell(study: optuna.Study, trial: optuna.Trial, outcome: Outcome, budget: Budget) -> None:
    """The outcome replayed onto the trial, then told. Optuna takes intermediate values from
    single-objective studies only (a Pareto search's trial.report raises)."""
    if len(budget.objectives) == 1:
        for step, acc in outcome["reports"]:
            trial.report(acc, step)
    for key, value in outcome["attrs"].items():
        trial.set_user_attr(key, value)
    values = outcome["metrics"]
    if values is not None:
        trial.set_user_attr("metrics", values)
    study.tell(trial, [values[o] for o in budget.objectives] if values is not None else None,
               state=STATES.get(outcome["state"]))


def _where(runner: Evaluator, nodes: set[str], budget: Budget, progress: Progress) -> dict[str, Any]:
    """Where the trials ran; on a cluster, the nodes that timed them (SPEC §13: a search's timings
    come from one node type, and provenance says which)."""
    info = runner.describe()
    if info["executor"] == "ray":
        info["trial_nodes"] = sorted(nodes)
        if budget.metrics & TIMED_METRICS:
            info["timings"] = "each trial's us_b1/us_b256 timed on the Ray node that ran it (trial_nodes)"
            if len({n.partition(" (")[2] for n in nodes}) > 1:
                progress.log("warning: trials were timed on more than one CPU model (provenance.json "
                             "search.trial_nodes): their us_* figures do not compare")
    return info


def _brief(outcome: Outcome) -> str:
    values = outcome["metrics"]
    if values is None:
        return "stopped early" if outcome["state"] == "pruned" else "failed"
    return f"{values['bytes']:.0f} B, val {values['val_accuracy_pct']:.2f} %"


def _choose(rows: list[dict[str, Any]], budget: Budget) -> tuple[list[dict[str, Any]], bool]:
    """The best feasible trial (the feasible Pareto front for two objectives); when none fits, the
    three closest (least total relative miss), which trials.csv says by how much each misses. A pipeline
    drawn twice (TPE redraws a small discrete space) counts once: its first trial."""
    done = _firsts(rows)
    fit = [r for r in done if r["feasible"]]
    if fit:
        if len(budget.objectives) == 1:
            return [min(fit, key=lambda r: (r[budget.objectives[0]], r["drop"]))], True
        return [r for r in fit if r["pareto"]], True
    caps = dict(budget.limits)

    def miss(r: dict[str, Any]) -> float:
        return sum(max(0.0, r[m] - c) / max(abs(c), 1e-9) for m, c in caps.items() if math.isfinite(r[m]))

    return sorted(done, key=miss)[:CLOSEST], False


def _firsts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The complete trials, a pipeline drawn twice (TPE redraws a small discrete space) as its first."""
    firsts: dict[tuple[str, ...], dict[str, Any]] = {}
    for r in rows:
        if r["state"] == "COMPLETE":
            firsts.setdefault(tuple(r["steps"]), r)
    return list(firsts.values())


def _final(env: Env, rows: list[dict[str, Any]], chosen: list[dict[str, Any]], feasible: bool,
           progress: Progress) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A speed search's fastest feasible trials raced in one timing (finals.py): the chosen trials (the
    winner, else `chosen` as it was) and what provenance records of the race."""
    rivals = finalists([r for r in _firsts(rows) if r["feasible"]], env.budget) if feasible else []
    if not rivals:
        return chosen, {}
    won, times = race(env, rivals, progress)
    key = env.budget.objectives[0]
    progress.log(f"search: final of {len(rivals)} trials timed together ({key}): "
                 + ", ".join(f"#{n} {us:.1f} µs" for n, us in times.items()) + f"; trial {won['number']} chosen")
    return [won], {"final": {"metric": key, "us_by_trial": {n: round(us, 3) for n, us in times.items()}}}


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
