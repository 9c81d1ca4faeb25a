"""The `int8` exporter: an integer QDQ ONNX model (qdq.py) in one of three deployment modes, or the
fastest of them chosen by timing ("never slower"); a pruned model's file ships packed (.dsonnx)."""

import copy
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from torch import nn

from deepshrink.checkpoint import atomic_write_bytes
from deepshrink.export.base import EXPORTERS, Artifact, ExportContext
from deepshrink.export.dsonnx import pack_onnx, unpack_onnx, zero_fraction
from deepshrink.export.floating import export_onnx
from deepshrink.export.qdq import Ranges, build_qdq
from deepshrink.export.qdq_graph import float_ops, quantize_graph
from deepshrink.export.qgraph import expressible, observe_ranges
from deepshrink.export.runners import qdq_runner
from deepshrink.export.torch_int8 import torch_int8_runner
from deepshrink.measure.latency import median_us
from deepshrink.models import WEIGHTED, weighted_layers


def _names(model: nn.Module, kinds: tuple[type[nn.Module], ...] = WEIGHTED) -> set[str]:
    return {n for n, _ in weighted_layers(model, kinds)}


# Layer sets per INT8 deployment mode. "weights" keeps every layer's compute in float.
MODES: dict[str, Any] = {
    "full": _names,
    "mixed": lambda m: _names(m, (nn.Linear,)),  # convs in float, where INT8 is slow here
    "weights": lambda m: set(),
}
DEPLOY_CHOICES = (*MODES, "auto")
PACK_MIN_ZEROS = 0.25  # weight zeros from which the INT8 model ships packed (.dsonnx); INT8 rounding alone gives ~2%


def choose_mode(model: nn.Module, ranges: Ranges, stem: Path, ctx: ExportContext) -> tuple[str, dict[str, Any]]:
    """Time FP32 and every INT8 mode side by side (ONNX Runtime, 1 thread); the fastest INT8 mode
    wins. "weights" runs the FP32 kernels, so the winner is never meaningfully slower than FP32."""
    shape = tuple(ctx.example.shape[1:])
    work = stem.with_name(f".{stem.name}-timing")
    work.mkdir(parents=True, exist_ok=True)
    ref = export_onnx(copy.deepcopy(model), work / "fp32.onnx", ctx.example)
    runners = {"fp32": qdq_runner(ref)(1, "cpu")}
    seen: list[set[str]] = []
    for mode, layers in MODES.items():
        if layers(model) in seen:  # e.g. "mixed" is "full" for a model without convolutions
            continue
        seen.append(layers(model))
        path = work / f"{mode}.onnx"
        onnx.save(build_qdq(model, ranges, shape, layers(model)), str(path))
        runners[mode] = qdq_runner(path, fold_weights=mode == "weights")(1, "cpu")
    calib = ctx.calib if ctx.calib is not None else ctx.example
    x = np.resize(calib.numpy().astype(np.float32), (max(1024, len(calib)), *shape))
    us = median_us(runners, x)
    for f in work.iterdir():
        f.unlink()
    work.rmdir()
    mode = min((m for m in MODES if m in us), key=lambda m: us[m])
    info = {f"int8_us_{k}": round(v, 3) for k, v in us.items()}
    info["int8_speedup_vs_fp32"] = round(us["fp32"] / us[mode], 3)
    return mode, info


def ranges_from(opts: dict[str, Any], model: nn.Module, ctx: ExportContext) -> Ranges:
    if opts.get("ranges"):
        return {name: (lo, hi) for name, lo, hi in opts["ranges"]}
    calib = ctx.calib if ctx.calib is not None else ctx.example
    return observe_ranges(model, calib[: int(opts.get("calib", len(calib)))])


@EXPORTERS.register("int8")
def export_int8(model: nn.Module, stem: Path, ctx: ExportContext, opts: dict[str, Any]) -> Artifact:
    model = model.eval().float()
    if not expressible(model):
        return _ship(model, stem, _graph(model, ctx, opts), "full", {})
    ranges = ranges_from(opts, model, ctx)
    mode = str(opts.get("mode", "full"))
    info: dict[str, Any] = {"int8_mode": mode}
    if mode == "auto":
        mode, timing = choose_mode(model, ranges, stem, ctx)
        info = {"int8_mode": mode, "int8_mode_chosen_by": "measured (onnxruntime, 1 thread)", **timing}
    raw = build_qdq(model, ranges, tuple(ctx.example.shape[1:]), MODES[mode](model)).SerializeToString()
    return _ship(model, stem, (raw, info), mode, ranges)


def _graph(model: nn.Module, ctx: ExportContext, opts: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """Any other graph: ONNX Runtime's quantize_static, all INT8 (its deployment modes need the plan)."""
    calib = ctx.calib if ctx.calib is not None else ctx.example
    q = quantize_graph(model, ctx.example, calib[: int(opts.get("calib", len(calib)))])
    info: dict[str, Any] = {"int8_mode": "full", "int8_route": "onnxruntime quantize_static (QDQ)"}
    notes = [f"left in float by onnxruntime: {', '.join(left)}"] if (left := float_ops(q)) else []
    if str(opts.get("mode", "full")) != "full":
        notes.append(f"deploy={opts['mode']} needs a sequential model; shipped all-INT8")
    if notes:
        info["notes"] = "; ".join(notes)
    return q.SerializeToString(), info


def _ship(model: nn.Module, stem: Path, built: tuple[bytes, dict[str, Any]], mode: str, ranges: Ranges) -> Artifact:
    """Write the integer model (packed when pruned) and say how each runtime runs it."""
    raw, info = built
    path = stem.with_suffix(".onnx")
    shipped = path
    if zero_fraction(raw) >= PACK_MIN_ZEROS:  # a pruned model: its zeros are worth not storing
        packed = pack_onnx(raw)
        raw = unpack_onnx(packed)  # what the runtime loads is what unpacking the shipped file gives
        shipped = stem.with_suffix(".dsonnx")
        atomic_write_bytes(shipped, packed)
        info.update(packed_onnx=True, onnx_bytes=len(raw))
    atomic_write_bytes(path, raw)
    # Only "full" computes in int8; the energy model costs the others' MACs as fp32.
    precision = {"full": "int8", "mixed": "int8-mixed", "weights": "int8-weights"}[mode]
    runners = {"onnxruntime": qdq_runner(path, fold_weights=mode == "weights")}
    if mode == "full" and ranges:  # PyTorch's x86 quantized engine runs the same integer model (same scales)
        runners["torch"] = torch_int8_runner(copy.deepcopy(model), ranges)
    kind = f"{'packed-' if shipped != path else ''}onnx-qdq-int8-{mode}"
    return Artifact(path=shipped, kind=kind, precision=precision,
                    files={p.name: p.stat().st_size for p in {shipped, path}}, runners=runners, info=info)
