"""The integer graph a microcontroller runs, read from an INT8 QDQ ONNX model as ONNX Runtime runs it.

ONNX Runtime fuses a QDQ graph (DequantizeLinear -> Conv -> QuantizeLinear, ...) into integer operators
(QLinearConv, QGemm, QLinearAdd, QLinearGlobalAveragePool, ...) when it loads it. We read that fused graph
(saved at ORT_ENABLE_EXTENDED, before any CPU-specific layout change) rather than matching QDQ patterns
ourselves: each fused operator is exactly the integer arithmetic whose results the C must reproduce, and
whatever ONNX Runtime left in float is named as unsupported instead of being silently approximated, but
for one island the C reproduces exactly: DequantizeLinear -> MaxPool -> QuantizeLinear (a max pooling the
quantizer gave an output range of its own), read as a max pooling that requantizes.

Activations become int8 here whatever ONNX Runtime used: a uint8 tensor's values and zero point both move
down by 128, which changes no result (every kernel works on value - zero point) and lets one set of signed
SIMD kernels serve both.
"""

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from deepshrink.errors import UserError
from deepshrink.registry import Registry


@dataclass
class QTensor:
    """An int8 activation of one image: shape (C, H, W) or (N,), its scale and int8 zero point."""

    name: str
    shape: tuple[int, ...]
    scale: float
    zp: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class Node:
    """One integer operator: `kind` names its kernel; `attrs` hold its constants and geometry."""

    kind: str
    inputs: list[str]
    output: str
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""  # the ONNX node's name (often empty), which names its layer in the C


@dataclass
class Graph:
    input: QTensor  # the quantized input, maybe flattened (its storage is C x H x W order either way)
    image_shape: tuple[int, ...]  # the network input's (C, H, W) or (N,)
    output: str
    tensors: dict[str, QTensor]
    nodes: list[Node]
    source: str
    offset: int = 128  # ONNX Runtime's activation value = ours + offset (uint8: 128)
    arith: str = "float"  # requantization: "float" (ONNX Runtime's float32) or "fixed" (TFLite's, mcu/fixed.py)
    optimize: str = "speed"  # "size": no kernels specialized per layer shape (lower_weighted.py, ds_conv_rb)
    input_layout: str = "chw"  # how the caller stores an image input: C x H x W (ONNX) or H x W x C (TFLite)


@dataclass
class _Reader:
    source: str
    consts: dict[str, np.ndarray]
    tensors: dict[str, QTensor] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    float_input: str = ""
    float_views: set[str] = field(default_factory=set)  # the float input and its reshapes, before quantization
    output: str = ""
    # float tensors of an island ONNX Runtime runs in float between integer ones (DequantizeLinear -> MaxPool
    # -> QuantizeLinear): name -> (the integer tensor dequantized, the max pooling's geometry or None)
    islands: dict[str, tuple[QTensor, dict[str, Any] | None]] = field(default_factory=dict)
    offset: int | None = None  # 128 when ONNX Runtime's activations are uint8, 0 when int8

    def const(self, node: onnx.NodeProto, i: int, what: str) -> np.ndarray:
        if i >= len(node.input) or not node.input[i]:
            raise UserError(f"{self.source}: {node.op_type} has no {what}")
        name = node.input[i]
        if name not in self.consts:
            raise UserError(f"{self.source}: {node.op_type}'s {what} ({name!r}) is computed at run time; the "
                            "microcontroller target needs it constant")
        return self.consts[name]

    def act(self, node: onnx.NodeProto, i: int) -> QTensor:
        name = node.input[i]
        if name not in self.tensors:
            raise UserError(f"{self.source}: {node.op_type} reads {name!r}, which is not an integer tensor "
                            "(ONNX Runtime computes it in float)")
        return self.tensors[name]

    def qparams(self, node: onnx.NodeProto, i: int, what: str) -> tuple[float, int]:
        """(scale, int8 zero point) from the scale/zero-point inputs at i, i+1."""
        scale = self.const(node, i, f"{what} scale")
        zp = self.const(node, i + 1, f"{what} zero point") if i + 1 < len(node.input) and node.input[i + 1] \
            else np.zeros((), np.uint8)
        if scale.size != 1 or zp.size != 1:
            raise UserError(f"{self.source}: {node.op_type} has a per-channel {what} scale; activations must be "
                            "quantized per tensor")
        offset = 128 if zp.dtype == np.uint8 else 0
        if self.offset is not None and offset != self.offset:
            raise UserError(f"{self.source}: activations mix uint8 and int8; quantize them all one way")
        self.offset = offset
        return float(scale.reshape(())), _int8_zero_point(zp, self.source)

    def add(self, kind: str, node: onnx.NodeProto, inputs: list[QTensor], out: QTensor, **attrs: Any) -> None:
        self.tensors[out.name] = out
        self.nodes.append(Node(kind, [t.name for t in inputs], out.name, attrs, node.name))


def _int8_zero_point(zp: np.ndarray, source: str) -> int:
    if zp.dtype == np.uint8:
        return int(zp.reshape(())) - 128
    if zp.dtype == np.int8:
        return int(zp.reshape(()))
    raise UserError(f"{source}: activation zero point of type {zp.dtype}; expected uint8 or int8")


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


OpReader = Callable[[_Reader, onnx.NodeProto], None]
READERS: Registry[OpReader] = Registry("operator")


def fused_model(model: onnx.ModelProto, source: str) -> onnx.ModelProto:
    """The graph ONNX Runtime executes for `model`, after its QDQ fusions."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(Path(tmp) / "fused.onnx")
        opts.log_severity_level = 4
        try:
            ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ONNX Runtime refused the graph: a malformed or tampered file
            raise UserError(f"{source}: ONNX Runtime cannot load it ({type(e).__name__})") from None
        return onnx.load(str(Path(tmp) / "fused.onnx"))


def read_graph(model: onnx.ModelProto, source: str) -> Graph:
    """The integer graph of an INT8 QDQ classifier (one image input, one logits output)."""
    fused = fused_model(model, source)
    consts = {t.name: numpy_helper.to_array(t) for t in fused.graph.initializer}
    inputs = [i for i in fused.graph.input if i.name not in consts]
    if len(inputs) != 1 or len(fused.graph.output) != 1:
        raise UserError(f"{source}: expected one input and one output, found {len(inputs)} and "
                        f"{len(fused.graph.output)}")
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) not in (2, 4) or any(d <= 0 for d in dims[1:]):
        raise UserError(f"{source}: input shape {dims}; expected (batch, C, H, W) or (batch, N) with fixed sizes")
    if not any(n.op_type == "QuantizeLinear" for n in fused.graph.node):
        raise UserError(f"{source}: a float model (no QuantizeLinear); the microcontroller target runs INT8 models: "
                        "quantize it first (--step quantize:precision=int8)")
    r = _Reader(source, consts, float_input=inputs[0].name)
    r.output = fused.graph.output[0].name
    r.tensors[r.float_input] = QTensor(r.float_input, tuple(dims[1:]), 0.0, 0)  # float: scale 0 until quantized
    r.float_views.add(r.float_input)
    for node in fused.graph.node:
        if node.op_type not in READERS:
            raise UserError(f"{source}: operator {node.op_type} (node {node.name or node.output[0]!r}) is not "
                            f"supported by the microcontroller target (supported: {', '.join(READERS)})")
        READERS.get(node.op_type)(r, node)
    if r.output not in r.tensors or not r.nodes or r.nodes[0].kind != "quantize":
        raise UserError(f"{source}: its output is not an integer tensor dequantized at the end (the logits must "
                        "be quantized, e.g. by quantize:precision=int8)")
    first = r.tensors[r.nodes[0].output]
    tensors = {k: v for k, v in r.tensors.items() if k not in r.float_views}
    return Graph(first, tuple(dims[1:]), r.output, tensors, r.nodes[1:], source, r.offset or 0)


@READERS.register("QuantizeLinear")
def _quantize(r: _Reader, node: onnx.NodeProto) -> None:
    if node.input[0] in r.islands:
        _island(r, node)
        return
    if node.input[0] not in r.float_views or r.nodes:
        raise UserError(f"{r.source}: QuantizeLinear of {node.input[0]!r} inside the graph: part of it runs in "
                        "float in ONNX Runtime")
    scale, zp = r.qparams(node, 1, "input")
    src = r.tensors[node.input[0]]
    r.add("quantize", node, [src], QTensor(node.output[0], src.shape, scale, zp))


def _island(r: _Reader, node: onnx.NodeProto) -> None:
    """The end of a float island: DequantizeLinear -> MaxPool -> QuantizeLinear with other parameters (the
    quantizer gave the pooling a range of its own), read as one max pooling that requantizes what it takes
    exactly as ONNX Runtime's float operators compute it (kernels.c.j2, ds_maxpoolq)."""
    src, geo = r.islands[node.input[0]]
    if geo is None:
        raise UserError(f"{r.source}: {node.input[0]!r} is dequantized and quantized again with nothing between")
    scale, zp = r.qparams(node, 1, "output")
    r.add("maxpool", node, [src], QTensor(node.output[0], geo["out"], scale, zp),
          **{k: v for k, v in geo.items() if k != "out"})


@READERS.register("DequantizeLinear")
def _dequantize(r: _Reader, node: onnx.NodeProto) -> None:
    x = r.act(node, 0)
    scale, zp = r.qparams(node, 1, "output")
    if (scale, zp) != (x.scale, x.zp):
        raise UserError(f"{r.source}: {node.input[0]!r} is dequantized with other parameters than it was quantized")
    if node.output[0] != r.output:  # the start of a float island; what reads it must be one (else refused)
        r.islands[node.output[0]] = (x, None)
        return
    r.output = x.name


def _weights(r: _Reader, node: onnx.NodeProto, i: int) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weights, per-output-channel float32 scales) at inputs i (weights), i+1 (scale), i+2 (zp)."""
    w = r.const(node, i, "weight")
    if w.dtype != np.int8:
        raise UserError(f"{r.source}: {node.op_type} has {w.dtype} weights; the target runs int8 weights")
    zp = r.const(node, i + 2, "weight zero point") if i + 2 < len(node.input) and node.input[i + 2] else None
    if zp is not None and np.any(zp != 0):
        raise UserError(f"{r.source}: {node.op_type} has asymmetric weights (zero point != 0); quantize weights "
                        "symmetrically")
    scale = r.const(node, i + 1, "weight scale").astype(np.float32).reshape(-1)
    return w, scale


def _bias(r: _Reader, node: onnx.NodeProto, i: int, n: int) -> np.ndarray:
    if i < len(node.input) and node.input[i]:
        b = r.const(node, i, "bias")
        if b.dtype != np.int32 or b.size != n:
            raise UserError(f"{r.source}: {node.op_type} bias of type {b.dtype} and size {b.size}; expected {n} int32")
        return b.reshape(-1)
    return np.zeros(n, np.int32)


@READERS.register("QLinearConv")
def _conv(r: _Reader, node: onnx.NodeProto) -> None:
    x = r.act(node, 0)
    w, w_scale = _weights(r, node, 3)
    y_scale, y_zp = r.qparams(node, 6, "output")
    a = _attrs(node)
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or w.ndim != 4 or len(x.shape) != 3:
        raise UserError(f"{r.source}: QLinearConv needs 2-D convolutions with explicit pads (auto_pad unsupported)")
    if any(d != 1 for d in a.get("dilations", [1, 1])):
        raise UserError(f"{r.source}: QLinearConv with dilations {a['dilations']} is not supported (1 only)")
    kh, kw = w.shape[2:]
    pads = list(a.get("pads", [0, 0, 0, 0]))
    sh, sw = a.get("strides", [1, 1])
    _, h, wd = x.shape
    oh, ow = (h + pads[0] + pads[2] - kh) // sh + 1, (wd + pads[1] + pads[3] - kw) // sw + 1
    y = QTensor(node.output[0], (w.shape[0], oh, ow), y_scale, y_zp)
    r.add("conv", node, [x], y, w=w, w_scale=w_scale, bias=_bias(r, node, 8, w.shape[0]), strides=(sh, sw),
          pads=tuple(pads), group=int(a.get("group", 1)))


@READERS.register("QGemm")
def _gemm(r: _Reader, node: onnx.NodeProto) -> None:
    x = r.act(node, 0)
    w, w_scale = _weights(r, node, 3)
    a = _attrs(node)
    if a.get("transA", 0) or float(a.get("alpha", 1.0)) != 1.0 or len(node.input) < 9:
        raise UserError(f"{r.source}: QGemm with transA, alpha != 1 or a float output is not supported")
    w = w if a.get("transB", 0) else w.T
    y_scale, y_zp = r.qparams(node, 7, "output")
    r.add("fc", node, [x], QTensor(node.output[0], (w.shape[0],), y_scale, y_zp), w=np.ascontiguousarray(w),
          w_scale=w_scale, bias=_bias(r, node, 6, w.shape[0]))


@READERS.register("QLinearMatMul")
def _matmul(r: _Reader, node: onnx.NodeProto) -> None:
    x = r.act(node, 0)
    w, w_scale = _weights(r, node, 3)
    if w.ndim != 2:
        raise UserError(f"{r.source}: QLinearMatMul with a {w.ndim}-D weight is not supported")
    y_scale, y_zp = r.qparams(node, 6, "output")
    r.add("fc", node, [x], QTensor(node.output[0], (w.shape[1],), y_scale, y_zp), w=np.ascontiguousarray(w.T),
          w_scale=w_scale, bias=np.zeros(w.shape[1], np.int32))


@READERS.register("QLinearAdd")
def _add(r: _Reader, node: onnx.NodeProto) -> None:
    a, b = r.act(node, 0), r.act(node, 3)
    if a.shape != b.shape:
        raise UserError(f"{r.source}: QLinearAdd with broadcasting ({a.shape} + {b.shape}) is not supported")
    y_scale, y_zp = r.qparams(node, 6, "output")
    r.add("add", node, [a, b], QTensor(node.output[0], a.shape, y_scale, y_zp))


@READERS.register("QLinearGlobalAveragePool")
def _gavgpool(r: _Reader, node: onnx.NodeProto) -> None:
    x = r.act(node, 0)
    if _attrs(node).get("channels_last", 0):
        raise UserError(f"{r.source}: QLinearGlobalAveragePool with channels_last is not supported")
    y_scale, y_zp = r.qparams(node, 3, "output")
    r.add("gavgpool", node, [x], QTensor(node.output[0], (x.shape[0], 1, 1), y_scale, y_zp))


def _pool_geometry(r: _Reader, node: onnx.NodeProto, x: QTensor) -> dict[str, Any]:
    a = _attrs(node)
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or a.get("ceil_mode", 0) or \
            any(d != 1 for d in a.get("dilations", [1, 1])) or len(x.shape) != 3:
        raise UserError(f"{r.source}: {node.op_type} with auto_pad, ceil_mode or dilations is not supported")
    kh, kw = a["kernel_shape"]
    sh, sw = a.get("strides", [1, 1])
    pads = tuple(a.get("pads", [0, 0, 0, 0]))
    c, h, w = x.shape
    out = (c, (h + pads[0] + pads[2] - kh) // sh + 1, (w + pads[1] + pads[3] - kw) // sw + 1)
    return {"kernel": (kh, kw), "strides": (sh, sw), "pads": pads, "out": out,
            "count_include_pad": int(a.get("count_include_pad", 0))}


@READERS.register("MaxPool")
def _maxpool(r: _Reader, node: onnx.NodeProto) -> None:
    if len(node.output) > 1 and node.output[1]:
        raise UserError(f"{r.source}: MaxPool with an indices output is not supported")
    island = r.islands.get(node.input[0])
    if island is not None and island[1] is None:  # a max pooling in float, between integer tensors
        r.islands[node.output[0]] = (island[0], _pool_geometry(r, node, island[0]))
        return
    x = r.act(node, 0)
    geo = _pool_geometry(r, node, x)
    r.add("maxpool", node, [x], QTensor(node.output[0], geo.pop("out"), x.scale, x.zp), **geo)


@READERS.register("QLinearAveragePool")
def _avgpool(r: _Reader, node: onnx.NodeProto) -> None:
    x = r.act(node, 0)
    if _attrs(node).get("channels_last", 0):
        raise UserError(f"{r.source}: QLinearAveragePool with channels_last is not supported")
    geo = _pool_geometry(r, node, x)
    y_scale, y_zp = r.qparams(node, 3, "output")
    r.add("avgpool", node, [x], QTensor(node.output[0], geo.pop("out"), y_scale, y_zp), **geo)


def _reshape_to(r: _Reader, node: onnx.NodeProto, shape: tuple[int, ...]) -> None:
    x = r.act(node, 0)
    if int(np.prod(shape)) != x.size:
        raise UserError(f"{r.source}: {node.op_type} from {x.shape} to {shape} changes the element count")
    if node.input[0] in r.float_views:  # a flatten of the float input: the C input is that same memory
        r.tensors[node.output[0]] = QTensor(node.output[0], shape, 0.0, 0)
        r.float_views.add(node.output[0])
        return
    r.add("reshape", node, [x], QTensor(node.output[0], shape, x.scale, x.zp))


@READERS.register("Flatten")
def _flatten(r: _Reader, node: onnx.NodeProto) -> None:
    if _attrs(node).get("axis", 1) != 1:
        raise UserError(f"{r.source}: Flatten with axis != 1 is not supported")
    _reshape_to(r, node, (r.act(node, 0).size,))


@READERS.register("Reshape")
def _reshape(r: _Reader, node: onnx.NodeProto) -> None:
    shape = [int(d) for d in r.const(node, 1, "shape")]
    x = r.act(node, 0)
    if len(shape) < 2 or shape[0] not in (0, -1, 1):
        raise UserError(f"{r.source}: Reshape to {shape} (the batch axis must stay first)")
    rest = [x.shape[i] if d == 0 and i < len(x.shape) else d for i, d in enumerate(shape[1:])]
    if rest.count(-1) == 1:
        rest[rest.index(-1)] = x.size // max(int(np.prod([d for d in rest if d != -1])), 1)
    _reshape_to(r, node, tuple(rest))


@READERS.register("Identity")
def _identity(r: _Reader, node: onnx.NodeProto) -> None:
    r.tensors[node.output[0]] = r.act(node, 0)
    if node.output[0] == r.output:
        r.output = node.input[0]
