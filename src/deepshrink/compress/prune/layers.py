"""Shared by both pruning steps: fraction checks, the `layers` key, and the retraining schedule.

`layers` (both steps): "" = every candidate layer, or `fc`/`conv`/`all` (structured), or a `+`
list of layer names each with an optional own fraction, e.g. `fc1=0.95+fc2=0.9+fc3`.
"""

import dataclasses

from torch import nn

from deepshrink.config import default_train
from deepshrink.errors import UserError
from deepshrink.train import TrainConfig
from deepshrink.variant import Variant

RETRAIN_LR_FACTOR = 0.2  # retraining starts from a good optimum: a fifth of the tuned training LR


def check_fraction(value: float, key: str) -> None:
    if not 0.0 <= value < 1.0:
        raise UserError(f"{key}={value}: must be in [0, 1)")


def parse_layers(spec: str, key: str) -> dict[str, float | None]:
    """`fc1=0.9+fc2` -> {"fc1": 0.9, "fc2": None} (None = the step's global fraction)."""
    out: dict[str, float | None] = {}
    for part in filter(None, (p.strip() for p in spec.split("+"))):
        name, eq, value = part.partition("=")
        if not eq:
            out[name] = None
            continue
        try:
            out[name] = float(value)
        except ValueError:
            raise UserError(f"{key}: {part!r} is not name=fraction") from None
        check_fraction(out[name], f"{key} {name}")  # type: ignore[arg-type]
    return out


def resolve_layers(model: nn.Module, spec: dict[str, float | None], candidates: list[str], default: float,
                   key: str) -> dict[str, float]:
    """Per-layer fractions for the named layers (all candidates when none are named)."""
    unknown = [n for n in spec if n not in candidates]
    if unknown:
        raise UserError(f"{key}: no prunable layer {unknown[0]!r} in this model (layers: {', '.join(candidates)})")
    names = list(spec) or candidates
    return {n: default if spec.get(n) is None else float(spec[n]) for n in names}  # type: ignore[arg-type]


def retrain_config(v: Variant, epochs: int, lr: float, seed: int) -> TrainConfig:
    base = default_train(v.manifest.dataset, v.manifest.model, seed=seed)
    return dataclasses.replace(base, epochs=epochs, lr=lr or base.lr * RETRAIN_LR_FACTOR)
