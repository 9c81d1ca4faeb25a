"""One variant's path: (train | steps) -> export -> measure -> rows in the run directory."""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepshrink import quiet
from deepshrink.checkpoint import Manifest, save_checkpoint
from deepshrink.data import DataSplits
from deepshrink.errors import UserError
from deepshrink.export import Artifact, ExportContext, export
from deepshrink.export.choice import DEFAULT_MARGIN
from deepshrink.mcu import McuOptions, build_mcu
from deepshrink.mcu.measure import eval_data
from deepshrink.measure import energy, power
from deepshrink.measure.accuracy import artifact_accuracy
from deepshrink.measure.params import layer_stats
from deepshrink.models import canonical, check_output, create_model, origin_of, reference_of
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
from deepshrink.results import lock as results_lock
from deepshrink.study.plan import Work
from deepshrink.train import TrainConfig, fit
from deepshrink.variant import Variant, variant_id


@dataclass
class Measured:
    """A variant's exported artifact and its results rows."""

    artifact: Artifact
    row: dict[str, Any]
    layers: list[dict[str, Any]]


def measure_variant(v: Variant, data: DataSplits, out: Path, baseline: tuple[str, float] | None = None,
                    sram_budget: int = energy.DEFAULT_SRAM_BUDGET_BYTES,
                    choice_margin: float = DEFAULT_MARGIN) -> Measured:
    """Export `v`, then measure accuracy, size, parameters, MACs and energy from the artifact."""
    with quiet.busy():  # export and accuracy passes load the CPU: a study's timing waits for them
        return _measure(v, data, out, baseline, sram_budget, choice_margin)


def ship(v: Variant, data: DataSplits, out: Path, choice_margin: float = DEFAULT_MARGIN) -> tuple[Artifact, Path]:
    """`v` exported as it would ship, under out/artifacts/<id>/, and its checkpoint saved beside it."""
    stem = out / "artifacts" / v.id / "model"
    ckpt = save_checkpoint(v.model, v.manifest, stem)
    ctx = ExportContext(example=data.test_x[:1].clone(), calib=data.train_x[:512].clone(),
                        choice_margin=choice_margin)
    return export(v.model, v.deployment, stem, ctx), ckpt


def _measure(v: Variant, data: DataSplits, out: Path, baseline: tuple[str, float] | None,
             sram_budget: int, choice_margin: float) -> Measured:
    artifact, ckpt = ship(v, data, out, choice_margin)
    # Accuracy from what deploys: the runtime measured fastest at batch 256 (export/choice.py).
    runtime = str(artifact.info.get("deployed_runtime") or next(iter(artifact.runners)))
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
        "variant": v.id, "dataset": v.manifest.dataset, "model": v.manifest.name or v.manifest.model,
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
        # What a step or the exporter left untouched or chose, from both (SPEC §7).
        "notes": "; ".join(str(n) for n in (v.info.get("notes"), artifact.info.get("notes")) if n),
    }
    layers = [{"variant": v.id, **s.__dict__} for s in stats]
    return Measured(artifact, row, layers)


# Compact files the microcontroller target runs in place; INT8 files it runs all-INT8.
MCU_SUFFIXES = {".dsparse", ".dsq", ".dsz"}


def measure_mcu(m: Measured, data: DataSplits, out: Path, target: str, clock_mhz: float = 80.0,
                optimize: str = "speed") -> None:
    """Build an INT8 or compact variant for the microcontroller, emulate it, and add the figures to its row
    (`mcu_*`; the C's accuracy as mcu_accuracy_pct). A model the target cannot run keeps its row: the reason
    goes to notes."""
    art = m.artifact
    if not (art.path.suffix in MCU_SUFFIXES or str(art.precision).startswith("int8")):
        return
    start = time.perf_counter()
    try:
        with quiet.busy():
            row = build_mcu(art.path, out / "artifacts" / m.row["variant"] / "mcu", data=eval_data(data),
                            options=McuOptions(target=target, latency=None, clock_mhz=clock_mhz, optimize=optimize))
    except UserError as e:
        m.row["notes"] = "; ".join(filter(None, [m.row.get("notes"), f"mcu: not built ({e})"]))
        return
    m.row.update({k: v for k, v in row.items() if k.startswith("mcu_")})
    m.row["mcu_accuracy_pct"] = row["accuracy_pct"]
    m.row["mcu_seconds"] = round(time.perf_counter() - start, 2)  # what the target adds to a study's wall time


def write_measured(out: Path, measured: list[Measured], latency_rows: list[dict[str, Any]]) -> None:
    upsert(out / "results.csv", [m.row for m in measured], RESULTS_COLUMNS, RESULTS_KEY)
    upsert(out / "layers.csv", [r for m in measured for r in m.layers], LAYERS_COLUMNS, LAYERS_KEY)
    if latency_rows:
        upsert(out / "latency.csv", latency_rows, LATENCY_COLUMNS, LATENCY_KEY)


def train_baseline(dataset: str, model: str | nn.Module, cfg: TrainConfig, data: DataSplits, device: str,
                   progress: Progress, vid: str | None = None, model_args: dict[str, Any] | None = None) -> Variant:
    """Train a fresh registry/referenced model (seeded), or the caller's own module in place."""
    torch.manual_seed(cfg.seed)
    if isinstance(model, nn.Module):
        origin = origin_of(model)
        model_name = origin[0] if origin else reference_of(model)
        model_args = model_args if model_args is not None or origin is None else origin[1]
        check_output(model, model_name, data.input_shape, data.num_classes)
    else:
        model_name, model = canonical(model), create_model(model, data, **(model_args or {}))
    log = fit(model, data, cfg, progress=progress, label=f"{dataset} {model_name}", device=device)
    model.cpu()
    manifest = Manifest(model=model_name, dataset=dataset, input_shape=list(data.input_shape),
                        num_classes=data.num_classes, mean=data.mean, std=data.std, train=cfg.to_dict(),
                        model_args=dict(model_args or {}))
    return Variant(vid or variant_id(dataset, model_name, []), model, manifest, log=log, train_seconds=log.seconds,
                   epochs=cfg.epochs, seed=cfg.seed)


def record(out: Path, measured: list[Measured], lat: list[dict[str, Any]], extra: dict[str, Any]) -> None:
    for m in measured:
        m.row.update(extra)
    with results_lock(out):
        write_measured(out, measured, lat)


def record_failure(out: Path, work: Work, reason: str) -> None:
    row = {"variant": work.vid, "dataset": work.dataset, "model": work.model, "base_model": work.model,
           "label": work.label, "pipeline": " | ".join(work.steps), "recipe_steps": " | ".join(work.steps),
           "seed": work.seed, "status": f"failed: {reason}"}
    with results_lock(out):
        upsert(out / "results.csv", [row], RESULTS_COLUMNS, RESULTS_KEY)
