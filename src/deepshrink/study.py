"""The one place that knows the whole sequence: data -> model -> train/compress -> export -> measure
-> result files. Commands (`train`, `compress`, `study`) are thin calls into here.
"""

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepshrink import provenance
from deepshrink.checkpoint import Manifest, atomic_write_bytes, save_checkpoint
from deepshrink.data import DataSplits, load_dataset
from deepshrink.export import Artifact, ExportContext, export
from deepshrink.measure import energy
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
        from deepshrink.errors import UserError

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
        m = measure_variant(v, data, out, baseline=(base.id, base_m.row["accuracy_pct"]))
        lat = measure_latency([(base.id, base_m.artifact), (v.id, m.artifact)], data.test_x.numpy(), latency,
                              progress)
    write_measured(out, [base_m, m], lat)
    write_provenance(out, device, {"compress": seed}, data)
    return m.row
