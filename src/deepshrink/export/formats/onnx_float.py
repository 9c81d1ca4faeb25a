"""The float ONNX writer: a PyTorch module exported with a dynamic batch axis (FP32, FP16 or FP64)."""

import copy
import os
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn


def export_onnx(model: nn.Module, path: Path, example: torch.Tensor, dtype: torch.dtype = torch.float32) -> Path:
    """ONNX with a dynamic batch axis, checked by onnx.checker before it is kept."""
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
