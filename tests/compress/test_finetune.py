"""The `finetune` step (a study's dense control): the model trained further as it is, with the tuned training
settings of its (dataset, model), AdamW at 3e-4 for a converted TFLite model (config.py _MODEL_DEFAULTS)."""

import copy
import importlib
from typing import Any

import pytest
import torch
from torch import nn

from deepshrink.checkpoint import Manifest
from deepshrink.compress import apply, format_step, parse_step
from deepshrink.compress.finetune import FinetuneConfig
from deepshrink.config import default_train
from deepshrink.data import DataSplits
from deepshrink.errors import UserError
from deepshrink.ingest.onnx_to_torch import REFERENCE as ONNX_REFERENCE
from deepshrink.ingest.tflite_to_torch import REFERENCE as TFLITE_REFERENCE
from deepshrink.train import TrainConfig, TrainLog
from deepshrink.variant import StepContext, Variant

from conftest import make_splits, trained_variant

finetune = importlib.import_module("deepshrink.compress.finetune")  # the module (its `fit` is spied on)


@pytest.fixture(scope="module")
def data() -> DataSplits:
    return make_splits(n_train=256, n_val=64, n_test=64)


@pytest.fixture(scope="module")
def mlp(data: DataSplits) -> Variant:
    return trained_variant(data, "mlp-50", epochs=1)


def _copy(v: Variant) -> Variant:
    return Variant(v.id, copy.deepcopy(v.model), copy.deepcopy(v.manifest), log=v.log, train_seconds=v.train_seconds,
                   epochs=v.epochs)


@pytest.mark.parametrize(("text", "needle"), [
    ("finetune:epochs=0", "finetune.epochs=0: must be >= 1"),
    ("finetune:lr=-0.1", "finetune.lr=-0.1: must be >= 0"),
    ("finetune:alpha=1.5", "finetune.alpha=1.5: must be in [0, 1]"),
    ("finetune:alpha=-0.5", "finetune.alpha=-0.5: must be in [0, 1]"),
    ("finetune:temperature=0", "finetune.temperature=0.0: must be > 0"),
    ("finetune:epochs=two", "finetune.epochs"),
    ("finetune:colour=red", "step finetune: unknown key 'colour'"),
])
def test_bad_settings_are_refused(text: str, needle: str) -> None:
    with pytest.raises(UserError) as e:
        parse_step(text)
    assert needle in str(e.value)


def test_defaults_and_canonical_text() -> None:
    assert parse_step("finetune") == FinetuneConfig(epochs=10, lr=0.0, alpha=0.0, temperature=2.0)
    assert format_step(parse_step("finetune:epochs=2")) == "finetune:epochs=2"
    assert format_step(parse_step("finetune:epochs=3,lr=0.01,alpha=0.5")) == "finetune:epochs=3,lr=0.01,alpha=0.5"


def test_it_trains_the_same_model_further(mlp: Variant, data: DataSplits) -> None:
    v = _copy(mlp)
    before = {k: t.clone() for k, t in v.model.state_dict().items()}
    out = apply(v, parse_step("finetune:epochs=2,lr=0.01"), StepContext(data, seed=0))
    after = out.model.state_dict()
    assert {k: t.shape for k, t in after.items()} == {k: t.shape for k, t in before.items()}  # nothing removed
    assert any(not torch.equal(after[k], before[k]) for k in before)  # but trained
    assert all(t.count_nonzero() == before[k].count_nonzero() for k, t in after.items() if t.dim() > 1)
    assert out.epochs == mlp.epochs + 2 and out.log is not None and len(out.log.history) == 2
    assert out.train_seconds > mlp.train_seconds
    assert out.manifest.pipeline == ["finetune:epochs=2,lr=0.01"] and mlp.manifest.pipeline == []
    assert out.id == mlp.id and out.manifest.model == "mlp-50"


def _spied(monkeypatch: pytest.MonkeyPatch) -> list[tuple[TrainConfig, Any]]:
    """Each fit's (config, objective), the training itself skipped."""
    calls: list[tuple[TrainConfig, Any]] = []

    def fit(model: nn.Module, data: DataSplits, cfg: TrainConfig, objective: Any = None, **kw: Any) -> TrainLog:
        calls.append((cfg, objective))
        return TrainLog(history=[{"epoch": e + 1, "val_acc": 50.0} for e in range(cfg.epochs)], best_epoch=1,
                        best_val_acc=50.0, seconds=0.25)

    monkeypatch.setattr(finetune, "fit", fit)
    return calls


def test_it_trains_with_the_model_s_tuned_settings(mlp: Variant, data: DataSplits,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spied(monkeypatch)
    tflite = Variant("t", nn.Sequential(nn.Flatten(), nn.Linear(784, 10)),
                     Manifest(model=TFLITE_REFERENCE, dataset="cifar10", input_shape=[1, 28, 28], num_classes=10,
                              mean=[0.0], std=[1 / 255]))
    ctx = StepContext(data, seed=3)
    apply(_copy(mlp), parse_step("finetune:epochs=2"), ctx)
    apply(_copy(mlp), parse_step("finetune:epochs=1,lr=0.01,alpha=0.5,temperature=4"), ctx)
    out = apply(tflite, parse_step("finetune:epochs=1"), ctx)
    apply(tflite, parse_step("finetune:epochs=1,lr=1e-3"), ctx)
    (registry, plain), (_, distilled), (ref, _), (ref_lr, _) = calls
    tuned = default_train("mnist", "mlp-50")
    assert (registry.optimizer, registry.lr, registry.epochs, registry.seed) == (tuned.optimizer, tuned.lr, 2, 3)
    assert plain is None and callable(distilled)  # alpha > 0: matched against the model as it came too
    assert calls[1][0].lr == 0.01
    assert (ref.optimizer, ref.lr, ref.epochs) == ("adamw", 3e-4, 1)
    assert (ref_lr.optimizer, ref_lr.lr) == ("adamw", 1e-3)
    assert out.epochs == 1 and out.train_seconds == 0.25


def test_a_converted_tflite_model_trains_with_adamw() -> None:
    for dataset in ("cifar10", "mnist", "npz:/x/d.npz"):
        cfg = default_train(dataset, TFLITE_REFERENCE)
        assert (cfg.optimizer, cfg.lr) == ("adamw", 3e-4), dataset
    assert default_train("cifar10", TFLITE_REFERENCE).augment == "crop-flip"  # the family's, otherwise
    assert default_train("cifar10", TFLITE_REFERENCE, lr=0.01).lr == 0.01  # an explicit setting still wins
    # Registry models and other references keep their own defaults.
    assert (default_train("cifar10", "lenet-5").optimizer, default_train("cifar10", "lenet-5").lr) == ("sgd", 0.05)
    assert default_train("mnist", "mlp-50") == TrainConfig(epochs=20, augment="none", lr=0.05)
    assert default_train("npz:/x/d.npz", ONNX_REFERENCE) == TrainConfig()
