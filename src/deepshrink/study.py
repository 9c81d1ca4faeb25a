"""The one place that knows the whole sequence: data -> model -> train/compress -> export -> measure
-> result files. Commands (`train`, `compress`, `study`) are thin calls into here.
"""

import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepshrink import provenance
from deepshrink.checkpoint import Manifest, atomic_write_bytes, save_checkpoint
from deepshrink.data import DataSplits, load_dataset
from deepshrink.errors import UserError
from deepshrink.export import Artifact, ExportContext, export
from deepshrink.measure import energy, power
from deepshrink.measure.latency import LatencyConfig, measure_latency
from deepshrink.measure.params import layer_stats
from deepshrink.models import create_model
from deepshrink.progress import Progress
from deepshrink.results import (
    LATENCY_COLUMNS,
    LATENCY_KEY,
    LAYERS_COLUMNS,
    LAYERS_KEY,
    RESULTS_COLUMNS,
    RESULTS_KEY,
    upsert,
)
from deepshrink.train import TrainConfig, accuracy, fit
from deepshrink.variant import Variant


@dataclass
class Measured:
    """A variant's exported artifact and its results rows."""

    artifact: Artifact
    row: dict[str, Any]
    layers: list[dict[str, Any]]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", text).strip("-")


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available on this machine")
    return device


def artifact_accuracy(artifact: Artifact, data: DataSplits, runtime: str, batch: int = 1000) -> float:
    """Top-1 on the test set computed by running the shipped artifact in `runtime`."""
    run = artifact.runners[runtime](0, "cpu")
    x = data.test_x.numpy().astype(artifact.input_dtype, copy=False)
    logits = np.concatenate([run(x[i : i + batch]) for i in range(0, len(x), batch)])
    return accuracy(torch.from_numpy(np.asarray(logits, dtype=np.float32)), data.test_y)


def measure_variant(v: Variant, data: DataSplits, out: Path, baseline: tuple[str, float] | None = None,
                    sram_budget: int = energy.DEFAULT_SRAM_BUDGET_BYTES) -> Measured:
    """Export `v`, then measure accuracy, size, parameters, MACs and energy from the artifact."""
    stem = out / "artifacts" / v.id / "model"
    ckpt = save_checkpoint(v.model, v.manifest, stem)
    ctx = ExportContext(example=data.test_x[:1].clone(), calib=data.train_x[:512].clone())
    artifact = export(v.model, v.deployment, stem, ctx)
    runtime = "onnxruntime" if "onnxruntime" in artifact.runners else next(iter(artifact.runners))
    acc = artifact_accuracy(artifact, data, runtime)
    acc_torch = artifact_accuracy(artifact, data, "torch") if "torch" in artifact.runners else float("nan")
    stats = layer_stats(v.model, data.input_shape)
    total = sum(s.params_total for s in stats)
    nonzero = sum(s.params_nonzero for s in stats)
    macs = sum(s.macs for s in stats)
    macs_nz = sum(s.macs_nonzero for s in stats)
    measured_nj, power_source = power.measure_energy_per_image(
        artifact.runners[runtime](0, "cpu"), data.test_x.numpy().astype(artifact.input_dtype), "cpu")
    sparse = bool(artifact.info.get("sparse"))
    est = energy.estimate(macs_nz if sparse else macs, artifact.size_bytes, artifact.precision, sram_budget)
    row = {
        "variant": v.id, "dataset": v.manifest.dataset, "model": v.manifest.model,
        "pipeline": " | ".join(v.manifest.pipeline), "precision": artifact.precision,
        "sparsity": 1.0 - nonzero / total if total else 0.0, "params_total": total, "params_nonzero": nonzero,
        "size_bytes": artifact.size_bytes, "size_kb": artifact.size_bytes / 1000.0,
        "artifact": str(artifact.path.relative_to(out)), "accuracy_pct": acc,
        "baseline_accuracy_pct": baseline[1] if baseline else acc, "energy_nj_est": est.nj_per_image,
        "train_seconds": v.train_seconds, "epochs": v.epochs, "seed": v.seed,
        "checkpoint": str(ckpt.relative_to(out)), "status": "ok",
        "baseline_variant": baseline[0] if baseline else v.id, "runtime": runtime,
        "deployment": artifact.kind, "checkpoint_bytes": ckpt.stat().st_size, "macs": macs,
        "macs_nonzero": macs_nz, "energy_memory": est.memory,
        "energy_nj_measured": measured_nj if measured_nj is not None else "n/a", "energy_source": power_source,
        "val_accuracy_pct": v.log.best_val_acc if v.log else None,
        "epochs_to_converge": v.log.epochs_to_converge() if v.log and v.log.history else None,
        "best_epoch": v.log.best_epoch if v.log else None, "accuracy_torch_pct": acc_torch,
        **{k: val for k, val in v.info.items() if isinstance(val, (int, float, str))},
        **{k: val for k, val in artifact.info.items() if isinstance(val, (int, float, str))},
    }
    layers = [{"variant": v.id, **s.__dict__} for s in stats]
    return Measured(artifact, row, layers)


def write_measured(out: Path, measured: list[Measured], latency_rows: list[dict[str, Any]]) -> None:
    upsert(out / "results.csv", [m.row for m in measured], RESULTS_COLUMNS, RESULTS_KEY)
    upsert(out / "layers.csv", [r for m in measured for r in m.layers], LAYERS_COLUMNS, LAYERS_KEY)
    if latency_rows:
        upsert(out / "latency.csv", latency_rows, LATENCY_COLUMNS, LATENCY_KEY)


def write_provenance(out: Path, device: str, seeds: dict[str, int], data: DataSplits,
                     extra: dict[str, Any] | None = None) -> None:
    prov = provenance.collect(device, seeds, {
        "data": {data.name: {"origin": data.origin, "fingerprint": data.fingerprint,
                             "mean": data.mean, "std": data.std}},
        **(extra or {}),
    })
    path = out / "provenance.json"
    if path.exists():  # keep earlier datasets' entries of the same run directory
        with contextlib.suppress(json.JSONDecodeError, OSError):
            prov["data"] = {**json.loads(path.read_text()).get("data", {}), **prov["data"]}
    atomic_write_bytes(path, json.dumps(prov, indent=2, default=str).encode())


def train_baseline(dataset: str, model_name: str, cfg: TrainConfig, data: DataSplits, device: str,
                   progress: Progress, variant_id: str | None = None) -> Variant:
    torch.manual_seed(cfg.seed)
    model = create_model(model_name, data.input_shape, data.num_classes)
    log = fit(model, data, cfg, progress=progress, label=f"{dataset} {model_name}", device=device)
    model.cpu()
    manifest = Manifest(model=model_name, dataset=dataset, input_shape=list(data.input_shape),
                        num_classes=data.num_classes, mean=data.mean, std=data.std, train=cfg.to_dict())
    vid = variant_id or slug(f"{dataset}-{model_name}")
    return Variant(vid, model, manifest, log=log, train_seconds=log.seconds, epochs=cfg.epochs, seed=cfg.seed)


def run_train(dataset: str, model_name: str, cfg: TrainConfig, out: Path, data_dir: Path | None = None,
              device: str = "auto", latency: LatencyConfig | None = None, quiet: bool = False) -> dict[str, Any]:
    """`deepshrink train`: one baseline, exported and measured, written as a run directory."""
    device = resolve_device(device)
    latency = latency or LatencyConfig(devices=("cpu", "cuda") if device == "cuda" else ("cpu",))
    create_model(model_name, dataset)  # fail fast on an unknown model name before loading data
    data = load_dataset(dataset, data_dir)
    with Progress(enabled=not quiet) as progress:
        variant = train_baseline(dataset, model_name, cfg, data, device, progress)
        measured = measure_variant(variant, data, out)
        lat = measure_latency([(variant.id, measured.artifact)], data.test_x.numpy(), latency, progress)
    write_measured(out, [measured], lat)
    write_provenance(out, device, {"train": cfg.seed}, data)
    return measured.row


def variant_id(dataset: str, model: str, pipeline: list[str]) -> str:
    base = slug(f"{dataset}-{model}")
    if not pipeline:
        return base
    tail = slug("+".join(pipeline))
    if len(tail) > 60:
        tail = tail[:50] + "-" + provenance.config_hash(pipeline, 8)
    return f"{base}--{tail}"


def run_compress(checkpoint: Path, steps: list[str], out: Path, data_dir: Path | None = None,
                 device: str = "auto", latency: LatencyConfig | None = None, quiet: bool = False,
                 seed: int = 0) -> dict[str, Any]:
    """`deepshrink compress`: a chain of steps applied to a trained checkpoint, measured beside it."""
    import copy

    from deepshrink.checkpoint import load_checkpoint, read_manifest
    from deepshrink.compress import apply, parse_step
    from deepshrink.variant import StepContext

    read_manifest(checkpoint)
    configs = [parse_step(s) for s in steps]  # every step validated before any work starts
    device = resolve_device(device)
    latency = latency or LatencyConfig(devices=("cpu", "cuda") if device == "cuda" else ("cpu",))
    model, manifest = load_checkpoint(checkpoint)
    data = load_dataset(manifest.dataset, data_dir)
    base = Variant(variant_id(manifest.dataset, manifest.model, manifest.pipeline), model, manifest, seed=seed)
    with Progress(enabled=not quiet) as progress:
        base_m = measure_variant(base, data, out)
        ctx = StepContext(data=data, device=device, seed=seed, progress=progress, cache_dir=out / "cache")
        v = Variant(base.id, copy.deepcopy(model), copy.deepcopy(manifest), seed=seed)
        for cfg in configs:
            v = apply(v, cfg, ctx)
        v.id = variant_id(manifest.dataset, manifest.model, v.manifest.pipeline)
        measured = [base_m, measure_variant(v, data, out, baseline=(base.id, base_m.row["accuracy_pct"]))]
        control = _control(configs)
        if control is not None:  # a distilled student is always reported beside its no-teacher control
            c = apply(Variant(base.id, copy.deepcopy(model), copy.deepcopy(manifest), seed=seed), control, ctx)
            c.id = variant_id(manifest.dataset, manifest.model, c.manifest.pipeline)
            measured.append(measure_variant(c, data, out, baseline=(base.id, base_m.row["accuracy_pct"])))
        lat = measure_latency([(x.row["variant"], x.artifact) for x in measured], data.test_x.numpy(), latency,
                              progress)
    write_measured(out, measured, lat)
    write_provenance(out, device, {"compress": seed}, data)
    main = dict(measured[1].row)
    if len(measured) > 2:
        main["control"] = measured[2].row  # not a results.csv column: the rows are already written
    return main


def _control(configs: list[Any]) -> Any | None:
    """The no-teacher control of a lone distill step (same student and budget, alpha=0), else None."""
    from deepshrink.compress.distill import DistillConfig, scratch_config

    if len(configs) == 1 and isinstance(configs[0], DistillConfig) and configs[0].alpha > 0:
        return scratch_config(configs[0])
    return None


# ---- `deepshrink study`: a recipe run as a DAG of cached steps (runner.py), resumable ----

@dataclass(frozen=True)
class StudyOptions:
    out: Path
    data_dir: Path | None = None
    device: str = "cpu"
    quiet: bool = False
    threads: int = 0  # torch threads per job; 0 = leave torch's default
    code: str = ""  # the code version in cache keys, pinned by the parent for the whole study


_DATA: dict[tuple[str, int], DataSplits] = {}  # per process: each dataset is decoded once


def _data(name: str, opts: StudyOptions, val_size: int) -> DataSplits:
    if (name, val_size) not in _DATA:
        _DATA[name, val_size] = load_dataset(name, opts.data_dir, val_size=val_size)
    return _DATA[name, val_size]


def _merge_data_provenance(out: Path, data: DataSplits) -> None:
    """Add this dataset's origin and fingerprint to provenance.json (the parent writes the rest)."""
    path = out / "provenance.json"
    prov = provenance.read(path)
    prov.setdefault("data", {})[data.name] = {"origin": data.origin, "fingerprint": data.fingerprint,
                                             "mean": data.mean, "std": data.std}
    atomic_write_bytes(path, json.dumps(prov, indent=2, default=str).encode())


def _record(out: Path, measured: list[Measured], lat: list[dict[str, Any]], extra: dict[str, Any]) -> None:
    from deepshrink import runner

    for m in measured:
        m.row.update(extra)
    with runner.results_lock(out):
        write_measured(out, measured, lat)


def _record_failure(out: Path, work: Any, reason: str) -> None:
    from deepshrink import runner

    row = {"variant": work.vid, "dataset": work.dataset, "model": work.model, "base_model": work.model,
           "label": work.label, "pipeline": " | ".join(work.steps), "recipe_steps": " | ".join(work.steps),
           "seed": work.seed, "status": f"failed: {reason}"}
    with runner.results_lock(out):
        upsert(out / "results.csv", [row], RESULTS_COLUMNS, RESULTS_KEY)


def _step_applier(ctx: Any, base_ckpt: Path, on_step: Any) -> Any:
    from deepshrink import runner
    from deepshrink.compress import apply, parse_step, step_names
    from deepshrink.recipes import CANONICAL_STEPS

    def apply_step(v: Variant, text: str) -> Variant:
        run_text, _ = runner.substitute(text, base_ckpt, "")
        name = run_text.partition(":")[0].strip()
        if name in CANONICAL_STEPS and name not in step_names():  # step_names() imports the techniques
            raise RuntimeError(f"step {name!r} is not implemented in this build")
        on_step(text)
        return apply(v, parse_step(run_text), ctx)

    return apply_step


def _baseline(recipe: Any, opts: StudyOptions, base_work: Any, data: DataSplits,
              progress: Progress) -> tuple[Variant, str, bool]:
    from deepshrink import runner
    from deepshrink.config import default_train

    overrides = recipe.train_overrides(base_work.dataset, base_work.model)
    cfg = default_train(base_work.dataset, base_work.model, **{**overrides, "seed": base_work.seed})
    key = runner.baseline_key(base_work.dataset, base_work.model, cfg.to_dict(), data.fingerprint, recipe.val_size)
    cached = (opts.out / "cache" / key / "variant.json").exists()
    v, _ = runner.cached_or_compute(
        opts.out / "cache" / key, base_work.vid,
        lambda: train_baseline(base_work.dataset, base_work.model, cfg, data, opts.device, progress, base_work.vid),
        fresh=False)
    return v, key, not cached


class _Group:
    """One unit of study work: a baseline and (optionally) a tree of pipelines sharing it."""

    def __init__(self, recipe: Any, opts: StudyOptions, base_work: Any, progress: Progress,
                 overall: int | None) -> None:
        self.recipe, self.opts, self.base_work = recipe, opts, base_work
        self.progress, self.overall = progress, overall
        self.statuses: list[tuple[str, str]] = []
        self.sram = recipe.measure.sram_kb * 1024 or energy.DEFAULT_SRAM_BUDGET_BYTES
        self.lat_cfg = recipe.measure.latency(opts.device)

    def say(self, info: str, advance: int = 0) -> None:
        if self.overall is not None:
            self.progress.update(self.overall, advance=advance, info=info)

    def tick(self, vid: str, status: str) -> None:
        self.statuses.append((vid, status))
        self.say(f"{vid}: {status[:40]}", advance=1)

    def fail(self, work: Any, e: BaseException) -> None:
        from deepshrink import runner

        reason = runner.failure_reason(e)
        _record_failure(self.opts.out, work, reason)
        self.progress.log(f"{work.vid}: failed: {reason}")
        self.tick(work.vid, f"failed: {reason}")

    def measure_baseline(self, base: Variant, data: DataSplits, x_time: np.ndarray) -> None:
        m = measure_variant(base, data, self.opts.out, sram_budget=self.sram)
        lat = measure_latency([(base.id, m.artifact)], x_time, self.lat_cfg, self.progress)
        _record(self.opts.out, [m], lat, {"label": "baseline", "base_model": self.base_work.model,
                                          "recipe_steps": "", "pipeline_seconds": 0.0})
        from deepshrink import runner

        with runner.results_lock(self.opts.out):
            _merge_data_provenance(self.opts.out, data)
        self.tick(base.id, "ok")

    def pipelines(self, base: Variant, key: str, data: DataSplits, x_time: np.ndarray, works: list[Any],
                  todo: list[Any]) -> None:
        """Each pipeline from the shared prefixes, measured (and timed interleaved) beside the baseline."""
        from deepshrink import runner
        from deepshrink.export import Deployment
        from deepshrink.variant import StepContext

        out = self.opts.out
        base_acc = next(float(r["accuracy_pct"]) for r in runner.read_rows(out / "results.csv")
                        if r["variant"] == base.id)
        ctx_export = ExportContext(example=data.test_x[:1].clone(), calib=data.train_x[:512].clone())
        # One folder per process (parallel trees of one baseline must not share export temp files), outside
        # the baseline's cache folder, which a recomputation replaces.
        base_art = export(base.model, Deployment(), out / "cache" / "exports" / f"{key}-{os.getpid()}" / "model",
                          ctx_export)
        ctx = StepContext(data=data, device=self.opts.device, seed=self.base_work.seed, progress=self.progress,
                          cache_dir=out / "cache" / "steps")
        base_ckpt = out / "cache" / key / "model.safetensors"
        current = [""]
        apply_step = _step_applier(ctx, base_ckpt, lambda text: self.say(f"{current[0]} > {text}"))
        memo = runner.Prefixes()
        memo.done[()] = (base, key, 0.0)
        ids = {w.steps[:i]: w.vid if i == len(w.steps) else variant_id(w.dataset, w.model, list(w.steps[:i]))
               for w in works for i in range(1, len(w.steps) + 1)}
        for w in todo:
            current[0] = w.vid
            self.say(f"{w.vid} ({len(w.steps)} steps)")
            try:
                v, seconds = runner.realize(
                    w.steps, memo, apply_step, out / "cache", lambda s: ids.get(s, "prefix"),
                    lambda t: runner.substitute(t, base_ckpt, key)[1], data.fingerprint, w.seed, fresh=False)
                v.id = w.vid
                m = measure_variant(v, data, out, baseline=(base.id, base_acc), sram_budget=self.sram)
                lat = [r for r in measure_latency([(base.id, base_art), (v.id, m.artifact)], x_time, self.lat_cfg,
                                                  self.progress) if r["variant"] == v.id]
                _record(out, [m], lat, {"label": w.label, "base_model": w.model,
                                        "recipe_steps": " | ".join(w.steps), "pipeline_seconds": seconds})
                self.tick(w.vid, "ok")
            except Exception as e:  # a failed variant is a result too; the study goes on
                self.fail(w, e)


def run_group(recipe: Any, opts: StudyOptions, base_work: Any, works: list[Any], done: set[str],
              progress: Progress | None = None, overall: int | None = None,
              ensure: bool = False) -> list[tuple[str, str]]:
    """Produce a baseline (if needed) and the pipelines of one tree, measuring each beside the baseline.
    `ensure`: train (or load) the baseline into the cache even when its own row is done."""
    from deepshrink import runner

    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.code:
        runner.pin_code_version(opts.code)
    group = _Group(recipe, opts, base_work, progress or Progress(enabled=False), overall)
    todo = [w for w in works if w.vid not in done]
    need_base = base_work.vid not in done
    if not todo and not need_base and not ensure:
        return group.statuses
    group.say(f"{base_work.vid}: baseline")
    try:
        data = _data(base_work.dataset, opts, recipe.val_size)
        base, key, retrained = _baseline(recipe, opts, base_work, data, group.progress)
    except Exception as e:  # no baseline: every variant of the group is recorded as failed
        for w in [base_work] * need_base + todo:
            group.fail(w, e)
        return group.statuses
    x_time = data.test_x[: recipe.measure.images or None].numpy()
    # A baseline trained again (its cache was gone or the code changed) is measured again too, so its
    # row always describes the model the pipelines start from.
    if need_base or retrained:
        try:
            group.measure_baseline(base, data, x_time)
        except Exception as e:  # an unmeasured baseline leaves nothing to compare the pipelines with
            for w in [base_work, *todo]:
                group.fail(w, e)
            return group.statuses
    if todo:
        try:
            group.pipelines(base, key, data, x_time, works, todo)
        except Exception as e:  # set-up shared by the tree failed (e.g. the paired baseline export)
            finished = {vid for vid, _ in group.statuses}
            for w in todo:
                if w.vid not in finished:
                    group.fail(w, e)
    return group.statuses


def run_study(recipe_name: str, out: Path | None = None, data_dir: Path | None = None, device: str = "auto",
              jobs: int | None = None, overrides: tuple[str, ...] = (), fresh: bool = False,
              quiet: bool = False) -> tuple[Path, dict[str, str]]:
    """`deepshrink study`: validate the recipe, run what is not yet done, render the report."""
    from deepshrink import runner
    from deepshrink.recipes import load_recipe
    from deepshrink.report import render_report

    recipe = load_recipe(recipe_name, list(overrides))  # every problem surfaces before any work
    jobs = recipe.jobs if jobs is None else jobs
    if jobs < 1:
        raise UserError(f"--jobs {jobs}: must be >= 1")
    out = out or Path("runs") / slug(recipe.name)
    opts = StudyOptions(out=out, data_dir=data_dir, device=resolve_device(device), quiet=quiet)
    statuses = runner.execute(recipe, opts, jobs=jobs, fresh=fresh)
    render_report(out)
    return out, statuses
