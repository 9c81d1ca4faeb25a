"""How each runtime runs an exported model: a factory (threads, device) -> runner (batch -> logits). ONNX
Runtime (the reference) and OpenVINO run ONNX files, PyTorch the model or its integer twin, the sparse runtime
a pruned Linear chain on its non-zeros; weight_decode.py and conv_pool.py rewrite an ONNX graph at load."""

from pathlib import Path

from deepshrink.export.runtimes.onnxruntime import OrtRunner, ort_runner
from deepshrink.export.runtimes.openvino import OvRunner, has_openvino, ov_compiles
from deepshrink.export.runtimes.pytorch import torch_int8_runner, torch_runner
from deepshrink.measure.latency import RunnerFactory

__all__ = ["OrtRunner", "OvRunner", "has_openvino", "onnx_runners", "ort_runner", "ov_compiles", "torch_int8_runner",
           "torch_runner"]


def onnx_runners(path: Path) -> dict[str, RunnerFactory]:
    """Every runtime of one ONNX file: ONNX Runtime, the reference, and OpenVINO where it is installed
    and takes the file."""
    runners: dict[str, RunnerFactory] = {"onnxruntime": ort_runner(path)}
    if has_openvino() and ov_compiles(path):
        runners["openvino"] = OvRunner(path)
    return runners
