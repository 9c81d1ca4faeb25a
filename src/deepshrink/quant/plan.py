"""The layer plan every quantization path shares (compress/quantize, the INT8 writers, the sparse runtime,
the microcontroller target), and activation-range observation.

Models are `nn.Sequential`s of Linear/Conv2d/ReLU/MaxPool2d/Flatten. A plan lists them with each
ReLU fused into the layer before it, because the integer graph clamps through the output
quantizer's zero point instead of running a ReLU. The quantization points are the network input
("input") and the (post-ReLU) output of every Linear/Conv2d, named after that layer.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from deepshrink.errors import UserError
from deepshrink.models import WEIGHTED

INPUT = "input"
Ranges = dict[str, tuple[float, float]]  # quantization point -> calibrated (min, max)
_PASSTHROUGH = (nn.MaxPool2d, nn.Flatten, nn.Identity, nn.Dropout)


@dataclass(frozen=True)
class Op:
    name: str
    module: nn.Module
    relu: bool = False  # a ReLU follows and is fused into this layer's output quantizer

    @property
    def weighted(self) -> bool:
        return isinstance(self.module, WEIGHTED)

    @property
    def weight(self) -> Tensor:
        w = self.module.weight
        assert isinstance(w, Tensor)
        return w

    @property
    def bias(self) -> Tensor | None:
        b = self.module.bias
        return b if isinstance(b, Tensor) else None


def plan(model: nn.Module) -> list[Op]:
    """The model's layers in order, ReLUs fused into the weighted layer they follow."""
    if not isinstance(model, nn.Sequential):
        raise UserError(f"quantize: model {type(model).__name__} is not an nn.Sequential of supported layers")
    ops: list[Op] = []
    for name, mod in model.named_children():
        if isinstance(mod, nn.ReLU) and ops and ops[-1].weighted and not ops[-1].relu:
            ops[-1] = Op(ops[-1].name, ops[-1].module, relu=True)
        elif isinstance(mod, (*WEIGHTED, nn.ReLU, *_PASSTHROUGH)):
            ops.append(Op(name, mod))
        else:
            raise UserError(f"quantize: layer {name!r} ({type(mod).__name__}) is not supported "
                            "(Linear, Conv2d, ReLU, MaxPool2d, Flatten)")
    return ops


def expressible(model: nn.Module) -> bool:
    """Whether deepshrink's sequential writers (export/formats/onnx_int8.py, QAT's FakeQuantNet) can express the model;
    any other graph takes the ONNX Runtime route (export/formats/onnx_int8_ort.py)."""
    try:
        plan(model)
    except UserError:
        return False
    return True


def run_plan(ops: list[Op], x: Tensor, at_point: Callable[[str, Tensor], Tensor],
             weight: Callable[[Op], Tensor] | None = None) -> Tensor:
    """Forward through the plan, passing every quantization point through `at_point`.

    `weight` substitutes a layer's weight (fake-quantized in QAT); None uses the layer's own.
    """
    x = at_point(INPUT, x)
    for op in ops:
        mod = op.module
        if op.weighted:
            w = weight(op) if weight is not None else op.weight
            if isinstance(mod, nn.Linear):
                x = nn.functional.linear(x, w, op.bias)
            else:
                assert isinstance(mod, nn.Conv2d)
                x = mod._conv_forward(x, w, op.bias)
            if op.relu:
                x = torch.relu(x)
            x = at_point(op.name, x)
        else:
            x = mod(x)
    return x


@torch.no_grad()
def observe_ranges(model: nn.Module, x: Tensor, batch: int = 256) -> Ranges:
    """Min/max of every quantization point over `x` (MinMax calibration, as ONNX Runtime's default)."""
    ops = plan(model)
    ranges: Ranges = {}

    def record(name: str, t: Tensor) -> Tensor:
        lo, hi = float(t.min()), float(t.max())
        old = ranges.get(name, (lo, hi))
        ranges[name] = (min(old[0], lo), max(old[1], hi))
        return t

    was_training = model.training
    model.eval()
    for i in range(0, len(x), batch):
        run_plan(ops, x[i : i + batch], record)
    model.train(was_training)
    return ranges
