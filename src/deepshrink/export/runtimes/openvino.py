"""OpenVINO's CPU runtime, a second runtime of every ONNX file deepshrink ships (optional extra
`deepshrink[openvino]`): its int8 kernels run a QDQ file's integer layers where ONNX Runtime computes them
slower."""

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepshrink.measure.latency import Runner


@dataclass
class OvRunner:
    """OpenVINO's CPU runtime of one ONNX file, a second runtime of the same file as shipped. It runs a QDQ
    file's integer layers as int8 kernels (AMX/VNNI where the CPU has them): the full-INT8 resnet8 here,
    1 thread, 4.7-5.1x ONNX Runtime's FP32 at batch 256 and 2.0-2.7x at batch 1 (the host's load moves
    it), where ONNX Runtime's own INT8 gave 1.5x. Float layers are held to f32 (`INFERENCE_PRECISION_HINT`):
    OpenVINO's default on a CPU with bf16/fp16 units computes an FP32 model in bf16, which would be another
    model than the one measured.
    One compiled model per input shape, reading a buffer bound to it once: on that resnet8 at batch 1, a
    static shape took a call from 89 to 74 µs, and the bound buffer instead of an input dict 84 to 71.
    The buffer starts on a 64-byte line (`aligned_empty`): numpy's 16-byte alignment made one compile of
    a pruned INT8 resnet8 run batch 1 in 49 µs and the next in 67-80 (EPYC, 1 thread), as it fell."""

    path: Path

    def __call__(self, threads: int, device: str) -> Runner:
        if device != "cpu":
            raise ValueError(f"openvino runs on the CPU here, not {device}")
        import openvino as ov

        core = _ov_core()
        config: dict[str, Any] = {"NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
                                  "ENABLE_CPU_PINNING": False}  # the caller pins the timing thread (latency.pinned)
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        compiled: dict[tuple[int, ...], tuple[Any, np.ndarray, Any]] = {}

        def load(shape: tuple[int, ...]) -> tuple[Any, np.ndarray, Any]:
            model = core.read_model(str(self.path))
            model.reshape(list(shape))
            req = core.compile_model(model, "CPU", config).create_infer_request()
            buffer = aligned_empty(shape)  # the request reads its input here: no tensor made per call
            req.set_input_tensor(ov.Tensor(buffer, shared_memory=True))
            return req, buffer, req.get_output_tensor(0)

        def run(x: np.ndarray) -> np.ndarray:
            req, buffer, out = compiled.get(x.shape) or compiled.setdefault(x.shape, load(x.shape))
            np.copyto(buffer, x, casting="same_kind")
            req.infer()
            return np.array(out.data)  # a copy: the request reuses its output buffer

        return run


def aligned_empty(shape: tuple[int, ...], dtype: Any = np.float32, align: int = 64) -> np.ndarray:
    """An uninitialised array whose data starts on an `align`-byte boundary (a cache line, AVX-512's
    width): a runtime reading it in place takes its aligned loads, whatever numpy's allocator returned."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(size + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + size].view(dtype).reshape(shape)


@functools.cache
def _ov_core() -> Any:
    import openvino as ov

    return ov.Core()


@functools.cache
def has_openvino() -> bool:
    """OpenVINO is an optional runtime (`pip install deepshrink[openvino]`); DEEPSHRINK_NO_OPENVINO=1 leaves it out."""
    if os.environ.get("DEEPSHRINK_NO_OPENVINO"):
        return False
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def ov_compiles(path: Path) -> bool:
    """Whether OpenVINO takes the file (read, batch 1, compiled): an op or dtype it lacks leaves it out
    rather than failing the artifact's timing."""
    try:
        core = _ov_core()
        model = core.read_model(str(path))
        if len(model.inputs) != 1:
            return False
        shape = model.input(0).get_partial_shape()
        if shape.rank.is_dynamic or any(d.is_dynamic for d in list(shape)[1:]):
            return False
        model.reshape([1, *(d.get_length() for d in list(shape)[1:])])
        core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    except Exception:  # openvino raises its own (RuntimeError subclasses, OSError) for files it cannot take
        return False
    return True
