"""What a shipped artifact runs on a microcontroller: always an all-INT8 QDQ model.

On a desktop CPU the "never slower" choice may ship a variant as INT8-stored weights with float compute;
on a microcontroller the integer path is the fast one. A variant quantized by deepshrink keeps its
calibrated ranges in the manifest (`int8_ranges`), so its all-INT8 model is rebuilt from the checkpoint
beside the file with the same weights and the same calibration, the logits quantized with the last
layer's calibrated range (the C returns int8 logits). A graph quantized by ONNX Runtime (residuals,
depthwise convolutions) ships all-INT8 already and is read as it is.

A compressed file (`.dsparse` pruned, `.dsq` 2-7-bit weights, `.dsz` pruned and clustered) is decoded and
quantized the way its weights already are, so the INT8 weights hold exactly its values' structure: a
clustered layer's few shared values under one scale for the layer (one int8 codebook), a bit-packed layer's
codes under each channel's own step (the int8 weights are the codes themselves), anything else per channel;
activations calibrated on the same 512 training images as PTQ. The kernels then read those weights in place
(mcu/layouts.py).
"""

from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch
from torch import nn

from deepshrink.checkpoint import Manifest, load_checkpoint, paths_for, read_manifest
from deepshrink.errors import UserError
from deepshrink.export.files import DECODERS, Opened, find_manifest, open_artifact
from deepshrink.export.formats.onnx_int8 import build_qdq
from deepshrink.export.formats.onnx_int8_ort import quantize_graph
from deepshrink.models import weight_of, weighted_layers
from deepshrink.quant.plan import expressible, observe_ranges
from deepshrink.quant.scales import weight_scales

# What the microcontroller target reads: an INT8 ONNX model as shipped, or a compressed file deepshrink wrote.
SUFFIXES = (".onnx", ".dsonnx", *DECODERS)
READER = "the microcontroller target reads an INT8 model from quantize:precision=int8, or a compressed file"


@dataclass
class IntegerModel:
    """The all-INT8 QDQ model the C reproduces, and where it came from."""

    model: onnx.ModelProto
    variant: str
    manifest: Manifest | None
    notes: list[str] = field(default_factory=list)


def _integer_input(m: onnx.ModelProto) -> bool:
    """Whether the file quantizes its input (all-INT8 or mixed), rather than computing in float."""
    return any(n.op_type == "QuantizeLinear" and n.input[0] in {i.name for i in m.graph.input} for n in m.graph.node)


def is_compressed(path: Path) -> bool:
    """A `.dsparse`, `.dsq` or `.dsz`: decoded, then quantized the way its weights are stored."""
    return path.suffix in DECODERS


def load_integer_model(path: Path, calib: torch.Tensor | None = None) -> IntegerModel:
    """The all-INT8 model of an artifact; a compressed file's activations are calibrated on `calib`."""
    opened = open_artifact(path, SUFFIXES, READER)
    if opened.compressed:
        assert calib is not None
        return _compressed(opened, calib)
    assert opened.graph is not None
    shipped = opened.graph
    manifest = opened.manifest
    variant = path.parent.name if manifest else path.stem
    ranges = manifest.info.get("int8_ranges") if manifest else None
    if not ranges:
        if manifest and manifest.info.get("int8_calib") and not _integer_input(shipped):
            assert calib is not None
            return _requantized(path, variant, calib[: int(manifest.info["int8_calib"])])
        return IntegerModel(shipped, variant, manifest)
    model, manifest = load_checkpoint(paths_for(path.with_name(path.name.split(".")[0]))[0])
    if not expressible(model):
        return IntegerModel(shipped, variant, manifest)
    try:
        calibrated = {str(name): (float(lo), float(hi)) for name, lo, hi in ranges}
    except (TypeError, ValueError):
        raise UserError(f"{path}: manifest int8_ranges is malformed") from None
    layers = {name for name, _ in weighted_layers(model)}
    if missing := sorted(layers - set(calibrated)):
        raise UserError(f"{path}: manifest int8_ranges lacks layer {missing[0]!r}")
    full = build_qdq(model, calibrated, tuple(manifest.input_shape), layers, quantize_logits=True)
    notes = ["all-INT8 model rebuilt from the checkpoint with the shipped file's calibration; logits quantized "
             "with the last layer's calibrated range"]
    if not _integer_input(shipped):
        notes.append("the desktop ships this variant as INT8-stored weights with float compute; the "
                     "microcontroller runs it all-INT8")
    return IntegerModel(full, variant, manifest, notes)


def calibrated_here(path: Path) -> bool:
    """Whether the target calibrates the model itself (it needs the training images): a compressed file, or
    a graph ONNX Runtime quantized that ships with float compute (its manifest's `int8_calib`)."""
    if is_compressed(path):
        return True
    found = find_manifest(path)
    return found is not None and bool(read_manifest(found).info.get("int8_calib"))


def _requantized(path: Path, variant: str, calib: torch.Tensor) -> IntegerModel:
    """A graph the quantize step quantized with ONNX Runtime, shipped as INT8 weights with float compute: its
    checkpoint quantized again by the same quantizer on the same calibration images (the step's first N
    training images), which is the all-INT8 model the step would have shipped with deploy=full."""
    model, manifest = load_checkpoint(paths_for(path.with_name(path.name.split(".")[0]))[0])
    full = quantize_graph(model.eval().float(), calib[:1], calib)
    notes = [f"all-INT8 model rebuilt from the checkpoint, quantized by ONNX Runtime on the step's {len(calib)} "
             "calibration images; the desktop ships this variant as INT8-stored weights with float compute"]
    return IntegerModel(full, variant, manifest, notes)


def _code_steps(flat: torch.Tensor) -> torch.Tensor | None:
    """Per row, the step that makes every weight an integer code (tried from the fewest levels up), or None
    when some row has none: then the weights are not codes x step."""
    top = flat.abs().amax(1)
    steps = torch.ones_like(top)
    todo = top > 0
    for levels in range(1, 128):
        s = top / levels
        k = flat / torch.where(todo, s, torch.ones_like(s))[:, None]
        exact = todo & ((k - k.round()).abs().amax(1) < 1e-3)
        steps[exact] = s[exact]
        todo &= ~exact
        if not todo.any():
            return steps
    return None


def channel_scales(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel int8 scales that keep a decoded compressed layer's weights exact where they can be: a
    bit-packed layer's own steps (every weight is code x step: the int8 weights are the codes); one scale
    for a layer of at most 256 distinct values (clustered: one codebook); else the channel's max|w| / 127."""
    flat = w.detach().float().reshape(w.shape[0], -1)
    if (steps := _code_steps(flat)) is not None:
        return steps
    nz = flat[flat != 0]
    if nz.numel() and torch.unique(nz).numel() <= 256:
        return torch.full((w.shape[0],), float(nz.abs().max()) / 127)
    return weight_scales(w, 127)


def _compressed(opened: Opened, calib: torch.Tensor) -> IntegerModel:
    path, model, manifest = opened.path, opened.model, opened.manifest
    assert model is not None and manifest is not None
    if not expressible(model):
        raise UserError(f"{path}: in-place weights need a sequential model of Linear/Conv2d/ReLU/MaxPool2d/"
                        "Flatten layers")
    scales = {name: channel_scales(weight_of(model, name)) for name, _ in weighted_layers(model)}
    ranges = observe_ranges(model, calib)
    full = build_qdq(model, ranges, tuple(manifest.input_shape), set(scales), quantize_logits=True, scales=scales)
    note = (f"{path.suffix} decoded and quantized to INT8 as its weights are stored (shared values under one "
            "scale per layer, packed codes under their own steps), activations calibrated on 512 training images")
    return IntegerModel(full, path.parent.name, manifest, [note])


def decoded(path: Path) -> nn.Module:
    """The float model a compressed file decodes to (the artifact's own accuracy is measured on it)."""
    model = open_artifact(path, tuple(DECODERS), READER).model
    assert model is not None
    return model
