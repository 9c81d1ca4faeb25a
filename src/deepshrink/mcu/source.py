"""What a shipped artifact runs on a microcontroller: always its full-INT8 QDQ model.

On a desktop CPU the "never slower" choice may ship a variant as INT8-stored weights with float compute;
on a microcontroller the integer path is the fast one. A variant quantized by deepshrink keeps its
calibrated ranges in the manifest (`int8_ranges`), so its all-INT8 model is rebuilt from the checkpoint
beside the file with the same weights and the same calibration, the logits quantized with the last
layer's calibrated range (the C returns int8 logits). A graph quantized by ONNX Runtime (residuals,
depthwise convolutions) ships all-INT8 already and is read as it is.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from deepshrink.checkpoint import Manifest, load_checkpoint, paths_for, read_manifest
from deepshrink.errors import UserError
from deepshrink.export.dsonnx import unpack_onnx
from deepshrink.export.onnx_file import read_onnx
from deepshrink.export.qdq import build_qdq
from deepshrink.export.qgraph import expressible
from deepshrink.models import weighted_layers


@dataclass
class Source:
    model: onnx.ModelProto  # the all-INT8 QDQ model the C reproduces
    variant: str
    manifest: Manifest | None
    notes: list[str] = field(default_factory=list)


Reader = Callable[[Path], bytes]
# Artifact suffix -> the ONNX bytes it holds.
READERS: dict[str, Reader] = {
    ".onnx": lambda p: p.read_bytes(),
    ".dsonnx": lambda p: unpack_onnx(p.read_bytes(), str(p)),
}


def _manifest(path: Path) -> Manifest | None:
    meta = path.with_name(f"{path.name.split('.')[0]}.json")
    return read_manifest(meta) if meta.is_file() else None


def _integer_input(m: onnx.ModelProto) -> bool:
    """Whether the file quantizes its input (all-INT8 or mixed), rather than computing in float."""
    return any(n.op_type == "QuantizeLinear" and n.input[0] in {i.name for i in m.graph.input} for n in m.graph.node)


def load_source(path: Path) -> Source:
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if path.suffix not in READERS:
        raise UserError(f"{path}: the microcontroller target reads {', '.join(READERS)} files (an INT8 model "
                        "from quantize:precision=int8)")
    shipped = read_onnx(READERS[path.suffix](path), str(path))
    manifest = _manifest(path)
    variant = path.parent.name if manifest else path.stem
    ranges = manifest.info.get("int8_ranges") if manifest else None
    if not ranges:
        return Source(shipped, variant, manifest)
    model, manifest = load_checkpoint(paths_for(path.with_name(path.name.split(".")[0]))[0])
    if not expressible(model):
        return Source(shipped, variant, manifest)
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
    return Source(full, variant, manifest, notes)
