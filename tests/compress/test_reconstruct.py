"""Structured pruning with the reading layer refitted (compress/prune/reconstruct.py), on a residual net without
batch norm: the shape of a converted Keras model."""

import copy

import pytest
import torch
from torch import Tensor, nn

from deepshrink.compress.prune.reconstruct import consumers, output_importance, prune_refitting
from deepshrink.compress.prune.units import prune_coupled, untied_layers
from deepshrink.data import DataSplits
from deepshrink.errors import UserError

from conftest import make_splits


class FoldedBlock(nn.Module):
    """conv1 -> relu -> [conv2 (inner) -> relu -> conv3] + stream -> relu -> pool -> fc, no batch norm."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.conv3 = nn.Conv2d(width, width, 3, padding=1)
        self.fc = nn.Linear(width, 10)

    def forward(self, x: Tensor) -> Tensor:
        s = torch.relu(self.conv1(x))
        y = torch.relu(s + self.conv3(torch.relu(self.conv2(s))))
        return self.fc(y.mean((2, 3)))


@pytest.fixture(scope="module")
def data() -> DataSplits:
    return make_splits(n_train=96, n_val=16, n_test=16, shape=(3, 12, 12), name="cifar10")


def _model(seed: int = 0) -> FoldedBlock:
    torch.manual_seed(seed)
    return FoldedBlock().eval()


def _conv3_out(model: nn.Module, x: Tensor) -> Tensor:
    got: list[Tensor] = []
    hook = model.get_submodule("conv3").register_forward_hook(lambda m, i, o: got.append(o))
    with torch.no_grad():
        model(x)
    hook.remove()
    return got[0]


def test_the_inner_conv_has_one_reader(data: DataSplits) -> None:
    model = _model()
    assert untied_layers(model, data.train_x[:1]) == ["conv2"]
    assert consumers(model, ["conv2"], data.train_x[:1]) == {"conv2": "conv3"}


def test_a_layer_read_by_several_cannot_be_refitted(data: DataSplits) -> None:
    with pytest.raises(UserError, match=r"conv1.s units are read by 2 layers"):
        consumers(_model(), ["conv1"], data.train_x[:1])


def test_refitting_brings_the_reader_closer_than_cutting_alone(data: DataSplits) -> None:
    original = _model()
    cut, refitted = copy.deepcopy(original), copy.deepcopy(original)
    prune_coupled(cut, {"conv2": 0.5}, "l1", data, data.train_x[:1])
    prune_refitting(refitted, {"conv2": 0.5}, "l1", data, data.train_x[:1])
    assert cut.conv2.out_channels == refitted.conv2.out_channels == 4 and refitted.conv3.in_channels == 4
    want = _conv3_out(original, data.train_x)
    err_cut = (_conv3_out(cut, data.train_x) - want).pow(2).mean()
    err_refit = (_conv3_out(refitted, data.train_x) - want).pow(2).mean()
    assert err_refit < 0.5 * err_cut


def test_units_that_give_the_reader_nothing_go_first_and_nothing_changes(data: DataSplits) -> None:
    """Channels 0-3 of conv2 are dead (zero weights, negative bias: relu gives 0): importance=output scores them
    0, they go, and the refit reproduces the unpruned reader's output."""
    model = _model()
    with torch.no_grad():
        model.conv2.weight[:4] = 0.0
        model.conv2.bias[:4] = -1.0
    scores = output_importance(model, ["conv2"], data)["conv2"]
    assert torch.all(scores[:4] == 0) and torch.all(scores[4:] > 0)
    original = copy.deepcopy(model)
    prune_refitting(model, {"conv2": 0.5}, "output", data, data.train_x[:1])
    assert torch.allclose(model.conv2.weight, original.conv2.weight[4:])
    assert torch.allclose(_conv3_out(model, data.train_x), _conv3_out(original, data.train_x), atol=1e-3)


def test_tied_groups_take_only_group_importances(data: DataSplits) -> None:
    with pytest.raises(UserError, match="importance=output: scores one layer's units"):
        prune_coupled(_model(), {"conv2": 0.5}, "output", data, data.train_x[:1])


def test_the_step_parses_its_keys() -> None:
    from deepshrink.compress.registry import format_step, parse_step

    cfg = parse_step("prune.structured:ratio=0.5,layers=inner,importance=output,reconstruct=1")
    assert cfg.reconstruct is True and cfg.importance == "output"
    assert "reconstruct=True" in format_step(cfg)
    with pytest.raises(UserError, match="reconstruct"):
        parse_step("prune.structured:reconstruct=maybe")
