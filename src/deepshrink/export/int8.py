"""The `int8` exporter: an integer QDQ ONNX model (qdq.py) in one of three deployment modes, or the
fastest of them chosen by timing ("never slower"); a pruned model's file ships packed (.dsonnx)."""

import copy
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from deepshrink.checkpoint import atomic_write_bytes
from deepshrink.export import sparse_runtime
from deepshrink.export.base import EXPORTERS, Artifact, ExportContext
from deepshrink.export.deploy import BATCH, best_challenger, calib_images, keep_unless, time_runtimes
from deepshrink.export.dsonnx import pack_onnx, unpack_onnx, zero_fraction
from deepshrink.export.floating import export_onnx
from deepshrink.export.qdq import Ranges, build_qdq
from deepshrink.export.qdq_graph import float_ops, quantize_graph, weights_only
from deepshrink.export.qgraph import expressible, observe_ranges, quantize_weight, weight_scales
from deepshrink.export.runners import onnx_runners, ort_runner
from deepshrink.export.torch_int8 import torch_int8_runner
from deepshrink.measure.latency import RunnerFactory
from deepshrink.models import WEIGHTED, weight_of, weighted_layers


def _names(model: nn.Module, kinds: tuple[type[nn.Module], ...] = WEIGHTED) -> set[str]:
    return {n for n, _ in weighted_layers(model, kinds)}


# Layer sets per INT8 deployment mode. "weights" keeps every layer's compute in float.
MODES: dict[str, Any] = {
    "full": _names,
    "mixed": lambda m: _names(m, (nn.Linear,)),  # convs in float, where INT8 is slow here
    "weights": lambda m: set(),
}
SMALLEST = "smallest"  # the mode whose shipped file is smallest: chosen by bytes, not by a clock
DEPLOY_CHOICES = (*MODES, "auto", SMALLEST)
INCUMBENT = "weights"  # deploy=auto's default: FP32 compute on decoded weights, never slower than FP32
PACK_MIN_ZEROS = 0.25  # weight zeros from which the INT8 model ships packed (.dsonnx); INT8 rounding alone gives ~2%


def _dequantized(model: nn.Module) -> nn.Module:
    """A copy holding the INT8 weights dequantized (codes x per-channel scale, as qdq.py writes them):
    the float model "weights" mode computes."""
    out = copy.deepcopy(model).eval()
    with torch.no_grad():
        for name, _ in weighted_layers(out):
            w = weight_of(out, name)
            scales = weight_scales(w, 127)
            w.copy_(quantize_weight(w, scales, 127) * scales.reshape(-1, *([1] * (w.dim() - 1))))
    return out


def mode_runners(model: nn.Module, ranges: Ranges, mode: str, path: Path,
                 calib: np.ndarray | None) -> dict[str, RunnerFactory]:
    """Every runtime of one mode's integer file: ONNX Runtime (and OpenVINO); PyTorch's x86 engine for
    "full"; the sparse kernels (on the dequantized weights) for "weights" of a pruned Linear chain."""
    runners = onnx_runners(path)
    if mode == "full" and ranges:  # PyTorch's x86 quantized engine runs the same integer model (same scales)
        runners["torch"] = torch_int8_runner(copy.deepcopy(model), ranges)
    weights = [weight_of(model, name) for name, _ in weighted_layers(model)]
    total = sum(w.numel() for w in weights)
    pruned = total > 0 and sum(int((w == 0).sum()) for w in weights) >= PACK_MIN_ZEROS * total
    if mode == "weights" and pruned and (net := sparse_runtime.build(_dequantized(model), calib)) is not None:
        runners["sparse"] = sparse_runtime.sparse_runner(net)
    return runners


def _mode_times(us: dict[int, dict[str, float]], modes: list[str]) -> dict[str, dict[int, float]]:
    """mode -> batch -> µs per image in the mode's fastest runtime at that batch."""
    return {m: {b: min(v for k, v in t.items() if k.startswith(f"{m}/")) for b, t in us.items()} for m in modes}


def _times(t: dict[int, float]) -> str:
    return ", ".join(f"{t[b]:.3g} µs at batch {b}" for b in sorted(t, reverse=True))


def choose_mode(model: nn.Module, ranges: Ranges, stem: Path, ctx: ExportContext) -> tuple[str, dict[str, Any]]:
    """Time FP32 and every INT8 mode in each of its runtimes side by side (1 thread, calibration
    images, batch 256 and batch 1). The incumbent is "weights" (INT8-stored, decoded at load, FP32
    compute: FP32's speed): another mode ships only when it is `ctx.choice_margin` faster at both
    batches (export/deploy.py `keep_unless`), so the choice is never slower than FP32 and does not
    flip on noise."""
    shape = tuple(ctx.example.shape[1:])
    calib = (ctx.calib if ctx.calib is not None else ctx.example).numpy().astype(np.float32)
    work = stem.with_name(f".{stem.name}-timing")
    work.mkdir(parents=True, exist_ok=True)
    runners = {"fp32": ort_runner(export_onnx(copy.deepcopy(model), work / "fp32.onnx", ctx.example))}
    for mode in distinct_modes(model):  # the incumbent always timed
        path = work / f"{mode}.onnx"
        onnx.save(build_qdq(model, ranges, shape, MODES[mode](model)), str(path))
        runners.update({f"{mode}/{rt}": f for rt, f in mode_runners(model, ranges, mode, path, calib).items()})
    us = time_runtimes(runners, calib_images(calib))
    shutil.rmtree(work)
    times = _mode_times(us, [m for m in MODES if f"{m}/onnxruntime" in runners])
    mode = keep_unless(times, INCUMBENT, ctx.choice_margin)
    info: dict[str, Any] = {f"int8_us_b{b}_{k.replace('/', '_')}": round(v, 3) for b, t in us.items()
                            for k, v in t.items()}
    for b, t in us.items():
        info[f"int8_speedup_vs_fp32_b{b}"] = round(t["fp32"] / times[mode][b], 3)
    rival = INCUMBENT if mode != INCUMBENT else best_challenger(times, INCUMBENT)
    info["int8_mode_rival"] = rival or ""
    why = f"; {mode} {_times(times[mode])}" + (f" vs {rival} {_times(times[rival])}" if rival else "")
    keep = f" ({INCUMBENT} kept unless another mode is {ctx.choice_margin:.0%} faster at both batches)"
    info["notes"] = (f"int8 mode {mode}: {info[f'int8_speedup_vs_fp32_b{BATCH}']:.2f}x FP32 at batch {BATCH}, "
                     f"{info['int8_speedup_vs_fp32_b1']:.2f}x at batch 1{why}{keep}")
    return mode, info


def packed(raw: bytes) -> bytes | None:
    """The .dsonnx `_ship` writes for this serialized model when it is pruned (its zeros are worth not
    storing); None when the plain .onnx ships."""
    return pack_onnx(raw) if zero_fraction(raw) >= PACK_MIN_ZEROS else None


def shipped_size(raw: bytes) -> int:
    """The bytes `_ship` writes for this serialized model."""
    return len(packed(raw) or raw)


def smallest(built: dict[str, bytes]) -> tuple[str, dict[str, Any]]:
    """The mode whose shipped file is smallest (the first listed on a tie: put the incumbent first).
    Deterministic, so a search minimizing bytes measures the same file on every run."""
    sizes = {m: shipped_size(raw) for m, raw in built.items()}
    mode = min(sizes, key=sizes.__getitem__)
    said = ", ".join(f"{m} {n} B" for m, n in sizes.items())
    info: dict[str, Any] = {f"int8_bytes_{m}": n for m, n in sizes.items()}
    return mode, {"int8_mode": mode, "int8_mode_chosen_by": "the smallest shipped file", **info,
                  "notes": f"int8 mode {mode}: the smallest file ({said})"}


def distinct_modes(model: nn.Module) -> list[str]:
    """The modes giving different files for this model, the incumbent first ("mixed" is "full" for a
    model without convolutions)."""
    out: list[str] = []
    for mode in (INCUMBENT, *(m for m in MODES if m != INCUMBENT)):
        if all(MODES[mode](model) != MODES[m](model) for m in out):
            out.append(mode)
    return out


def ranges_from(opts: dict[str, Any], model: nn.Module, ctx: ExportContext) -> Ranges:
    if opts.get("ranges"):
        return {name: (lo, hi) for name, lo, hi in opts["ranges"]}
    calib = ctx.calib if ctx.calib is not None else ctx.example
    return observe_ranges(model, calib[: int(opts.get("calib", len(calib)))])


@EXPORTERS.register("int8")
def export_int8(model: nn.Module, stem: Path, ctx: ExportContext, opts: dict[str, Any]) -> Artifact:
    model = model.eval().float()
    if not expressible(model):
        raw, graph_info, graph_mode = _graph(model, stem, ctx, opts)
        return _ship(model, stem, (raw, graph_info), graph_mode, {}, None)
    ranges = ranges_from(opts, model, ctx)
    mode = str(opts.get("mode", "full"))
    info: dict[str, Any] = {"int8_mode": mode}
    if mode == "auto":
        mode, timing = choose_mode(model, ranges, stem, ctx)
        info = {"int8_mode": mode, "int8_mode_chosen_by": "measured (each mode's runtimes, 1 thread, batch 256 and 1, "
                                                          f"medians; margin {ctx.choice_margin:g})", **timing}
    shape = tuple(ctx.example.shape[1:])
    if mode == SMALLEST:
        built = {m: build_qdq(model, ranges, shape, MODES[m](model)).SerializeToString() for m in distinct_modes(model)}
        mode, info = smallest(built)
        raw = built[mode]
    else:
        raw = build_qdq(model, ranges, shape, MODES[mode](model)).SerializeToString()
    calib = (ctx.calib if ctx.calib is not None else ctx.example).numpy().astype(np.float32)
    return _ship(model, stem, (raw, info), mode, ranges, calib)


def _graph(model: nn.Module, stem: Path, ctx: ExportContext,
           opts: dict[str, Any]) -> tuple[bytes, dict[str, Any], str]:
    """Any other graph: ONNX Runtime's quantize_static; all INT8 ("full"), or its weights alone in INT8
    ("weights": the activations' Q/DQ pairs taken out, float compute on weights decoded at load). deploy=auto
    times both and keeps "weights" unless "full" is the margin faster at both batches: all-INT8 LeNet-5
    from an .onnx ran 3x slower than FP32 (QLinearConv on a 1-channel input)."""
    calib = ctx.calib if ctx.calib is not None else ctx.example
    sample = calib[: int(opts.get("calib", len(calib)))]
    q = quantize_graph(model, ctx.example, sample)
    info: dict[str, Any] = {"int8_route": "onnxruntime quantize_static (QDQ)"}
    notes = [f"left in float by onnxruntime: {', '.join(left)}"] if (left := float_ops(q)) else []
    asked = str(opts.get("mode", "full"))
    if asked == "mixed":
        notes.append("deploy=mixed needs a sequential model; chose between full and weights")
    built = {"full": q.SerializeToString()}
    if asked != "full":  # a second calibrated quantization, only where the weights-only graph can be chosen
        built["weights"] = weights_only(quantize_graph(model, ctx.example, sample, True)).SerializeToString()
    if asked in built:
        mode = asked
    elif asked == SMALLEST:
        mode, chosen = smallest({m: built[m] for m in ("weights", "full")})  # the incumbent first
        info.update(chosen)
    else:
        mode = _graph_mode(built, stem, calib.numpy().astype(np.float32), ctx, info)
    info["int8_mode"] = mode
    if notes:
        info["notes"] = "; ".join([*notes, *([info["notes"]] if "notes" in info else [])])
    return built[mode], info, mode


def _graph_mode(built: dict[str, bytes], stem: Path, calib: np.ndarray, ctx: ExportContext,
                info: dict[str, Any]) -> str:
    work = stem.with_name(f".{stem.name}-timing")
    work.mkdir(parents=True, exist_ok=True)
    try:
        for mode, raw in built.items():
            (work / f"{mode}.onnx").write_bytes(raw)
        runners = {f"{m}/{rt}": f for m in built for rt, f in onnx_runners(work / f"{m}.onnx").items()}
        us = time_runtimes(runners, calib_images(calib))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    times = _mode_times(us, list(built))
    mode = keep_unless(times, INCUMBENT, ctx.choice_margin)
    rival = next(m for m in built if m != mode)
    info.update({f"int8_us_b{b}_{k.replace('/', '_')}": round(v, 3) for b, t in us.items() for k, v in t.items()})
    info["int8_mode_rival"] = rival
    info["notes"] = (f"int8 mode {mode}: {_times(times[mode])} vs {rival} {_times(times[rival])} "
                     f"({INCUMBENT} kept unless full is {ctx.choice_margin:.0%} faster at both batches)")
    return mode


def _ship(model: nn.Module, stem: Path, built: tuple[bytes, dict[str, Any]], mode: str, ranges: Ranges,
          calib: np.ndarray | None) -> Artifact:
    """Write the integer model (packed when pruned) and say how each runtime runs it."""
    raw, info = built
    path = stem.with_suffix(".onnx")
    shipped = path
    if (dsonnx := packed(raw)) is not None:
        raw = unpack_onnx(dsonnx)  # what the runtime loads is what unpacking the shipped file gives
        shipped = stem.with_suffix(".dsonnx")
        atomic_write_bytes(shipped, dsonnx)
        info.update(packed_onnx=True, onnx_bytes=len(raw))
    atomic_write_bytes(path, raw)
    # Only "full" computes in int8; the energy model costs the others' MACs as fp32.
    precision = {"full": "int8", "mixed": "int8-mixed", "weights": "int8-weights"}[mode]
    runners = mode_runners(model, ranges, mode, path, calib)
    kind = f"{'packed-' if shipped != path else ''}onnx-qdq-int8-{mode}"
    return Artifact(path=shipped, kind=kind, precision=precision,
                    files={p.name: p.stat().st_size for p in {shipped, path}}, runners=runners, info=info)
