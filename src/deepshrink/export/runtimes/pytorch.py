"""PyTorch as a runtime: the float model as it is (`torch_runner`), and the same integer model as the ONNX
file in PyTorch's x86 quantized engine (fbgemm/oneDNN kernels), built from the
layer plan with the exact scales the ONNX file uses, so the two runtimes can be timed side by side.

PyTorch deprecates its quantized tensor types (issue pytorch#184982); this runner is a second
opinion beside ONNX Runtime, which stays the runtime of record.
"""

import copy
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from deepshrink.measure.latency import Runner, RunnerFactory
from deepshrink.quant.plan import INPUT, Op, Ranges, plan
from deepshrink.quant.scales import uint8_params, weight_scales


def _qweight(w: Tensor) -> Tensor:
    scales = weight_scales(w.detach().float(), 127).double()
    return torch.quantize_per_channel(w.detach().float(), scales, torch.zeros(len(scales), dtype=torch.long), 0,
                                      torch.qint8)


def _qlayer(op: Op, out_range: tuple[float, float]) -> nn.Module:
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq

    mod = op.module
    q: Any
    if isinstance(mod, nn.Linear):
        q = (nniq.LinearReLU if op.relu else nnq.Linear)(mod.in_features, mod.out_features)
    else:
        assert isinstance(mod, nn.Conv2d)
        conv: Any = nniq.ConvReLU2d if op.relu else nnq.Conv2d
        q = conv(mod.in_channels, mod.out_channels, mod.kernel_size, stride=mod.stride, padding=mod.padding,
                 dilation=mod.dilation, groups=mod.groups)
    q.set_weight_bias(_qweight(op.weight), None if op.bias is None else op.bias.detach().float())
    q.scale, q.zero_point = uint8_params(*out_range)
    return q


class TorchInt8(nn.Module):
    def __init__(self, model: nn.Module, ranges: Ranges) -> None:
        super().__init__()
        self.in_scale, self.in_zp = uint8_params(*ranges[INPUT])
        layers = [_qlayer(op, ranges[op.name]) if op.weighted else copy.deepcopy(op.module) for op in plan(model)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        q = torch.quantize_per_tensor(x, self.in_scale, self.in_zp, torch.quint8)
        return self.body(q).dequantize()


def torch_int8_runner(model: nn.Module, ranges: Ranges) -> RunnerFactory:
    def make(threads: int, device: str) -> Runner:
        torch.backends.quantized.engine = "x86"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the quantized-tensor deprecation notice, once per layer
            net = TorchInt8(model, ranges).eval()

        @torch.inference_mode()
        def run(x: np.ndarray) -> np.ndarray:
            return net(torch.from_numpy(x)).numpy()

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
