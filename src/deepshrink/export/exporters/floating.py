"""Float ONNX artifacts: FP32 (the baseline deployment), FP16 and FP64 (accuracy measured in that dtype)."""

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepshrink.checkpoint import atomic_write_bytes
from deepshrink.export.base import EXPORTERS, Artifact, ExportContext
from deepshrink.export.formats.onnx_float import export_onnx
from deepshrink.export.runtimes import onnx_runners, ort_runner, torch_runner
from deepshrink.ingest.onnx_graph import OnnxGraph
from deepshrink.measure.latency import RunnerFactory


@EXPORTERS.register("fp32")
def export_fp32(model: nn.Module, stem: Path, ctx: ExportContext, opts: dict[str, Any]) -> Artifact:
    if isinstance(model, OnnxGraph):  # a user's graph ships as it came: no re-export, no torch runtime
        path = stem.with_suffix(".onnx")
        atomic_write_bytes(path, model.onnx_bytes())
        return Artifact(path=path, kind="onnx-fp32", precision="fp32", files={path.name: path.stat().st_size},
                        runners=onnx_runners(path))
    onnx_path = export_onnx(model, stem.with_suffix(".onnx"), ctx.example)
    return Artifact(path=onnx_path, kind="onnx-fp32", precision="fp32",
                    files={onnx_path.name: onnx_path.stat().st_size},
                    runners={**onnx_runners(onnx_path), "torch": torch_runner(model)})


def _ort_runs(path: Path, x: np.ndarray) -> str | None:
    """None when ONNX Runtime's CPU kernels run the file, else why not (e.g. no float64 Conv)."""
    try:
        ort_runner(path)(1, "cpu")(x)
    except Exception as e:  # onnxruntime raises its own exception types for missing kernels
        return str(e).splitlines()[0][:160]
    return None


def _export_float(model: nn.Module, stem: Path, ctx: ExportContext, dtype: torch.dtype, label: str,
                  np_dtype: Any) -> Artifact:
    path = export_onnx(copy.deepcopy(model), stem.with_suffix(".onnx"), ctx.example, dtype)
    runners: dict[str, RunnerFactory] = {}
    why = _ort_runs(path, ctx.example.numpy().astype(np_dtype))
    if why is None:
        runners["onnxruntime"] = ort_runner(path)
    runners["torch"] = torch_runner(copy.deepcopy(model), dtype)
    info = {"onnxruntime": "ok" if why is None else f"unsupported: {why}"}
    return Artifact(path=path, kind=f"onnx-{label}", precision=label, files={path.name: path.stat().st_size},
                    runners=runners, input_dtype=np_dtype, info=info)


@EXPORTERS.register("fp16")
def export_fp16(model: nn.Module, stem: Path, ctx: ExportContext, opts: dict[str, Any]) -> Artifact:
    return _export_float(model, stem, ctx, torch.float16, "fp16", np.float16)


@EXPORTERS.register("fp64")
def export_fp64(model: nn.Module, stem: Path, ctx: ExportContext, opts: dict[str, Any]) -> Artifact:
    return _export_float(model, stem, ctx, torch.float64, "fp64", np.float64)
