"""Float ONNX artifacts: FP32 (the baseline deployment), FP16 and FP64 (accuracy measured in that dtype)."""

import copy
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepshrink.checkpoint import atomic_write_bytes
from deepshrink.export.base import EXPORTERS, Artifact, ExportContext
from deepshrink.export.onnx_graph import OnnxGraph
from deepshrink.export.runners import onnx_runners, ort_runner, torch_runner
from deepshrink.measure.latency import RunnerFactory


def export_onnx(model: nn.Module, path: Path, example: torch.Tensor, dtype: torch.dtype = torch.float32) -> Path:
    """ONNX with a dynamic batch axis, checked by onnx.checker before it is kept."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    model = copy.deepcopy(model).eval().to(dtype)  # the caller's model keeps its dtype
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but exports these graphs in ~0.2 s and compactly;
        # the dynamo exporter takes seconds per model and adds metadata bytes to every file.
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example.to(dtype),), str(tmp), dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17)
    onnx.checker.check_model(onnx.load(str(tmp)))
    os.replace(tmp, path)
    return path


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
