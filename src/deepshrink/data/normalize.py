"""The preprocessing a model was trained with, as an input (`--normalize`): `mean=0.1307,std=0.3081`,
per channel `mean=0.49+0.48+0.45,std=0.25+0.24+0.26`, or `none` (pixels / 255). Data is loaded with its
own statistics; `renormalize` re-expresses it in a model's, from the exact pixels, so a model trained
elsewhere sees bit for bit the inputs its own script gave it.
"""

import dataclasses

import numpy as np
import torch

from deepshrink.data import DataSplits
from deepshrink.errors import UserError

Norm = tuple[list[float], list[float]]


def _floats(text: str, key: str, source: str) -> list[float]:
    try:
        return [float(p) for p in text.split("+")]
    except ValueError:
        raise UserError(f"{source}: {key}={text!r} is not a number or numbers joined by '+'") from None


RAW_STD = 1.0 / 255.0


def parse_normalize(text: str, source: str = "--normalize") -> Norm:
    """(mean, std) per channel (one value each means every channel) from the option's text."""
    if text.strip().lower() == "none":
        return [0.0], [1.0]
    if text.strip().lower() == "raw":  # the 0-255 pixel values themselves (MLPerf Tiny's ResNet-8)
        return [0.0], [RAW_STD]
    parts = dict(p.partition("=")[::2] for p in text.split(","))
    if set(parts) != {"mean", "std"}:
        raise UserError(f"{source} {text!r}: expected mean=M[+M...],std=S[+S...], none or raw")
    mean, std = _floats(parts["mean"], "mean", source), _floats(parts["std"], "std", source)
    if any(s <= 0 for s in std):
        raise UserError(f"{source}: std={parts['std']!r} must be positive")
    return mean, std


def for_channels(norm: Norm, channels: int, source: str = "--normalize") -> Norm:
    """One value per channel: a single value is repeated; any other count must match the data."""
    out = []
    for key, vals in zip(("mean", "std"), norm, strict=True):
        if len(vals) == 1:
            vals = vals * channels
        if len(vals) != channels:
            raise UserError(f"{source}: {key} has {len(vals)} values; the data has {channels} channels")
        out.append([float(v) for v in vals])
    return out[0], out[1]


def _pixels(x: torch.Tensor, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    # (p / 255 - mean) / std in float32 inverts to p within 1e-4, so rounding gives the pixel back exactly.
    return np.clip(np.rint((x.numpy() * std + mean) * 255.0), 0, 255).astype(np.float32)


def renormalize(data: DataSplits, norm: Norm | None) -> DataSplits:
    """`data` normalized as (pixel / 255 - mean) / std with the given statistics (float32, per channel);
    None keeps the data's own."""
    if norm is None:
        return data
    mean, std = for_channels(norm, data.input_shape[0])
    if [float(m) for m in data.mean] == mean and [float(s) for s in data.std] == std:
        return data
    old_m = np.asarray(data.mean, np.float32)[None, :, None, None]
    old_s = np.asarray(data.std, np.float32)[None, :, None, None]
    new_m = np.asarray(mean, np.float32)[None, :, None, None]
    new_s = np.asarray(std, np.float32)[None, :, None, None]

    raw = not any(mean) and all(s == RAW_STD for s in std)  # exactly the pixel values, not within an ulp

    def again(x: torch.Tensor) -> torch.Tensor:
        pixels = _pixels(x, old_m, old_s)
        return torch.from_numpy(pixels if raw else (pixels / np.float32(255.0) - new_m) / new_s)

    return dataclasses.replace(data, train_x=again(data.train_x), val_x=again(data.val_x), test_x=again(data.test_x),
                               mean=mean, std=std)
