"""Batch norm put back for a retraining and folded again (compress/renorm.py; `renorm=1` of finetune and
prune.structured)."""

import copy

import pytest
import torch
from torch import Tensor, nn

from deepshrink.checkpoint import Manifest
from deepshrink.compress import apply, parse_step
from deepshrink.compress.renorm import batch_norm_restored
from deepshrink.data import DataSplits
from deepshrink.variant import StepContext, Variant

from conftest import make_splits


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, bias=False), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 6 * 6, 10)).eval()


@pytest.fixture(scope="module")
def data() -> DataSplits:
    return make_splits(n_train=128, n_val=32, n_test=32, shape=(3, 8, 8), name="cifar10")


def _out(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model.eval()(x)


def test_the_norms_start_as_the_identity_and_leave_nothing_behind(data: DataSplits) -> None:
    model, x = _net(), data.train_x
    want = _out(model, x)
    keys = set(model.state_dict())
    with batch_norm_restored(model, x):
        norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        assert len(norms) == 2 and any("renorm_" in k for k in model.state_dict())
        assert torch.allclose(_out(model, x), want, atol=1e-4)  # eval: exactly the statistics it was given
        with torch.no_grad():
            train_mode = model.train()(x)  # batch statistics of the same images: the same numbers
        assert torch.allclose(train_mode, want, atol=1e-3)
    assert set(model.state_dict()) - {"2.bias"} == keys  # the bias-free conv gained the folded shift
    assert torch.allclose(_out(model, x), want, atol=1e-4)


def test_what_the_norms_learn_is_folded_into_the_convolutions(data: DataSplits) -> None:
    model, x = _net(), data.train_x
    with batch_norm_restored(model, x):
        g = torch.Generator().manual_seed(1)
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            with torch.no_grad():
                for t in (bn.weight, bn.bias, bn.running_mean):
                    t.add_(torch.randn(t.shape, generator=g))
                bn.running_var.mul_(torch.rand(bn.running_var.shape, generator=g) + 0.5)
        inside = _out(model, x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert torch.allclose(_out(model, x), inside, atol=1e-4)


def test_finetune_with_renorm_trains_and_keeps_the_architecture(data: DataSplits) -> None:
    v = Variant("v", _net(), Manifest(model="lenet-5", dataset="cifar10", input_shape=[3, 8, 8], num_classes=10,
                                      mean=[0.0] * 3, std=[1.0] * 3))
    before = copy.deepcopy(v.model.state_dict())
    out = apply(v, parse_step("finetune:epochs=1,lr=0.001,renorm=1"), StepContext(data, seed=0))
    after = out.model.state_dict()
    assert set(after) == set(before) | {"2.bias"}
    assert any(not torch.equal(after[k], before[k]) for k in before)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in out.model.modules())
