"""Quantization arithmetic every INT8 path shares: asymmetric uint8 activation parameters and symmetric
per-output-channel int8 weight scales and codes (ONNX Runtime's conventions, so a file written here and one
its quantizer writes compute alike)."""

import torch
from torch import Tensor


def uint8_params(lo: float, hi: float) -> tuple[float, int]:
    """Asymmetric uint8 (scale, zero point) covering [lo, hi] and always 0 (so ReLU is exact)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zp = round(-lo / scale)
    return scale, max(0, min(255, zp))


def weight_scales(w: Tensor, qmax: int) -> Tensor:
    """Symmetric per-output-channel scales: the channel's largest |w| maps to qmax."""
    absmax = w.detach().abs().reshape(w.shape[0], -1).amax(1)
    return torch.where(absmax > 0, absmax / qmax, torch.ones_like(absmax))


def quantize_weight(w: Tensor, scales: Tensor, qmax: int) -> Tensor:
    """Integer codes of `w` (as float tensor) for per-channel `scales`, clipped to [-qmax, qmax]."""
    s = scales.reshape(-1, *([1] * (w.dim() - 1)))
    return torch.clamp(torch.round(w / s), -qmax, qmax)
