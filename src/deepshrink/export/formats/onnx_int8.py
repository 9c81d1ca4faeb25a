"""A real integer ONNX model written straight from the layer plan (QDQ format, run by ONNX Runtime).

Why not `onnxruntime.quantization.quantize_static`: its graphs carry per-channel zero-point tensors,
a second copy of every bias scale and Q/DQ pairs around pooling and flatten, ~3 KB that keeps a
LeNet-5 INT8 file above a quarter of the FP32 bytes; and QAT needs its learned ranges written as
they are, not re-calibrated. This writer emits the minimal graph ONNX Runtime still fuses into
QLinearConv/QGemm (checked by the tests: int8 initializers, agreement with FP32):

- weights: int8, symmetric, per output channel, no zero-point input (the ONNX default is 0);
- bias: int32 at scale input_scale * weight_scale, that product a Mul of the two initializers
  (constant-folded at load, so it costs no file bytes);
- activations: uint8, per tensor; a ReLU is the output quantizer's clamp at zero point 0;
- max-pooling and flatten run on the uint8 tensor directly (exact: both are order-preserving).

A layer can also be written "weight-only": int8 weights dequantized by a DequantizeLinear on the
initializer and float compute. Every ONNX Runtime runner decodes those weights once when it loads
the file (weight_decode.py), so such a file is int8 bytes at FP32 speed.
"""

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from deepshrink.quant.plan import INPUT, Op, Ranges, plan
from deepshrink.quant.scales import quantize_weight, uint8_params, weight_scales

_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def short_name(n: int) -> str:
    """The n-th (from 1) short tensor name, in base 52 (`b` ... `Z`, then `ba` ...): the names every INT8
    writer gives, since a LeNet graph has ~100 tensor references and a ResNet's names are ~10 % of its bytes."""
    out = ""
    while n:
        n, r = divmod(n, len(_ALPHABET))
        out = _ALPHABET[r] + out
    return out
OPSET = 17


@dataclass
class _Graph:
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    count: int = 0

    def name(self) -> str:
        self.count += 1
        return short_name(self.count)

    def const(self, arr: np.ndarray) -> str:
        n = self.name()
        self.inits.append(numpy_helper.from_array(arr, n))
        return n

    def node(self, op: str, inputs: list[str], out: str | None = None, **attrs: Any) -> str:
        out = out or self.name()
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out


@dataclass
class _Act:
    """The running activation: a float tensor, or a uint8 one with its (scale, zero point) names."""

    tensor: str
    qparams: tuple[str, str] | None = None


def _quantize_act(g: _Graph, act: _Act, lo_hi: tuple[float, float]) -> _Act:
    scale, zp = uint8_params(*lo_hi)
    s, z = g.const(np.array(scale, np.float32)), g.const(np.array(zp, np.uint8))
    return _Act(g.node("QuantizeLinear", [act.tensor, s, z]), (s, z))


def _dequantize_act(g: _Graph, act: _Act) -> str:
    if act.qparams is None:
        return act.tensor
    return g.node("DequantizeLinear", [act.tensor, *act.qparams])


def _layer_attrs(mod: nn.Module) -> dict[str, Any]:
    if isinstance(mod, nn.Linear):
        return {"transB": 1}
    assert isinstance(mod, nn.Conv2d)
    if not isinstance(mod.padding, tuple):
        raise ValueError(f"conv padding {mod.padding!r} is not exportable")
    ph, pw = mod.padding
    attrs = {"kernel_shape": list(mod.kernel_size), "strides": list(mod.stride), "pads": [ph, pw, ph, pw],
             "dilations": list(mod.dilation), "group": mod.groups}
    defaults = {"strides": [1, 1], "pads": [0, 0, 0, 0], "dilations": [1, 1], "group": 1}
    return {k: v for k, v in attrs.items() if defaults.get(k) != v}


def _weighted(g: _Graph, op: Op, act: _Act, ranges: Ranges, prev_point: str, int8: bool, float_out: bool,
              scales: torch.Tensor | None = None) -> _Act:
    mod = op.module
    w = op.weight.detach().float()
    scales = weight_scales(w, 127) if scales is None else scales
    codes = quantize_weight(w, scales, 127).numpy().astype(np.int8)
    s_w = g.const(scales.numpy().astype(np.float32))
    # ONNX Runtime fuses DQ->Gemm->Q into QGemm only when the weight zero point is explicit;
    # QLinearConv fusion does not need it, so convs save those bytes.
    zp = [g.const(np.zeros(len(scales), np.int8))] if isinstance(mod, nn.Linear) else []
    w_in = g.node("DequantizeLinear", [g.const(codes), s_w, *zp], axis=0)
    op_type = "Gemm" if isinstance(mod, nn.Linear) else "Conv"
    bias = op.bias.detach().float() if op.bias is not None else None
    if not int8:
        x = _dequantize_act(g, act)
        inputs = [x, w_in] + ([g.const(bias.numpy())] if bias is not None else [])
        y = g.node(op_type, inputs, **_layer_attrs(mod))
        return _Act(g.node("Relu", [y]) if op.relu else y)
    if act.qparams is None:
        act = _quantize_act(g, act, ranges[prev_point])
    x = _dequantize_act(g, act)
    inputs = [x, w_in]
    if bias is not None:
        in_scale = uint8_params(*ranges[prev_point])[0]
        q_bias = torch.round(bias / (in_scale * scales)).numpy().astype(np.int32)
        b_scale = g.node("Mul", [act.qparams[0], s_w])  # type: ignore[index]
        inputs.append(g.node("DequantizeLinear", [g.const(q_bias), b_scale], axis=0))
    y = g.node(op_type, inputs, **_layer_attrs(mod))
    if float_out:  # float logits straight from the integer kernel (QGemm's float output)
        return _Act(y)
    return _quantize_act(g, _Act(y), ranges[op.name])  # clamps at zp 0 == the fused ReLU


def build_qdq(model: nn.Module, ranges: Ranges, input_shape: tuple[int, ...], int8_layers: set[str],
              quantize_logits: bool = False, scales: dict[str, torch.Tensor] | None = None) -> onnx.ModelProto:
    """The integer ONNX model: layers in `int8_layers` run in int8, the others weight-only. The logits are
    float (QGemm's float output, no rounding) unless `quantize_logits`: a microcontroller returns int8 logits,
    quantized with the last layer's calibrated range. `scales` replaces a layer's per-channel weight scales
    (one per output channel): a clustered layer's shared values stay shared under one scale, a bit-packed
    layer's codes stay exact under its own steps."""
    g = _Graph()
    act = _Act(INPUT)
    prev_point = INPUT
    ops = plan(model)
    last = [op for op in ops if op.weighted][-1].name
    for op in ops:
        if op.weighted:
            float_out = op.name == last and not op.relu and not quantize_logits
            act = _weighted(g, op, act, ranges, prev_point, op.name in int8_layers, float_out,
                            (scales or {}).get(op.name))
            prev_point = op.name
        elif isinstance(op.module, nn.ReLU):
            act = _Act(g.node("Relu", [_dequantize_act(g, act)]))
        elif isinstance(op.module, nn.MaxPool2d):
            k, s = op.module.kernel_size, op.module.stride or op.module.kernel_size
            k2 = [k, k] if isinstance(k, int) else list(k)
            s2 = [s, s] if isinstance(s, int) else list(s)
            act = _Act(g.node("MaxPool", [act.tensor], kernel_shape=k2, strides=s2), act.qparams)
        elif isinstance(op.module, nn.Flatten):
            act = _Act(g.node("Flatten", [act.tensor], axis=1), act.qparams)
    if act.qparams is not None:
        g.node("DequantizeLinear", [act.tensor, *act.qparams], out="logits")
    else:
        g.node("Identity", [act.tensor], out="logits")
    graph = helper.make_graph(
        g.nodes, "g",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", *input_shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", None])], g.inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def int8_weight_elements(path: str) -> int:
    """Elements held in int8 weight tensors (2-D and up): proof that a file stores integer weights."""
    m = onnx.load(path)
    return sum(int(np.prod(t.dims)) for t in m.graph.initializer
               if t.data_type == TensorProto.INT8 and len(t.dims) >= 2)
