"""An FP32 ONNX classifier from any framework as a PyTorch module, so every technique can act on it.

onnx2torch needs torchvision, which does not install beside the pinned torch, so this is our own
converter for the ops a classifier exported by `torch.onnx.export` uses: Conv, Gemm, MatMul (+ Add of a
bias), Relu, Clip (0..6), Sigmoid, HardSigmoid, HardSwish, MaxPool, AveragePool, GlobalAveragePool,
Flatten, Reshape (to N x -1), BatchNormalization, Add, Mul, Concat, Identity and Dropout. Any other op is
one UserError naming it. A chain of layers becomes an `nn.Sequential` (so deepshrink's own INT8 writer and its
deployment modes apply, as to a registry model); any other graph becomes an `OnnxNet` that runs the nodes
in the file's order. Layers are named by kind and position (conv1, fc2, ...): the same file always gives
the same names, which checkpoints rely on to rebuild the module (`from_onnx`).
"""

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import Tensor, nn

from deepshrink.errors import UserError
from deepshrink.ingest.onnx_file import read_onnx

REFERENCE = "deepshrink.ingest.onnx_to_torch:from_onnx"  # what a converted model's manifest names


class _Graph:
    """The file's constants and nodes, with helpers that read a node's attributes and inputs."""

    def __init__(self, model: onnx.ModelProto, source: str) -> None:
        self.source = source
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.nodes = []
        for node in model.graph.node:
            if node.op_type == "Constant":
                self.consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
            elif node.op_type == "Identity" and node.input[0] in self.consts:  # shared constants
                self.consts[node.output[0]] = self.consts[node.input[0]]
            else:
                self.nodes.append(node)
        self.input = next(i.name for i in model.graph.input if i.name not in self.consts)
        self.output = model.graph.output[0].name
        self.uses: dict[str, int] = {}
        for node in self.nodes:
            for i in node.input:
                self.uses[i] = self.uses.get(i, 0) + 1

    def attr(self, node: onnx.NodeProto, name: str, default: Any = None) -> Any:
        for a in node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    def const(self, name: str) -> Tensor:
        return torch.from_numpy(np.array(self.consts[name], dtype=np.float32))

    def refuse(self, node: onnx.NodeProto, why: str) -> UserError:
        return UserError(f"{self.source}: cannot convert ONNX op {node.op_type} ({node.name or node.output[0]}): "
                         f"{why}")


def _pads(g: _Graph, node: onnx.NodeProto, dims: int) -> tuple[int, ...]:
    pads = list(g.attr(node, "pads", [0] * 2 * dims))
    if g.attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or pads[:dims] != pads[dims:]:
        raise g.refuse(node, "asymmetric or automatic padding")
    return tuple(pads[:dims])


def _conv(g: _Graph, node: onnx.NodeProto) -> nn.Module:
    w = g.const(node.input[1])
    if w.dim() != 4:
        raise g.refuse(node, f"{w.dim() - 2}-d convolution (Conv2d only)")
    groups = int(g.attr(node, "group", 1))
    kernel = (int(w.shape[2]), int(w.shape[3]))
    pads = _pads(g, node, 2)
    conv = nn.Conv2d(w.shape[1] * groups, w.shape[0], kernel, stride=tuple(g.attr(node, "strides", [1, 1])),
                     padding=(pads[0], pads[1]), dilation=tuple(g.attr(node, "dilations", [1, 1])), groups=groups,
                     bias=len(node.input) > 2 and bool(node.input[2]))
    with torch.no_grad():
        conv.weight.copy_(w)
        if conv.bias is not None:
            conv.bias.copy_(g.const(node.input[2]))
    return conv


def _linear(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    fc = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        fc.weight.copy_(weight)
        if bias is not None:
            fc.bias.copy_(bias.reshape(-1).expand(weight.shape[0]))
    return fc


def _gemm(g: _Graph, node: onnx.NodeProto) -> nn.Module:
    if g.attr(node, "transA", 0) or g.attr(node, "alpha", 1.0) != 1.0 or g.attr(node, "beta", 1.0) != 1.0:
        raise g.refuse(node, "transA, alpha or beta other than the defaults")
    b = g.const(node.input[1])
    weight = b if g.attr(node, "transB", 0) else b.T
    return _linear(weight, g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None)


def _matmul(g: _Graph, node: onnx.NodeProto) -> nn.Module:
    if node.input[1] not in g.consts or g.consts[node.input[1]].ndim != 2:
        raise g.refuse(node, "only a product with a constant 2-d weight (a fully connected layer)")
    return _linear(g.const(node.input[1]).T, None)


def _pool(g: _Graph, node: onnx.NodeProto) -> nn.Module:
    kernel = tuple(g.attr(node, "kernel_shape"))
    if len(kernel) != 2 or g.attr(node, "dilations", [1, 1]) != [1, 1]:
        raise g.refuse(node, "pooling other than 2-d and undilated")
    args = dict(kernel_size=kernel, stride=tuple(g.attr(node, "strides", [1, 1])), padding=_pads(g, node, 2),
                ceil_mode=bool(g.attr(node, "ceil_mode", 0)))
    if node.op_type == "MaxPool":
        if len(node.output) > 1 and node.output[1]:
            raise g.refuse(node, "max pooling that also returns indices")
        return nn.MaxPool2d(**args)  # type: ignore[arg-type]
    return nn.AvgPool2d(**args, count_include_pad=bool(g.attr(node, "count_include_pad", 0)))  # type: ignore[arg-type]


def _batchnorm(g: _Graph, node: onnx.NodeProto) -> nn.Module:
    scale, bias, mean, var = (g.const(n) for n in node.input[1:5])
    bn = nn.BatchNorm2d(scale.numel(), eps=float(g.attr(node, "epsilon", 1e-5)))
    with torch.no_grad():
        bn.weight.copy_(scale)
        bn.bias.copy_(bias)
        for buf, val in ((bn.running_mean, mean), (bn.running_var, var)):
            assert buf is not None
            buf.copy_(val)
    return bn.eval()


def _flatten(g: _Graph, node: onnx.NodeProto) -> nn.Module:
    if node.op_type == "Flatten" and g.attr(node, "axis", 1) == 1:
        return nn.Flatten()
    shape = g.consts.get(node.input[1]) if node.op_type == "Reshape" else None
    if shape is not None and shape.ndim == 1 and len(shape) == 2 and shape[1] == -1 and shape[0] in (0, -1, 1):
        return nn.Flatten()  # [N, -1]: torch.onnx.export's x.view(x.size(0), -1) with a static batch
    raise g.refuse(node, "only a flattening to (batch, features)")


def _hardsigmoid(g: _Graph, node: onnx.NodeProto) -> nn.Module:
    alpha, beta = float(g.attr(node, "alpha", 0.2)), float(g.attr(node, "beta", 0.5))
    if abs(alpha - 1 / 6) > 1e-6 or abs(beta - 0.5) > 1e-6:
        raise g.refuse(node, f"alpha={alpha}, beta={beta} (PyTorch's Hardsigmoid is alpha=1/6, beta=0.5)")
    return nn.Hardsigmoid()


def _clip(g: _Graph, node: onnx.NodeProto) -> nn.Module:
    bounds = [float(g.consts[n]) if n and n in g.consts else None for n in list(node.input[1:3]) + [None] * 2][:2]
    if bounds[0] == 0.0 and bounds[1] == 6.0:
        return nn.ReLU6()
    if bounds[0] == 0.0 and bounds[1] is None:
        return nn.ReLU()
    raise g.refuse(node, f"bounds {bounds} (only ReLU6's 0..6)")


LAYERS: dict[str, tuple[str, Callable[[_Graph, onnx.NodeProto], nn.Module]]] = {
    "Conv": ("conv", _conv), "Gemm": ("fc", _gemm), "MatMul": ("fc", _matmul), "MaxPool": ("pool", _pool),
    "AveragePool": ("pool", _pool), "BatchNormalization": ("bn", _batchnorm), "Flatten": ("flatten", _flatten),
    "Reshape": ("flatten", _flatten), "HardSigmoid": ("hsigmoid", _hardsigmoid), "Clip": ("relu", _clip),
    "Relu": ("relu", lambda g, n: nn.ReLU()), "Sigmoid": ("sigmoid", lambda g, n: nn.Sigmoid()),
    "HardSwish": ("hswish", lambda g, n: nn.Hardswish()),
    "GlobalAveragePool": ("gap", lambda g, n: nn.AdaptiveAvgPool2d(1)),
}
PASS = {"Identity", "Dropout"}
MERGE: dict[str, Callable[[list[Tensor]], Tensor]] = {
    "Add": lambda xs: xs[0] + xs[1], "Mul": lambda xs: xs[0] * xs[1], "Concat": lambda xs: torch.cat(xs, 1),
}
Step = tuple[str, str, list[str]]  # (output name, layer name or merge op, input names)


class OnnxNet(nn.Module):
    """A converted file's graph (ONNX or TFLite): named layers, and the steps in the file's (topological) order."""

    def __init__(self, layers: dict[str, nn.Module], steps: list[Step], inp: str, out: str) -> None:
        super().__init__()
        self.layers = nn.ModuleDict(layers)
        self.steps, self.inp, self.out = steps, inp, out

    def forward(self, x: Tensor) -> Tensor:
        env = {self.inp: x}
        for out, op, ins in self.steps:
            xs = [env[i] for i in ins]
            env[out] = MERGE[op](xs) if op in MERGE else self.layers[op](xs[0])
        return env[self.out]


def _fold_bias(g: _Graph, node: onnx.NodeProto, layers: dict[str, nn.Module], made_by: dict[str, str]) -> bool:
    """An Add of a constant vector to a bias-less MatMul's only output is that layer's bias."""
    src = [i for i in node.input if i not in g.consts]
    const = [i for i in node.input if i in g.consts]
    if len(src) != 1 or len(const) != 1 or g.uses.get(src[0]) != 1:
        return False
    layer = layers.get(made_by.get(src[0], ""))
    if not isinstance(layer, nn.Linear) or layer.bias is not None or g.consts[const[0]].size != layer.out_features:
        return False
    layer.bias = nn.Parameter(g.const(const[0]).reshape(-1))
    made_by[node.output[0]] = made_by[src[0]]
    return True


def _convert(g: _Graph) -> tuple[dict[str, nn.Module], list[Step], dict[str, str]]:
    layers: dict[str, nn.Module] = {}
    steps: list[Step] = []
    alias: dict[str, str] = {}  # Identity/Dropout outputs and folded biases -> the tensor they carry
    made_by: dict[str, str] = {}
    counts: dict[str, int] = {}
    for node in g.nodes:
        ins = [alias.get(i, i) for i in node.input if i and i not in g.consts]
        if node.op_type in PASS or (node.op_type == "Add" and _fold_bias(g, node, layers, made_by)):
            alias[node.output[0]] = ins[0]
        elif node.op_type in MERGE:
            if len(ins) != len(node.input) or (node.op_type == "Concat" and g.attr(node, "axis") != 1):
                along = " along channels" if node.op_type == "Concat" else ""
                raise g.refuse(node, f"only of computed tensors{along}")
            steps.append((node.output[0], node.op_type, ins))
        elif node.op_type in LAYERS:
            kind, build = LAYERS[node.op_type]
            counts[kind] = counts.get(kind, 0) + 1
            name = f"{kind}{counts[kind]}"
            layers[name] = build(g, node)
            made_by[node.output[0]] = name
            steps.append((node.output[0], name, ins[:1]))
        else:
            raise g.refuse(node, f"not supported (supported: {', '.join(sorted({*LAYERS, *PASS, *MERGE}))})")
    return layers, steps, alias


def sequential(layers: dict[str, nn.Module], steps: list[Step], inp: str, out: str) -> nn.Sequential | None:
    """The layers as an nn.Sequential when each step takes the previous step's output (a chain)."""
    prev = inp
    for o, op, ins in steps:
        if op in MERGE or ins != [prev]:
            return None
        prev = o
    return nn.Sequential(OrderedDict(layers)) if prev == out else None


def convert(model: onnx.ModelProto, source: str) -> nn.Module:
    g = _Graph(model, source)
    layers, steps, alias = _convert(g)
    out = alias.get(g.output, g.output)
    with torch.no_grad():
        for layer in layers.values():  # the module holds the file's floats as float32, whatever they were
            layer.float()
    net = sequential(layers, steps, g.input, out) or OnnxNet(layers, steps, g.input, out)
    return net.eval()


def from_onnx(path: str, num_classes: int | None = None, input_shape: tuple[int, int, int] | None = None) -> nn.Module:
    """The module an ONNX classifier file converts to (the reference its checkpoints are rebuilt by)."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{file}: ONNX model not found")
    return convert(read_onnx(file.read_bytes(), str(file)), str(file))
