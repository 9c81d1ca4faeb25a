"""Configuration defaults shared by commands: training settings per (dataset, model) and `--set`
style typed overrides of frozen dataclasses.
"""

import dataclasses
from typing import Any, TypeVar

from deepshrink.errors import UserError
from deepshrink.train import TrainConfig

C = TypeVar("C")

# Tuned on the validation split to beat the reference study within ~5 minutes on 2 CPU cores.
_TRAIN_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("mnist", "lenet-300-100"): {"epochs": 20, "augment": "shift", "lr": 0.05},
    ("mnist", "lenet-5"): {"epochs": 15, "augment": "shift", "lr": 0.05},
    # 5 epochs: 99.42% test (12 gave 99.51%) in ~10 CPU-minutes, a few minutes on 2 cores.
    ("mnist", "lenet-5-caffe"): {"epochs": 5, "augment": "shift", "lr": 0.05},
    ("mnist", "mlp-50"): {"epochs": 20, "augment": "none", "lr": 0.05},
    ("cifar10", "lenet-300-100"): {"epochs": 40, "augment": "crop-flip", "lr": 0.02},
    ("cifar10", "lenet-5"): {"epochs": 30, "augment": "crop-flip", "lr": 0.05},
    ("cifar10", "lenet-5-caffe"): {"epochs": 25, "augment": "crop-flip", "lr": 0.03},
    ("cifar10", "mlp-50"): {"epochs": 30, "augment": "none", "lr": 0.02},
}


# Any other model (a user's own) on a known family: the augmentation that family's baselines use.
_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "mnist": {"augment": "shift"}, "cifar10": {"augment": "crop-flip", "epochs": 12},
}


# A model on any data, by its reference. A float TFLite file's convolutions have their batch norm folded in (no
# normalization layers left) and take the input at the scale the file says (MLPerf Tiny's ResNet-8: 0-255 pixels):
# SGD diverged on it at 0.05 and at 0.0005 (non-finite loss in epoch 1); AdamW, scaled per parameter, at 3e-4
# fine-tuned it from 75.48 % to 80.77 % on CIFAR-10 here in one epoch (1e-3: 64.54 %).
_MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "deepshrink.ingest.tflite_to_torch:from_tflite": {"optimizer": "adamw", "lr": 3e-4},
}


def _family(dataset: str) -> str:
    return "mnist" if dataset.startswith("idx:") else dataset


def family_augment(dataset: str) -> str:
    """The augmentation the dataset family's baselines train with ("none" for an unknown family)."""
    return str(_FAMILY_DEFAULTS.get(_family(dataset), {}).get("augment", "none"))


def parse_kwargs(items: list[str], flag: str) -> dict[str, Any]:
    """`["width=16", "bn=true", "act=silu"]` -> {"width": 16, "bn": True, "act": "silu"}."""
    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip().isidentifier():
            raise UserError(f"{flag} {item!r}: expected KEY=VALUE with a Python identifier as KEY")
        out[key.strip()] = _literal(value.strip())
    return out


def _literal(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def default_train(dataset: str, model: str, **overrides: Any) -> TrainConfig:
    family = _family(dataset)
    base = dict(_TRAIN_DEFAULTS.get((family, model), _FAMILY_DEFAULTS.get(family, {})))
    base.update(_MODEL_DEFAULTS.get(model, {}))
    base.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**base)


def coerce(value: str, current: Any, key: str) -> Any:
    """Parse a `--set` string into the type of the field it replaces."""
    try:
        if isinstance(current, bool):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if isinstance(current, int):
            return int(value)
        if isinstance(current, float):
            return float(value)
        if isinstance(current, tuple):
            return tuple(coerce(v.strip(), current[0], key) for v in value.split(",")) if current else \
                tuple(v.strip() for v in value.split(","))
    except ValueError:
        raise UserError(f"{key}={value!r}: expected {type(current).__name__}") from None
    return value


def replace_fields(cfg: C, overrides: dict[str, str], prefix: str) -> C:
    """dataclasses.replace with string values coerced to each field's type; unknown keys fail."""
    names = {f.name for f in dataclasses.fields(cfg)}  # type: ignore[arg-type]
    changes = {}
    for key, value in overrides.items():
        if key not in names:
            raise UserError(f"unknown key {prefix}{key} (known: {', '.join(sorted(names))})")
        changes[key] = coerce(value, getattr(cfg, key), f"{prefix}{key}")
    return dataclasses.replace(cfg, **changes)  # type: ignore[type-var]
