"""The `dsq` exporter: sub-8-bit weights (`quantize:bits=2..7`) shipped as bit-packed codes (formats/dsq.py),
run as the model decoded from that file."""

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepshrink.checkpoint import atomic_write_bytes
from deepshrink.export.base import EXPORTERS, Artifact, ExportContext
from deepshrink.export.formats import dsq
from deepshrink.export.formats.onnx_float import export_onnx
from deepshrink.export.runtimes import onnx_runners, torch_runner


@EXPORTERS.register("dsq")
def export_dsq(model: nn.Module, stem: Path, ctx: ExportContext, opts: dict[str, Any]) -> Artifact:
    """Writes the .dsq; runs the model decoded from it (torch, and ONNX Runtime on a float
    ONNX copy of the decoded weights: the runtime's working form, not what ships)."""
    bits = int(opts["bits"])
    steps = {f"{name}.weight": torch.tensor(vals) for name, vals in opts["steps"]}
    path = stem.with_suffix(".dsq")
    atomic_write_bytes(path, dsq.encode(model.state_dict(), bits, steps))
    decoded = copy.deepcopy(model).float()
    decoded.load_state_dict(dsq.decode(path.read_bytes(), str(path)))
    onnx_path = export_onnx(copy.deepcopy(decoded), stem.with_name(f"{stem.name}.decoded.onnx"), ctx.example)
    return Artifact(path=path, kind=f"dsq-int{bits}-weights", precision=f"int{bits}-weights",
                    files={path.name: path.stat().st_size, onnx_path.name: onnx_path.stat().st_size},
                    runners={**onnx_runners(onnx_path), "torch": torch_runner(decoded)},
                    info={"weight_bits": bits, "decoded_onnx_bytes": onnx_path.stat().st_size})
