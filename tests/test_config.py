"""Training defaults per (dataset, model) and `--set` style typed overrides."""

import dataclasses

import pytest

from deepshrink.config import coerce, default_train, replace_fields
from deepshrink.errors import UserError
from deepshrink.measure.latency import LatencyConfig
from deepshrink.train import TrainConfig


@pytest.mark.parametrize("dataset, model, epochs, augment, lr", [
    ("mnist", "lenet-300-100", 20, "shift", 0.05),
    ("mnist", "lenet-5", 15, "shift", 0.05),
    ("mnist", "mlp-50", 20, "none", 0.05),
    ("cifar10", "lenet-300-100", 40, "crop-flip", 0.02),
    ("cifar10", "lenet-5-caffe", 25, "crop-flip", 0.03),
])
def test_default_train_per_dataset_and_model(dataset: str, model: str, epochs: int, augment: str, lr: float) -> None:
    cfg = default_train(dataset, model)
    assert (cfg.epochs, cfg.augment, cfg.lr) == (epochs, augment, lr)
    assert cfg.batch_size == TrainConfig().batch_size  # what the table does not set keeps TrainConfig's default


def test_idx_datasets_use_the_mnist_defaults() -> None:
    assert default_train("idx:/some/folder", "lenet-5") == default_train("mnist", "lenet-5")
    assert default_train("idx:/some/folder", "lenet-5") != default_train("cifar10", "lenet-5")


def test_unknown_pair_falls_back_to_the_family_defaults() -> None:
    # A user's own model gets its dataset family's augmentation (the registry baselines' choice).
    assert default_train("mnist", "nets.py:net") == TrainConfig(augment="shift")
    assert default_train("cifar10", "nets.py:net").augment == "crop-flip"
    assert default_train("npz:/x/y.npz", "nets.py:net") == TrainConfig()


def test_overrides_apply_and_none_is_ignored() -> None:
    cfg = default_train("cifar10", "lenet-5", epochs=None, lr=0.1, augment=None, seed=7)
    assert cfg.epochs == 30 and cfg.augment == "crop-flip"  # None keeps the table's value
    assert cfg.lr == 0.1 and cfg.seed == 7
    assert default_train("mnist", "lenet-5", epochs=0).epochs == 0  # a falsy value is not None
    with pytest.raises(UserError, match="train.lr"):
        default_train("mnist", "lenet-5", lr=-1.0)  # still validated by TrainConfig


@pytest.mark.parametrize("value, current, expected", [
    ("true", False, True), ("Yes", False, True), ("1", False, True),
    ("false", True, False), ("NO", True, False), ("0", True, False),
    ("12", 3, 12), ("-4", 3, -4),
    ("0.25", 1.0, 0.25), ("3", 1.0, 3.0),
    ("1, 0,4", (1, 0), (1, 0, 4)),
    ("torch,onnxruntime", ("torch",), ("torch", "onnxruntime")),
    ("a, b", (), ("a", "b")),
    ("sgd", "adamw", "sgd"),
])
def test_coerce_parses_into_the_fields_type(value: str, current: object, expected: object) -> None:
    out = coerce(value, current, "k")
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize("value, current, bad, kind", [
    ("maybe", True, "maybe", "bool"), ("2", False, "2", "bool"),
    ("1.5", 3, "1.5", "int"), ("ten", 3, "ten", "int"),
    ("fast", 0.5, "fast", "float"),
    ("1, x", (1, 0), "x", "int"),  # a tuple: the bad element is named
])
def test_coerce_bad_value_names_the_key(value: str, current: object, bad: str, kind: str) -> None:
    with pytest.raises(UserError, match=rf"^train\.thing={bad!r}: expected {kind}$"):
        coerce(value, current, "train.thing")


def test_replace_fields_coerces_and_keeps_the_rest() -> None:
    base = TrainConfig(epochs=5)
    cfg = replace_fields(base, {"epochs": "3", "lr": "0.1", "augment": "shift"}, "train.")
    assert (cfg.epochs, cfg.lr, cfg.augment) == (3, 0.1, "shift")
    assert dataclasses.replace(cfg, epochs=5, lr=base.lr, augment=base.augment) == base
    assert base.epochs == 5  # the input is not modified
    lat = replace_fields(LatencyConfig(), {"threads": "1,2", "repeats": "4"}, "measure.")
    assert lat.threads == (1, 2) and lat.repeats == 4


def test_replace_fields_rejects_unknown_keys_and_bad_values() -> None:
    with pytest.raises(UserError, match=r"unknown key train\.epoch \(known: .*epochs"):
        replace_fields(TrainConfig(), {"epoch": "3"}, "train.")
    with pytest.raises(UserError, match=r"train\.epochs='three': expected int"):
        replace_fields(TrainConfig(), {"epochs": "three"}, "train.")
    with pytest.raises(UserError, match=r"train\.epochs=-1: must be >= 0"):  # the dataclass's own checks run
        replace_fields(TrainConfig(), {"epochs": "-1"}, "train.")
