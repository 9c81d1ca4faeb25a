"""A float TFLite classifier (what Keras and TensorFlow users exchange) as a PyTorch module, so every
technique can act on it (SPEC §12.1): CONV_2D, DEPTHWISE_CONV_2D (any channel multiplier), FULLY_CONNECTED,
ADD, AVERAGE_POOL_2D, MAX_POOL_2D, RESHAPE (a flattening), SOFTMAX (last), fused RELU / RELU6 / RELU_N1_TO_1,
SAME and VALID padding. Anything else is one UserError naming the operator.

The layout is turned once, at the boundary: the module takes N x C x H x W like every deepshrink model, the
weights are rearranged (O x H x W x I -> O x I x H x W), and a fully connected layer reading a flattened
H x W x C map gets its columns permuted into C x H x W order, so no Transpose runs inside. A trailing SOFTMAX
is dropped: deepshrink trains and distills on logits, and the class a softmax picks is the logit's argmax.
TFLite's SAME padding puts the odd pixel after (bottom/right); PyTorch pads evenly, so an uneven SAME becomes
a `TfPad` layer before the convolution, which ONNX export folds into the Conv's own pads.
"""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepshrink.errors import UserError
from deepshrink.ingest.onnx_to_torch import OnnxNet, Step, sequential
from deepshrink.ingest.tflite_file import TfModel, TfOperator, read_tflite_file, same_pads

REFERENCE = "deepshrink.ingest.tflite_to_torch:from_tflite"  # what a converted model's manifest names
OPERATORS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "AVERAGE_POOL_2D", "MAX_POOL_2D",
             "RESHAPE", "SOFTMAX")
Pair = tuple[int, int]
Pads = tuple[int, int, int, int]
_ACTIVATIONS = {"NONE": None, "RELU": nn.ReLU, "RELU6": nn.ReLU6, "RELU_N1_TO_1": lambda: nn.Hardtanh(-1.0, 1.0)}


class _PadSymbolic(torch.autograd.Function):
    """One ONNX Pad with constant pads (TorchScript's export of F.pad computes them with a dozen ops), so
    export_onnx can fold it into the convolution that reads it."""

    @staticmethod
    def forward(ctx: object, x: Tensor, pads: tuple[int, int, int, int]) -> Tensor:
        return F.pad(x, pads)

    @staticmethod
    def symbolic(g: object, x: object, pads: tuple[int, int, int, int]) -> object:
        left, right, top, bottom = pads
        const = g.op("Constant", value_t=torch.tensor([0, 0, top, left, 0, 0, bottom, right]))  # type: ignore[attr-defined]
        return g.op("Pad", x, const, mode_s="constant")  # type: ignore[attr-defined]


class TfPad(nn.ZeroPad2d):
    """TFLite's uneven SAME padding (left, right, top, bottom) before a convolution."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.onnx.is_in_onnx_export():
            return _PadSymbolic.apply(x, tuple(self.padding))
        return super().forward(x)


class _Converter:
    def __init__(self, model: TfModel) -> None:
        self.m, self.source = model, model.source
        self.layers: dict[str, nn.Module] = {}
        self.steps: list[Step] = []
        self.counts: dict[str, int] = {}
        self.flat_from: dict[str, tuple[int, int, int]] = {}  # a flattened tensor -> the (H, W, C) it came from
        # Each computed tensor's shape as the kernels compute it from the input's, as TFLite's interpreter does
        # (the file's own shapes of intermediate tensors are not trusted: a wrong one would misplace pads).
        self.shapes: dict[int, tuple[int, ...]] = {}

    def refuse(self, op: TfOperator, why: str) -> UserError:
        return UserError(f"{self.source}: cannot convert TFLite operator {op.op} (operator {op.index}): {why}")

    def add(self, kind: str, layer: nn.Module, out: str, inp: str) -> str:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        name = f"{kind}{self.counts[kind]}"
        self.layers[name] = layer
        self.steps.append((out, name, [inp]))
        return out

    def computed(self, op: TfOperator, k: int, dims: tuple[int, ...] = (4,)) -> tuple[int, ...]:
        """The shape of input `k`, which must be computed before `op` (the graph's input or an earlier operator's
        output: a constant or a later tensor would be missing when the module runs)."""
        i = op.inputs[k] if k < len(op.inputs) else -1
        if i not in self.shapes:
            what = "absent" if i < 0 else f"tensor {i}, which no earlier operator computes"
            raise self.refuse(op, f"input {k} is {what}")
        if len(self.shapes[i]) not in dims:
            raise self.refuse(op, f"input {k} has shape {self.shapes[i]} (only {' or '.join(map(str, dims))}-d)")
        return self.shapes[i]

    def weight(self, op: TfOperator, k: int, dims: int) -> np.ndarray:
        i = op.inputs[k] if k < len(op.inputs) else -1
        t = self.m.tensors[i] if i >= 0 else None
        if t is None or t.data is None or t.dtype != "float32" or len(t.shape) != dims or not t.data.size:
            raise self.refuse(op, f"input {k} must be a non-empty constant float32 tensor of {dims} dimensions")
        return np.array(t.data, np.float32)

    def bias(self, op: TfOperator, n: int) -> np.ndarray | None:
        if len(op.inputs) < 3 or op.inputs[2] < 0:
            return None
        b = self.weight(op, 2, 1)
        if b.size != n:
            raise self.refuse(op, f"{b.size} biases for {n} outputs")
        return b

    def window(self, op: TfOperator, size: Pair, kernel: Pair, dilation: Pair = (1, 1)) -> tuple[Pads, Pair, Pair]:
        """(pads, output size, strides) of a convolution or pooling window over a `size` map."""
        strides = int(op.options.get("stride_h", 1)), int(op.options.get("stride_w", 1))
        padding = op.options.get("padding", "VALID")
        # A dilated window wider than twice its map touches the image with its centre tap only, and would be
        # padded by as much: a hostile file's, never a model's.
        wide = any((k - 1) * d > 2 * n for k, d, n in zip(kernel, dilation, size, strict=True))
        if min(strides + dilation) < 1 or padding not in ("SAME", "VALID") or wide:
            raise self.refuse(op, f"strides {strides}, dilation {dilation}, padding {padding} for a {kernel} window "
                                  f"over a {size} map")
        pads, out = same_pads(size, kernel, strides, padding == "SAME", dilation)
        if min(out) < 1:
            raise self.refuse(op, f"a {kernel} window (dilation {dilation}) does not fit its {size} input")
        return pads, out, strides

    def activation(self, op: TfOperator, out: str) -> None:
        fused = op.options.get("fused_activation_function", "NONE")
        if fused not in _ACTIVATIONS:
            raise self.refuse(op, f"fused {fused} (supported: {', '.join(_ACTIVATIONS)})")
        make = _ACTIVATIONS[fused]
        if make is not None:
            self.add("relu", make(), out, out)


def _conv(c: _Converter, op: TfOperator, inp: str, out: str) -> tuple[int, ...]:
    n, h, wd, ch = c.computed(op, 0)
    w = c.weight(op, 1, 4)  # CONV_2D: O x KH x KW x I; DEPTHWISE: 1 x KH x KW x (I * multiplier)
    depthwise = op.op == "DEPTHWISE_CONV_2D"
    if (depthwise and (w.shape[0] != 1 or w.shape[3] % ch)) or (not depthwise and w.shape[3] != ch):
        raise c.refuse(op, f"weights of shape {w.shape} for an input of {ch} channels")
    groups = ch if depthwise else 1
    weight = np.transpose(w, (3, 0, 1, 2)) if depthwise else np.transpose(w, (0, 3, 1, 2))
    kernel = (int(w.shape[1]), int(w.shape[2]))
    dilation = int(op.options.get("dilation_h_factor", 1)), int(op.options.get("dilation_w_factor", 1))
    (top, left, bottom, right), (oh, ow), strides = c.window(op, (h, wd), kernel, dilation)
    even = top == bottom and left == right
    bias = c.bias(op, weight.shape[0])
    conv = nn.Conv2d(ch, weight.shape[0], kernel, stride=strides, padding=(top, left) if even else 0,
                     dilation=dilation, groups=groups, bias=bias is not None)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
        if bias is not None and conv.bias is not None:
            conv.bias.copy_(torch.from_numpy(bias))
    if not even:
        inp = c.add("pad", TfPad((left, right, top, bottom)), f"{out}:padded", inp)
    c.add("conv", conv, out, inp)
    return n, oh, ow, int(weight.shape[0])


def _fc(c: _Converter, op: TfOperator, inp: str, out: str) -> tuple[int, ...]:
    src = c.computed(op, 0, (2, 4))
    w = c.weight(op, 1, 2)
    if op.options.get("keep_num_dims") or op.options.get("weights_format", "DEFAULT") != "DEFAULT":
        raise c.refuse(op, "keep_num_dims or shuffled weights (only a classifier's (batch, features) output)")
    if w.shape[1] != int(np.prod(src[1:])):
        raise c.refuse(op, f"weights of shape {w.shape} for an input of shape {src}")
    hwc = c.flat_from.get(inp) or ((src[1], src[2], src[3]) if len(src) == 4 else None)
    if len(src) == 4:  # TFLite flattens the map itself
        inp = c.add("flatten", nn.Flatten(), inp + ":flat", inp)
    if hwc is not None and hwc[0] * hwc[1] > 1:  # columns in H x W x C order -> C x H x W
        w = w.reshape(w.shape[0], *hwc).transpose(0, 3, 1, 2).reshape(w.shape[0], -1)
    bias = c.bias(op, w.shape[0])
    fc = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
        if bias is not None and fc.bias is not None:
            fc.bias.copy_(torch.from_numpy(bias))
    c.add("fc", fc, out, inp)
    return src[0], int(w.shape[0])


def _pool(c: _Converter, op: TfOperator, inp: str, out: str) -> tuple[int, ...]:
    n, h, w, ch = c.computed(op, 0)
    kernel = int(op.options.get("filter_height", 1)), int(op.options.get("filter_width", 1))
    if min(kernel) < 1:
        raise c.refuse(op, f"a {kernel} window")
    (top, left, bottom, right), (oh, ow), strides = c.window(op, (h, w), kernel)
    if top != bottom or left != right or 2 * top > kernel[0] or 2 * left > kernel[1]:
        raise c.refuse(op, f"padding {top}/{left}/{bottom}/{right} (even pads up to half the window only)")
    if op.op == "MAX_POOL_2D":
        c.add("pool", nn.MaxPool2d(kernel, strides, (top, left)), out, inp)
    else:  # TFLite averages over the pixels inside the image only
        c.add("pool", nn.AvgPool2d(kernel, strides, (top, left), count_include_pad=False), out, inp)
    return n, oh, ow, ch


def _reshape(c: _Converter, op: TfOperator, inp: str, out: str) -> tuple[int, ...]:
    src, dst = c.computed(op, 0, (2, 4)), c.m.tensors[op.outputs[0]].shape
    if len(dst) != 2 or dst[0] != src[0] or int(np.prod(src[1:])) != dst[1]:
        raise c.refuse(op, f"{src} -> {dst} (only a flattening to (batch, features))")
    hwc = (src[1], src[2], src[3]) if len(src) == 4 else c.flat_from.get(inp)
    if hwc is not None:  # a flattening of a flattening keeps the H x W x C order
        c.flat_from[out] = hwc
    c.add("flatten", nn.Flatten(), out, inp)
    return dst


def _add(c: _Converter, op: TfOperator, inp: str, out: str) -> tuple[int, ...]:
    a, b = c.computed(op, 0, (2, 4)), c.computed(op, 1, (2, 4))
    names = [str(i) for i in op.inputs]
    if len(names) != 2 or a != b or any(_permuted(c, i) for i in names):
        raise c.refuse(op, f"only of two computed tensors of one shape ({a} + {b}), neither a flattened map")
    c.steps.append((out, "Add", names))
    return a


def _permuted(c: _Converter, name: str) -> bool:
    """Whether the tensor is a flattened map with more than one pixel: its features are in C x H x W order here,
    H x W x C in TFLite, so only a fully connected layer (whose columns are permuted) may read it."""
    hwc = c.flat_from.get(name)
    return hwc is not None and hwc[0] * hwc[1] > 1


CONVERTERS = {"CONV_2D": _conv, "DEPTHWISE_CONV_2D": _conv, "FULLY_CONNECTED": _fc, "AVERAGE_POOL_2D": _pool,
              "MAX_POOL_2D": _pool, "RESHAPE": _reshape, "ADD": _add}


def _check_io(model: TfModel) -> tuple[int, int]:
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UserError(f"{model.source}: {len(model.inputs)} inputs and {len(model.outputs)} outputs (a "
                        "classifier has one of each)")
    t = model.tensors[model.inputs[0]]
    if t.dtype != "float32" or len(t.shape) != 4 or min(t.shape) < 1:
        what = "an integer model: `deepshrink mcu` runs it as it is" if t.dtype in ("int8", "uint8") else t.dtype
        raise UserError(f"{model.source}: input {t.name!r} is {t.shape} {t.dtype}; compress takes a float "
                        f"N x H x W x C image classifier ({what})")
    return model.inputs[0], model.outputs[0]


def _logits(c: _Converter, op: TfOperator) -> int:
    """The tensor a last SOFTMAX reads: the module's output (the softmax's argmax is its logits')."""
    c.computed(op, 0, (2, 4))
    beta = op.options.get("beta", 1.0)
    if not (isinstance(beta, float | int) and beta > 0):  # a beta <= 0 would turn the ranking of the classes over
        raise c.refuse(op, f"beta {beta} (a softmax of the logits scaled by a positive beta only)")
    return op.inputs[0]


def convert_tflite(model: TfModel) -> nn.Module:
    """The float TFLite model's one subgraph as a module taking N x C x H x W images and returning logits."""
    inp, out = _check_io(model)
    c = _Converter(model)
    c.shapes[inp] = model.tensors[inp].shape
    for k, op in enumerate(model.operators):
        if op.op == "SOFTMAX" and k == len(model.operators) - 1 and op.outputs == (out,):
            out = _logits(c, op)
            continue
        if op.op not in CONVERTERS:
            where = " (only as the last operator)" if op.op == "SOFTMAX" else ""
            raise c.refuse(op, f"not supported{where} (supported: {', '.join(OPERATORS)})")
        if len(op.outputs) != 1 or model.tensors[op.outputs[0]].dtype != "float32":
            raise c.refuse(op, "its output is not one float32 tensor")
        c.computed(op, 0, (2, 4))  # before the converter names it
        c.shapes[op.outputs[0]] = CONVERTERS[op.op](c, op, str(op.inputs[0]), str(op.outputs[0]))
        if op.op != "RESHAPE":
            c.activation(op, str(op.outputs[0]))
    if out not in c.shapes or _permuted(c, str(out)):
        why = "a flattened map (its order differs)" if out in c.shapes else "not computed by any operator"
        raise UserError(f"{model.source}: its output tensor {out} is {why}; a classifier ends in logits")
    # A fused activation rewrites its op's output name in place, so each tensor's last writer is the step.
    chain = not any(isinstance(m, TfPad) for m in c.layers.values())
    net = (sequential(c.layers, c.steps, str(inp), str(out)) if chain else None) or \
        OnnxNet(c.layers, c.steps, str(inp), str(out))
    return net.eval()


def from_tflite(path: str, num_classes: int | None = None,
                input_shape: tuple[int, int, int] | None = None) -> nn.Module:
    """The module a float TFLite classifier file converts to (the reference its checkpoints are rebuilt by)."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{file}: TFLite model not found")
    return convert_tflite(read_tflite_file(file))
