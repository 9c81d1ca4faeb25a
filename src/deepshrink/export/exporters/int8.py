"""The `int8` exporter: an integer QDQ ONNX model (formats/onnx_int8.py; any other graph through ONNX
Runtime's quantizer, formats/onnx_int8_ort.py) in one of three deployment modes, or the fastest of them
chosen by timing (choice.py, "never slower"), or the smallest file; a pruned model's file ships as a sparse
ONNX file (.dsonnx)."""

import copy
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from deepshrink.checkpoint import atomic_write_bytes
from deepshrink.export import choice
from deepshrink.export.base import EXPORTERS, Artifact, ExportContext
from deepshrink.export.formats import dsonnx
from deepshrink.export.formats.onnx_float import export_onnx
from deepshrink.export.formats.onnx_int8 import build_qdq
from deepshrink.export.formats.onnx_int8_ort import float_ops, quantize_graph, weights_only
from deepshrink.export.runtimes import onnx_runners, ort_runner, sparse, torch_int8_runner
from deepshrink.measure.latency import RunnerFactory
from deepshrink.models import WEIGHTED, weight_of, weighted_layers
from deepshrink.quant.plan import Ranges, expressible, observe_ranges
from deepshrink.quant.scales import quantize_weight, weight_scales


def _names(model: nn.Module, kinds: tuple[type[nn.Module], ...] = WEIGHTED) -> set[str]:
    return {n for n, _ in weighted_layers(model, kinds)}


# Layer sets per INT8 deployment mode. "weights" keeps every layer's compute in float.
MODES: dict[str, Callable[[nn.Module], set[str]]] = {
    "full": _names,
    "mixed": lambda m: _names(m, (nn.Linear,)),  # convs in float, where INT8 is slow here
    "weights": lambda m: set(),
}
SMALLEST = "smallest"  # the mode whose shipped file is smallest: chosen by bytes, not by a clock
DEPLOY_CHOICES = (*MODES, "auto", SMALLEST)
INCUMBENT = "weights"  # deploy=auto's default: FP32 compute on decoded weights, never slower than FP32
SPARSE_MIN_ZEROS = 0.25  # weight zeros from which the INT8 model ships as .dsonnx; INT8 rounding alone gives ~2%


def _dequantized(model: nn.Module) -> nn.Module:
    """A copy holding the INT8 weights dequantized (codes x per-channel scale, as onnx_int8.py writes them):
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
    pruned = total > 0 and sum(int((w == 0).sum()) for w in weights) >= SPARSE_MIN_ZEROS * total
    if mode == "weights" and pruned and (net := sparse.build(_dequantized(model), calib)) is not None:
        runners["sparse"] = sparse.sparse_runner(net)
    return runners


def choose_mode(model: nn.Module, ranges: Ranges, stem: Path, ctx: ExportContext) -> tuple[str, dict[str, Any]]:
    """Time FP32 and every INT8 mode in each of its runtimes side by side (choice.py). The incumbent is
    "weights" (INT8-stored, decoded at load, FP32 compute: FP32's speed): another mode ships only when it is
    faster beyond the noise at both batches, so it is never slower than FP32 and does not flip."""
    shape = tuple(ctx.example.shape[1:])
    calib = (ctx.calib if ctx.calib is not None else ctx.example).numpy().astype(np.float32)
    with _timing_dir(stem) as work:
        fp32 = ort_runner(export_onnx(copy.deepcopy(model), work / "fp32.onnx", ctx.example))
        candidates = {}
        for mode in distinct_modes(model):  # the incumbent always timed
            path = work / f"{mode}.onnx"
            onnx.save(build_qdq(model, ranges, shape, MODES[mode](model)), str(path))
            candidates[mode] = mode_runners(model, ranges, mode, path, calib)
        return choice.choose_mode(candidates, calib, INCUMBENT, ctx.choice_margin, fp32)


@contextmanager
def _timing_dir(stem: Path) -> Iterator[Path]:
    """A folder beside the artifact for the candidate files a timed choice loads, removed afterwards."""
    work = stem.with_name(f".{stem.name}-timing")
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def as_dsonnx(raw: bytes) -> bytes | None:
    """The .dsonnx `_ship` writes for this serialized model when it is pruned (its zeros are worth not
    storing); None when the plain .onnx ships."""
    return dsonnx.encode(raw) if dsonnx.zero_fraction(raw) >= SPARSE_MIN_ZEROS else None


def shipped_size(raw: bytes) -> int:
    """The bytes `_ship` writes for this serialized model."""
    return len(as_dsonnx(raw) or raw)


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
                                                          f"paired rounds; margin {ctx.choice_margin:g})", **timing}
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
    times both and keeps "weights" unless "full" is faster beyond the noise (choice.py): all-INT8 LeNet-5
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
    with _timing_dir(stem) as work:
        for mode, raw in built.items():
            (work / f"{mode}.onnx").write_bytes(raw)
        candidates = {m: onnx_runners(work / f"{m}.onnx") for m in built}
        mode, timing = choice.choose_mode(candidates, calib, INCUMBENT, ctx.choice_margin)
    info.update(timing)
    return mode


def _ship(model: nn.Module, stem: Path, built: tuple[bytes, dict[str, Any]], mode: str, ranges: Ranges,
          calib: np.ndarray | None) -> Artifact:
    """Write the integer model (as a .dsonnx when pruned) and say how each runtime runs it."""
    raw, info = built
    path = stem.with_suffix(".onnx")
    shipped = path
    if (sparse_file := as_dsonnx(raw)) is not None:
        raw = dsonnx.decode(sparse_file, str(stem))  # what the runtime loads is what decoding the shipped file gives
        shipped = stem.with_suffix(".dsonnx")
        atomic_write_bytes(shipped, sparse_file)
        info.update(dsonnx=True, onnx_bytes=len(raw))
    atomic_write_bytes(path, raw)
    # Only "full" computes in int8; the energy model costs the others' MACs as fp32.
    precision = {"full": "int8", "mixed": "int8-mixed", "weights": "int8-weights"}[mode]
    runners = mode_runners(model, ranges, mode, path, calib)
    kind = f"{'dsonnx' if shipped != path else 'onnx'}-qdq-int8-{mode}"
    return Artifact(path=shipped, kind=kind, precision=precision,
                    files={p.name: p.stat().st_size for p in {shipped, path}}, runners=runners, info=info)
