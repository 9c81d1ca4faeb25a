"""The integer graph of a full-integer TFLite model (ingest/tflite_file.py reads the flatbuffer), in the same
Graph/Node form the ONNX route produces, with TensorFlow Lite's arithmetic (`arith="fixed"`) so that the C
computes what TensorFlow Lite Micro computes, bit for bit.

TFLite tensors are N x H x W x C; a Graph's image tensors are described (C, H, W) and stored H x W x C, so
the network input keeps TFLM's byte order (`input_layout="hwc"`) and every other tensor's storage is already
TFLite's. Weights are rearranged once into the ONNX order the lowerers take (O x I x KH x KW).
"""

from collections.abc import Callable
from typing import Any

import numpy as np

from deepshrink.errors import UserError
from deepshrink.ingest.tflite_file import TfModel, TfOperator, TfTensor, same_pads
from deepshrink.mcu.fixed import INT8, activation_range
from deepshrink.mcu.graph import Graph, Node, QTensor
from deepshrink.registry import Registry

OPERATORS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "AVERAGE_POOL_2D", "MAX_POOL_2D",
             "RESHAPE", "SOFTMAX")


class _Reader:
    def __init__(self, model: TfModel) -> None:
        self.m = model
        self.source = model.source
        self.tensors: dict[str, QTensor] = {}
        self.nodes: list[Node] = []
        self.ordinals: dict[str, int] = {}

    def act(self, op: TfOperator, k: int) -> QTensor:
        i = op.inputs[k] if k < len(op.inputs) else -1
        if i < 0 or tensor_name(i) not in self.tensors:
            raise UserError(f"{self.source}: {op.op} (operator {op.index}) reads tensor {i}, which is not an int8 "
                            "activation computed before it")
        return self.tensors[tensor_name(i)]

    def const(self, op: TfOperator, k: int, what: str, dtype: str) -> TfTensor:
        t = self.m.tensors[op.inputs[k]] if k < len(op.inputs) and op.inputs[k] >= 0 else None
        if t is None or t.data is None:
            raise UserError(f"{self.source}: {op.op} (operator {op.index}) has no constant {what}")
        if t.dtype != dtype:
            raise UserError(f"{self.source}: {op.op} (operator {op.index}) has a {t.dtype} {what} ({t.name!r}); "
                            f"the microcontroller target takes {dtype}")
        return t

    def out(self, op: TfOperator, shape: tuple[int, ...]) -> QTensor:
        t = self.m.tensors[op.outputs[0]]
        q = qtensor(self.source, t, shape)
        self.tensors[q.name] = q
        return q

    def add(self, kind: str, op: TfOperator, inputs: list[QTensor], out: QTensor, **attrs: Any) -> None:
        label = LABELS.get(op.op, "")  # C layer names by kind and ordinal: conv1, dwconv1, add1
        self.ordinals[label] = self.ordinals.get(label, 0) + 1
        name = f"{label}{self.ordinals[label]}" if label else ""
        self.nodes.append(Node(kind, [t.name for t in inputs], out.name, attrs, name))


LABELS = {"CONV_2D": "conv", "DEPTHWISE_CONV_2D": "dwconv", "FULLY_CONNECTED": "fc", "ADD": "add",
          "AVERAGE_POOL_2D": "avgpool", "MAX_POOL_2D": "maxpool", "SOFTMAX": "softmax"}


def tensor_name(index: int) -> str:
    """The Graph's name of TFLite tensor `index` (its own names may repeat or be empty)."""
    return f"t{index}"


def qtensor(source: str, t: TfTensor, shape: tuple[int, ...] | None = None) -> QTensor:
    """An int8 activation: per-tensor scale and zero point; `shape` in the Graph's (C, H, W) or (N,) form."""
    if t.dtype != "int8":
        raise UserError(f"{source}: tensor {t.name!r} is {t.dtype}; the microcontroller target runs full-integer "
                        "int8 models (convert with full-integer quantization, int8 input and output)")
    if t.scale.size != 1 or t.zero_point.size != 1:
        raise UserError(f"{source}: activation {t.name!r} is not quantized per tensor")
    return QTensor(tensor_name(t.index), shape if shape is not None else image_shape(source, t), float(t.scale[0]),
                   int(t.zero_point[0]))


def image_shape(source: str, t: TfTensor) -> tuple[int, ...]:
    """(C, H, W) of a 1 x H x W x C tensor, (N,) of a 1 x N one."""
    dims = t.shape
    if len(dims) == 4 and dims[0] == 1:
        return (dims[3], dims[1], dims[2])
    if len(dims) == 2 and dims[0] == 1:
        return (dims[1],)
    raise UserError(f"{source}: tensor {t.name!r} has shape {list(dims)}; the target takes a batch of one, "
                    "1 x H x W x C or 1 x N")


Handler = Callable[[_Reader, TfOperator], None]
HANDLERS: Registry[Handler] = Registry("TFLite operator")


def _clamp(r: _Reader, op: TfOperator) -> tuple[int, int]:
    fused = str(op.options.get("fused_activation_function", "NONE"))
    if fused not in ("NONE", "RELU", "RELU6", "RELU_N1_TO_1"):
        raise UserError(f"{r.source}: {op.op} (operator {op.index}) with fused {fused} is not supported")
    t = r.m.tensors[op.outputs[0]]
    return activation_range(fused, float(t.scale[0]), int(t.zero_point[0])) if t.scale.size == 1 else INT8


def _pads(r: _Reader, op: TfOperator, size: tuple[int, int], kernel: tuple[int, int],
          strides: tuple[int, int]) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """ONNX-order pads (top, left, bottom, right) and the output size, as TFLite's ComputePaddingHeightWidth."""
    if any(int(op.options.get(k, 1)) != 1 for k in ("dilation_h_factor", "dilation_w_factor")):
        raise UserError(f"{r.source}: {op.op} (operator {op.index}) with dilation is not supported")
    return same_pads(size, kernel, strides, op.options.get("padding", "SAME") == "SAME")


def _strides(op: TfOperator) -> tuple[int, int]:
    return int(op.options.get("stride_h", 1)), int(op.options.get("stride_w", 1))


def _bias(r: _Reader, op: TfOperator, n: int) -> np.ndarray:
    if len(op.inputs) < 3 or op.inputs[2] < 0:
        return np.zeros(n, np.int32)
    b = r.const(op, 2, "bias", "int32").data
    assert b is not None
    if b.size != n:
        raise UserError(f"{r.source}: {op.op} (operator {op.index}) has {b.size} biases for {n} outputs")
    return b.reshape(-1).astype(np.int32)


def _weights(r: _Reader, op: TfOperator, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weights, float32 scales) of input 1, quantized per tensor or per channel along `axis`."""
    t = r.const(op, 1, "weight", "int8")
    assert t.data is not None
    if np.any(t.zero_point != 0):
        raise UserError(f"{r.source}: {op.op} (operator {op.index}) has asymmetric weights (zero point != 0)")
    if t.scale.size not in (1, t.shape[axis]) or (t.scale.size > 1 and t.quantized_dimension != axis):
        raise UserError(f"{r.source}: {op.op} (operator {op.index}) weights are quantized along axis "
                        f"{t.quantized_dimension}; expected per tensor or per output channel")
    return t.data, t.scale.astype(np.float32)


def _conv(r: _Reader, op: TfOperator, depthwise: bool) -> None:
    x = r.act(op, 0)
    w, scale = _weights(r, op, 3 if depthwise else 0)
    if depthwise:  # 1 x KH x KW x (C * M) -> (C * M) x 1 x KH x KW, group = C: output o reads channel o // M
        w = w.transpose(3, 0, 1, 2)
        group = x.shape[0]
        if w.shape[0] % group:
            raise UserError(f"{r.source}: DEPTHWISE_CONV_2D (operator {op.index}): {w.shape[0]} outputs for "
                            f"{group} channels")
    else:  # O x KH x KW x I -> O x I x KH x KW
        w = w.transpose(0, 3, 1, 2)
        group = 1
        if w.shape[1] != x.shape[0]:
            raise UserError(f"{r.source}: CONV_2D (operator {op.index}): {w.shape[1]}-channel weights on a "
                            f"{x.shape[0]}-channel input")
    strides = _strides(op)
    pads, (oh, ow) = _pads(r, op, (x.shape[1], x.shape[2]), (w.shape[2], w.shape[3]), strides)
    y = r.out(op, (w.shape[0], oh, ow))
    r.add("conv", op, [x], y, w=np.ascontiguousarray(w), w_scale=scale, bias=_bias(r, op, w.shape[0]),
          strides=strides, pads=pads, group=group, clamp=_clamp(r, op))


@HANDLERS.register("CONV_2D")
def _conv2d(r: _Reader, op: TfOperator) -> None:
    _conv(r, op, depthwise=False)


@HANDLERS.register("DEPTHWISE_CONV_2D")
def _depthwise(r: _Reader, op: TfOperator) -> None:
    _conv(r, op, depthwise=True)


@HANDLERS.register("FULLY_CONNECTED")
def _fc(r: _Reader, op: TfOperator) -> None:
    x = r.act(op, 0)
    w, scale = _weights(r, op, 0)
    if w.ndim != 2 or w.shape[1] != x.size or op.options.get("weights_format", "DEFAULT") != "DEFAULT":
        raise UserError(f"{r.source}: FULLY_CONNECTED (operator {op.index}) with weights {list(w.shape)} on "
                        f"{x.size} inputs is not supported")
    if len(x.shape) != 1:  # TFLite flattens its input (H x W x C order: the storage order)
        flat = QTensor(f"{x.name}_flat", (x.size,), x.scale, x.zp)
        r.tensors[flat.name] = flat
        r.nodes.append(Node("reshape", [x.name], flat.name, {"hwc_order": True}))
        x = flat
    y = r.out(op, (w.shape[0],))
    r.add("fc", op, [x], y, w=np.ascontiguousarray(w), w_scale=scale, bias=_bias(r, op, w.shape[0]),
          clamp=_clamp(r, op))


@HANDLERS.register("ADD")
def _add(r: _Reader, op: TfOperator) -> None:
    a, b = r.act(op, 0), r.act(op, 1)
    if a.shape != b.shape:
        raise UserError(f"{r.source}: ADD (operator {op.index}) with broadcasting ({list(a.shape)} + "
                        f"{list(b.shape)}) is not supported")
    y = r.out(op, a.shape)
    r.add("add", op, [a, b], y, clamp=_clamp(r, op))


def _pool(r: _Reader, op: TfOperator, kind: str) -> None:
    x = r.act(op, 0)
    if len(x.shape) != 3:
        raise UserError(f"{r.source}: {op.op} (operator {op.index}) on a {len(x.shape)}-D tensor")
    kernel = (int(op.options.get("filter_height", 1)), int(op.options.get("filter_width", 1)))
    strides = _strides(op)
    pads, (oh, ow) = _pads(r, op, (x.shape[1], x.shape[2]), kernel, strides)
    y = r.out(op, (x.shape[0], oh, ow))
    if (y.scale, y.zp) != (x.scale, x.zp):
        raise UserError(f"{r.source}: {op.op} (operator {op.index}) changes the quantization; TFLite's int8 "
                        "pooling keeps it")
    clamp = _clamp(r, op)
    if kind == "maxpool" and clamp != INT8:
        raise UserError(f"{r.source}: MAX_POOL_2D (operator {op.index}) with a fused activation that clamps")
    r.add(kind, op, [x], y, kernel=kernel, strides=strides, pads=pads, count_include_pad=0, clamp=clamp)


@HANDLERS.register("AVERAGE_POOL_2D")
def _avgpool(r: _Reader, op: TfOperator) -> None:
    _pool(r, op, "avgpool_tfl")


@HANDLERS.register("MAX_POOL_2D")
def _maxpool(r: _Reader, op: TfOperator) -> None:
    _pool(r, op, "maxpool")


@HANDLERS.register("RESHAPE")
def _reshape(r: _Reader, op: TfOperator) -> None:
    x = r.act(op, 0)
    t = r.m.tensors[op.outputs[0]]
    shape = image_shape(r.source, t)
    if int(np.prod(shape)) != x.size:
        raise UserError(f"{r.source}: RESHAPE (operator {op.index}) changes the element count")
    if len(shape) == 3 and shape != x.shape:
        raise UserError(f"{r.source}: RESHAPE (operator {op.index}) between images {list(t.shape)} is not "
                        "supported")
    y = r.out(op, shape)
    if (y.scale, y.zp) != (x.scale, x.zp):
        raise UserError(f"{r.source}: RESHAPE (operator {op.index}) changes the quantization")
    r.add("reshape", op, [x], y, hwc_order=True)


@HANDLERS.register("SOFTMAX")
def _softmax(r: _Reader, op: TfOperator) -> None:
    x = r.act(op, 0)
    y = r.out(op, x.shape)
    if len(x.shape) != 1:
        raise UserError(f"{r.source}: SOFTMAX (operator {op.index}) over a {len(x.shape)}-D tensor")
    if (abs(y.scale - 1 / 256) > 1e-12) or y.zp != -128:
        raise UserError(f"{r.source}: SOFTMAX (operator {op.index}) output must be quantized with scale 1/256 and "
                        "zero point -128 (as TFLite requires)")
    r.add("softmax", op, [x], y, beta=float(op.options.get("beta", 1.0)))


def read_tflite_graph(model: TfModel) -> Graph:
    """The integer graph of a one-input, one-output full-integer TFLite model."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UserError(f"{model.source}: {len(model.inputs)} inputs and {len(model.outputs)} outputs; the "
                        "microcontroller target takes one of each")
    r = _Reader(model)
    inp = qtensor(model.source, model.tensors[model.inputs[0]])
    r.tensors[inp.name] = inp
    for op in model.operators:
        if op.op not in HANDLERS:
            raise UserError(f"{model.source}: operator {op.op} (operator {op.index}) is not supported by the "
                            f"microcontroller target (supported: {', '.join(OPERATORS)})")
        if len(op.outputs) != 1:
            raise UserError(f"{model.source}: {op.op} (operator {op.index}) has {len(op.outputs)} outputs")
        HANDLERS.get(op.op)(r, op)
    out = tensor_name(model.outputs[0])
    if out not in r.tensors or out == inp.name:
        raise UserError(f"{model.source}: its output is not computed from its input by the supported operators")
    return Graph(inp, inp.shape, out, r.tensors, r.nodes, model.source, offset=0, arith="fixed",
                 input_layout="hwc")
