"""Deployable artifacts. A `Deployment` names how a compressed model ships; an exporter registered
for that name writes the files and says how each runtime runs them.

The float exporter lives here; techniques register their own (INT8 QDQ, FP16, sparse, ...).
"""

import copy
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepshrink.registry import Registry

# A runner maps a float32 (or float16) input batch to logits; one per (runtime, threads, device).
Runner = Callable[[np.ndarray], np.ndarray]
RunnerFactory = Callable[[int, str], Runner]  # (threads, device) -> runner


@dataclass
class Artifact:
    """The files a variant ships and how to run them."""

    path: Path  # primary deployable file: its bytes are the variant's `size_bytes`
    kind: str
    precision: str
    files: dict[str, int] = field(default_factory=dict)  # every file written -> bytes
    runners: dict[str, RunnerFactory] = field(default_factory=dict)  # runtime -> factory
    input_dtype: Any = np.float32
    info: dict[str, Any] = field(default_factory=dict)  # e.g. the chosen "never slower" deployment

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size


@dataclass(frozen=True)
class Deployment:
    """How a model is meant to ship: the exporter's name plus its options."""

    name: str = "fp32"
    options: tuple[tuple[str, Any], ...] = ()

    def opts(self) -> dict[str, Any]:
        return dict(self.options)


@dataclass
class ExportContext:
    """What exporters may need beyond the model: an example input and calibration images."""

    example: torch.Tensor  # (1, C, H, W) float32
    calib: torch.Tensor | None = None


Exporter = Callable[[nn.Module, Path, ExportContext, dict[str, Any]], Artifact]
EXPORTERS: Registry[Exporter] = Registry("deployment")


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


def ort_runner(path: Path, config_entries: dict[str, str] | None = None) -> RunnerFactory:
    """ONNX Runtime runner; `config_entries` are session config keys (e.g. QDQ fusion switches)."""
    def make(threads: int, device: str) -> Runner:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        for key, value in (config_entries or {}).items():
            opts.add_session_config_entry(key, value)
        providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        sess = ort.InferenceSession(str(path), opts, providers=providers)
        name = sess.get_inputs()[0].name

        def run(x: np.ndarray) -> np.ndarray:
            return np.asarray(sess.run(None, {name: x})[0])

        return run

    return make


def torch_runner(model: nn.Module, dtype: torch.dtype = torch.float32) -> RunnerFactory:
    def make(threads: int, device: str) -> Runner:
        # The caller's model stays put: convert a copy when a conversion is needed (CSR kernels
        # cannot be deep-copied, and hold no parameters to convert).
        moves = any(p.dtype != dtype or p.device.type != device for p in model.parameters())
        m = (copy.deepcopy(model) if moves else model).eval().to(device=device, dtype=dtype)

        @torch.inference_mode()
        def run(x: np.ndarray) -> np.ndarray:
            out = m(torch.from_numpy(x).to(device))
            if device == "cuda":
                torch.cuda.synchronize()
            return out.float().cpu().numpy()

        return run

    return make


@EXPORTERS.register("fp32")
def export_fp32(model: nn.Module, stem: Path, ctx: ExportContext, opts: dict[str, Any]) -> Artifact:
    onnx_path = export_onnx(model, stem.with_suffix(".onnx"), ctx.example)
    return Artifact(path=onnx_path, kind="onnx-fp32", precision="fp32",
                    files={onnx_path.name: onnx_path.stat().st_size},
                    runners={"onnxruntime": ort_runner(onnx_path), "torch": torch_runner(model)})


def export(model: nn.Module, deployment: Deployment, stem: Path, ctx: ExportContext) -> Artifact:
    return EXPORTERS.get(deployment.name)(model, stem, ctx, deployment.opts())
