"""What the generated C is measured against: the test set (raw pixels and normalized images), ONNX
Runtime's own input quantization and integer logits, and the host build loaded through ctypes."""

import ctypes
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deepshrink.data import DataSplits, canonical_name, load_arrays, splits_from_arrays
from deepshrink.errors import UserError
from deepshrink.mcu.graph import Graph
from deepshrink.measure.latency import Runner, RunnerFactory


@dataclass
class EvalData:
    splits: DataSplits
    pixels: np.ndarray  # the raw uint8 test images, N x C x H x W, in the order of splits.test_x


def load_eval_data(name: str, data_dir: Path | None) -> EvalData:
    arrays, origin = load_arrays(name, data_dir)
    splits = splits_from_arrays(arrays, canonical_name(name), origin, allow_empty_classes=True)  # trained on it
    return EvalData(splits, np.ascontiguousarray(arrays["test_x"]).astype(np.uint8, copy=False))


def eval_data(splits: DataSplits) -> EvalData:
    """A study's data as the target measures it: the raw pixels recovered from the normalized test images
    ((p / 255 - mean) / std in float32 inverts to p within 1e-4, so rounding gives p back exactly)."""
    mean = np.asarray(splits.mean, np.float32)[None, :, None, None]
    std = np.asarray(splits.std, np.float32)[None, :, None, None]
    pixels = np.rint((splits.test_x.numpy() * std + mean) * 255.0)
    return EvalData(splits, np.clip(pixels, 0, 255).astype(np.uint8))


def _quantize_model(shape: tuple[int, ...], scale: float, zp: int, offset: int) -> onnx.ModelProto:
    """One QuantizeLinear node: ONNX Runtime's own rounding decides every input value."""
    dtype = TensorProto.UINT8 if offset else TensorProto.INT8
    zp_arr = np.array(zp + offset, np.uint8 if offset else np.int8)
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])], "q",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", *shape])],
        [helper.make_tensor_value_info("y", dtype, ["n", *shape])],
        [numpy_helper.from_array(np.array(scale, np.float32), "s"), numpy_helper.from_array(zp_arr, "z")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0])


def ort_quantize(g: Graph, x: np.ndarray) -> np.ndarray:
    """Normalized float images -> the int8 input ds_infer takes, computed by ONNX Runtime."""
    shape = tuple(x.shape[1:])
    q = _ort(_quantize_model(shape, g.input.scale, g.input.zp, g.offset), x.astype(np.float32))
    return (q.astype(np.int16) - g.offset).astype(np.int8)


def pixel_lut(g: Graph, mean: list[float], std: list[float]) -> np.ndarray:
    """(C, 256) int8: each raw pixel value's network input per channel, normalized exactly as the data
    pipeline normalizes (float32 (p / 255 - mean) / std) and quantized by ONNX Runtime."""
    c = g.image_shape[0] if len(g.image_shape) == 3 else 1
    if len(mean) != c or len(std) != c:
        raise UserError(f"{g.source}: normalization has {len(mean)} means for {c} input channels")
    p = np.arange(256, dtype=np.uint8).astype(np.float32) / 255.0
    norm = (p[None, :] - np.asarray(mean, np.float32)[:, None]) / np.asarray(std, np.float32)[:, None]
    return ort_quantize(g, norm.reshape(c, 256, 1, 1).transpose(1, 0, 2, 3)).reshape(256, c).T.copy()


def integer_logits(model: onnx.ModelProto, x: np.ndarray, offset: int) -> np.ndarray:
    """ONNX Runtime's int8 logits of the QDQ model: its final DequantizeLinear dropped."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    last = m.graph.node[-1]
    if last.op_type != "DequantizeLinear" or last.output[0] != m.graph.output[0].name:
        raise UserError("the model's logits are not dequantized by its last node")
    del m.graph.node[-1]
    out = m.graph.output[0]
    out.name = last.input[0]
    out.type.tensor_type.elem_type = TensorProto.UINT8 if offset else TensorProto.INT8
    return (_ort(m, x).astype(np.int16) - offset).astype(np.int8)


class HostLibrary:
    """The host build through ctypes: whole batches per call."""

    def __init__(self, lib: Path, classes: int, size: int) -> None:
        self.lib = ctypes.CDLL(str(lib))
        self.classes, self.size = classes, size

    def _call(self, fn: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(x.reshape(len(x), self.size))
        logits = np.zeros((len(x), self.classes), np.int8)
        classes = np.zeros(len(x), np.int32)
        getattr(self.lib, fn)(x.ctypes.data_as(ctypes.c_void_p), ctypes.c_int32(len(x)),
                              logits.ctypes.data_as(ctypes.c_void_p), classes.ctypes.data_as(ctypes.c_void_p))
        return logits, classes

    def pixels(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._call("ds_host_pixels", x)

    def quantized(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._call("ds_host_quantized", x)

    def arena(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """As `quantized`, through the entry point that takes the caller's arena."""
        return self._call("ds_host_arena", x)

    def runner(self) -> RunnerFactory:
        """The `c` runtime: normalized float images in (quantized in C, as ONNX Runtime does), logits out."""
        def make(threads: int, device: str) -> Runner:
            fn = self.lib.ds_host_float

            def run(x: np.ndarray) -> np.ndarray:
                x = np.ascontiguousarray(x, np.float32)
                logits = np.zeros((len(x), self.classes), np.int8)
                fn(x.ctypes.data_as(ctypes.c_void_p), ctypes.c_int32(len(x)), logits.ctypes.data_as(ctypes.c_void_p))
                return logits.astype(np.float32)

            return run

        return make
