"""The `sparse` exporter: an unstructurally pruned model shipped as its non-zeros (formats/dsparse.py), run
as the model decoded from that file, densely and, for a Linear chain, on its non-zeros (runtimes/sparse.py)."""

import copy
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from deepshrink.checkpoint import atomic_write_bytes
from deepshrink.export.base import EXPORTERS, Artifact, ExportContext
from deepshrink.export.formats import dsparse
from deepshrink.export.formats.onnx_float import export_onnx
from deepshrink.export.runtimes import onnx_runners, sparse, torch_runner
from deepshrink.models import weighted_layers


def sparse_weight_keys(model: nn.Module) -> set[str]:
    return {f"{n}.weight" for n, _ in weighted_layers(model)}


def write_sparse(model: nn.Module, path: Path, codec: str = "lzma") -> Path:
    atomic_write_bytes(path, dsparse.encode(model.state_dict(), sparse_weight_keys(model), codec))
    return path


@EXPORTERS.register("sparse")
def export_sparse(model: nn.Module, stem: Path, ctx: ExportContext, opts: dict[str, Any]) -> Artifact:
    """Primary file: the sparse file. Every runner runs the model decoded from that file: dense in
    ONNX Runtime and torch, and on its non-zeros in the sparse runtime when the model is a Linear chain."""
    path = write_sparse(model, stem.with_suffix(".dsparse"), str(opts.get("codec", "lzma")))
    decoded = load_sparse_into(model, path)
    # The zero-filled dense ONNX sits beside the manifest, so `deepshrink bench` can time it.
    onnx_path = export_onnx(decoded, stem.with_suffix(".onnx"), ctx.example)
    runners = {**onnx_runners(onnx_path), "torch": torch_runner(decoded)}
    calib = (ctx.calib if ctx.calib is not None else ctx.example).numpy().astype(np.float32)
    info: dict[str, Any] = {"sparse": True, "sparse_codec": str(opts.get("codec", "lzma"))}
    net = sparse.build(decoded, calib)
    if net is not None:
        runners["sparse"] = sparse.sparse_runner(net)
        info.update(sparse_runtime_nonzeros=net.nnz, sparse_runtime_inputs=len(net.keep))
    else:
        info["notes"] = "no sparse runtime (convolutions): runs dense"
    return Artifact(path=path, kind="sparse", precision="fp32",
                    files={p.name: p.stat().st_size for p in (path, onnx_path)}, runners=runners, info=info)


def load_sparse_into(model: nn.Module, path: Path) -> nn.Module:
    """A copy of `model` holding the weights decoded from `path` (the model that actually ships)."""
    out = copy.deepcopy(model).cpu().eval()
    out.load_state_dict(dsparse.decode(path.read_bytes(), str(path)))
    return out
