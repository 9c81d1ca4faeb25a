"""Quantization-aware training through the shared `fit` loop: a wrapper whose forward fake-quantizes
exactly what the deployed file quantizes, plus the callbacks that freeze observers late and keep
pruned weights at zero.

- INT8: weights per-channel symmetric (scale = max|w|/127, recomputed every step, as the exporter
  does), activations uint8 per tensor with EMA min/max observers, frozen for the last epoch. The
  frozen ranges are what the integer ONNX file is written with (no re-calibration after QAT).
- Sub-8-bit: weights only, LSQ (Esser et al. 2020): a learned per-channel step size, i.e. a learned
  clipping threshold qmax * step, with LSQ's gradient scaling; activations stay float.
"""

import math

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from deepshrink.models import weight_of, weighted_layers
from deepshrink.quant.plan import INPUT, Op, observe_ranges, plan, run_plan
from deepshrink.quant.scales import uint8_params, weight_scales


def _ste_round(x: Tensor) -> Tensor:
    return x + (torch.round(x) - x).detach()


def _grad_scale(x: Tensor, g: float) -> Tensor:
    """Value x, gradient scaled by g (LSQ's step-size gradient normalisation)."""
    y = x * g
    return (x - y).detach() + y


def fake_quant_act(x: Tensor, lo: float, hi: float) -> Tensor:
    scale, zp = uint8_params(lo, hi)
    q = torch.clamp(_ste_round(x / scale) + zp, 0, 255)
    return (q - zp) * scale


def mse_scales(w: Tensor, qmax: int, grid: int = 40) -> Tensor:
    """Per-channel step minimising the weight MSE over clipping thresholds in (0.2, 1] * max|w|:
    the PTQ scale for sub-8-bit and LSQ's starting point (much better than max|w| at 2-4 bits)."""
    w2 = w.detach().reshape(w.shape[0], -1)
    base = weight_scales(w, qmax)
    best, best_err = base.clone(), torch.full_like(base, math.inf)
    for frac in torch.linspace(0.2, 1.0, grid):
        s = base * frac
        err = ((torch.clamp(torch.round(w2 / s[:, None]), -qmax, qmax) * s[:, None] - w2) ** 2).sum(1)
        better = err < best_err
        best, best_err = torch.where(better, s, best), torch.where(better, err, best_err)
    return best


class FakeQuantNet(nn.Module):
    """Wraps a plan-able model; `bits == 8` fake-quantizes weights and activations, fewer bits
    weights only with learned (LSQ) steps. The wrapped model's parameters are trained in place."""

    def __init__(self, model: nn.Module, bits: int, calib: Tensor, momentum: float = 0.01) -> None:
        super().__init__()
        self.net = model
        self.ops = plan(model)
        self.bits = bits
        self.qmax = 2 ** (bits - 1) - 1
        self.momentum = momentum
        self.register_buffer("frozen", torch.zeros((), dtype=torch.bool))
        self.points = [INPUT] + [op.name for op in self.ops if op.weighted]
        if bits == 8:
            for name, (lo, hi) in observe_ranges(model, calib).items():
                self.register_buffer(f"range_{name}", torch.tensor([lo, hi]))
        self.steps = nn.ParameterDict()
        if bits < 8:
            for op in self.ops:
                if op.weighted:
                    self.steps[op.name] = nn.Parameter(mse_scales(op.weight, self.qmax))

    def _act(self, name: str, x: Tensor) -> Tensor:
        if self.bits < 8:
            return x
        r = getattr(self, f"range_{name}")
        assert isinstance(r, Tensor)
        if self.training and not bool(self.frozen):
            with torch.no_grad():
                new = torch.stack([x.min(), x.max()])
                r.mul_(1 - self.momentum).add_(new * self.momentum)
        return fake_quant_act(x, float(r[0]), float(r[1]))

    def _weight(self, op: Op) -> Tensor:
        w = op.weight
        shape = (-1, *([1] * (w.dim() - 1)))
        if self.bits == 8:
            s = weight_scales(w, self.qmax).reshape(shape)
        else:
            g = 1.0 / math.sqrt(w[0].numel() * self.qmax)
            s = _grad_scale(self.steps[op.name].abs().clamp_min(1e-8), g).reshape(shape)
        return torch.clamp(_ste_round(w / s), -self.qmax, self.qmax) * s

    def forward(self, x: Tensor) -> Tensor:
        return run_plan(self.ops, x, self._act, self._weight)

    def ranges(self) -> dict[str, tuple[float, float]]:
        return {p: (float(getattr(self, f"range_{p}")[0]), float(getattr(self, f"range_{p}")[1]))
                for p in self.points}

    def step_sizes(self) -> dict[str, Tensor]:
        return {k: v.detach().abs().clamp_min(1e-8) for k, v in self.steps.items()}


class WeightFakeQuant(nn.Module):
    """A parametrization of a layer's weight for QAT on any graph: the per-channel symmetric INT8 grid
    the exporter uses (scale max|w|/qmax), with a straight-through round. Per-channel scales make the
    codes invariant to the batch-norm folding done at export, so training sees what ships."""

    def __init__(self, qmax: int = 127, step: Tensor | None = None) -> None:
        super().__init__()
        self.qmax = qmax
        self.step = step  # fixed per-channel steps (sub-8-bit: MSE-optimal clipping), else max|w|/qmax

    def forward(self, w: Tensor) -> Tensor:
        s = (self.step.to(w.device) if self.step is not None else weight_scales(w, self.qmax))
        s = s.reshape(-1, *([1] * (w.dim() - 1)))
        return torch.clamp(_ste_round(w / s), -self.qmax, self.qmax) * s


def fake_quantize_weights(model: nn.Module, bits: int = 8, steps: dict[str, Tensor] | None = None) -> list[str]:
    """Register `WeightFakeQuant` on every Linear/Conv weight of `model`; the layers' names."""
    names = []
    for name, mod in weighted_layers(model):
        fq = WeightFakeQuant(2 ** (bits - 1) - 1, steps[name] if steps else None)
        parametrize.register_parametrization(mod, "weight", fq)
        names.append(name)
    return names


def remove_fake_quant(model: nn.Module, names: list[str]) -> None:
    """Back to plain float weights (the exporter quantizes them with the same grid)."""
    for name in names:
        parametrize.remove_parametrizations(model.get_submodule(name), "weight", leave_parametrized=False)


class KeepZerosGraph:
    """Pruned weights stay pruned through QAT on a parametrized graph (masks on the original weights)."""

    def __init__(self, model: nn.Module) -> None:
        self.masks = {n: weight_of(model, n).detach() != 0 for n, _ in weighted_layers(model)
                      if bool((weight_of(model, n) == 0).any())}

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        pass

    @torch.no_grad()
    def on_step_end(self, model: nn.Module) -> None:
        for name, mask in self.masks.items():
            original = model.get_submodule(f"{name}.parametrizations.weight").original
            assert isinstance(original, Tensor)
            original.mul_(mask.to(original.device))


class FreezeObservers:
    """Stops the activation observers at the start of epoch `at`: the last epoch fine-tunes the
    weights against the ranges the integer model will use."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        if isinstance(model, FakeQuantNet) and epoch >= self.at:
            model.frozen.fill_(True)  # type: ignore[operator]

    def on_step_end(self, model: nn.Module) -> None:
        pass


class KeepZeros:
    """Pruned weights stay pruned through QAT (the input may come from a pruning step)."""

    def __init__(self, model: nn.Module) -> None:
        self.masks = {n: p.detach() != 0 for n, p in model.named_parameters()
                      if n.endswith("weight") and bool((p == 0).any())}

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        pass

    @torch.no_grad()
    def on_step_end(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        for name, mask in self.masks.items():
            p = params[f"net.{name}"]
            p.mul_(mask.to(p.device))
