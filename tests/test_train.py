"""The training loop: learns, is deterministic under a seed, keeps the best validation epoch."""

import pytest
import torch

from deepshrink.config import default_train
from deepshrink.errors import UserError
from deepshrink.models import create_model
from deepshrink.train import AUGMENTS, TrainConfig, _random_crop, evaluate, fit

from conftest import make_splits


def _train(seed: int, **kw: object) -> tuple[torch.nn.Module, float]:
    data = make_splits()
    torch.manual_seed(seed)
    model = create_model("mlp-50", "mnist")
    fit(model, data, TrainConfig(epochs=2, lr=0.05, batch_size=64, seed=seed, **kw))  # type: ignore[arg-type]
    return model, evaluate(model, data.test_x, data.test_y)


def test_learns_and_is_deterministic() -> None:
    m1, acc1 = _train(0)
    m2, acc2 = _train(0)
    assert acc1 > 90.0
    assert acc1 == acc2
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    m3, _ = _train(1)
    assert not torch.equal(m1.state_dict()["fc1.weight"], m3.state_dict()["fc1.weight"])


@pytest.mark.parametrize("name", ["shift", "crop-flip"])
def test_augment_keeps_shape_and_moves_pixels(name: str) -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    out = AUGMENTS.get(name)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert not torch.equal(out, x)


def test_random_crop_cuts_each_sample_at_its_own_offset() -> None:
    """The strided gather equals cropping each zero-padded sample at the offsets drawn from the generator."""
    x = torch.randn(16, 3, 8, 8)
    out = _random_crop(x, torch.Generator().manual_seed(3), pad=2)
    gen = torch.Generator().manual_seed(3)
    oy, ox = torch.randint(0, 5, (16,), generator=gen), torch.randint(0, 5, (16,), generator=gen)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    expected = torch.stack([padded[i, :, oy[i] : oy[i] + 8, ox[i] : ox[i] + 8] for i in range(16)])
    assert torch.equal(out, expected) and out.is_contiguous()
    flipped = AUGMENTS.get("crop-flip")(x, torch.Generator().manual_seed(3))
    flip = torch.rand(16, generator=gen) < 0.5  # drawn after the shift's offsets (pad 4 for crop-flip)
    crop4 = _random_crop(x, torch.Generator().manual_seed(3), pad=4)
    assert torch.equal(flipped, torch.where(flip[:, None, None, None], crop4.flip(3), crop4))


def test_objective_and_callbacks_are_used() -> None:
    data = make_splits(n_train=64)
    calls = {"epoch": 0, "step": 0, "objective": 0}

    class Counter:
        def on_epoch_start(self, model: torch.nn.Module, epoch: int) -> None:
            calls["epoch"] += 1

        def on_step_end(self, model: torch.nn.Module) -> None:
            calls["step"] += 1

    def objective(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> dict:
        calls["objective"] += 1
        assert torch.equal(data.train_y[idx], y)
        return {"loss": torch.nn.functional.cross_entropy(model(x), y)}

    log = fit(create_model("mlp-50", "mnist"), data, TrainConfig(epochs=2, batch_size=32), objective, [Counter()])
    assert calls == {"epoch": 2, "step": 4, "objective": 4}
    assert len(log.history) == 2 and 1 <= log.epochs_to_converge() <= 2


def test_config_validation() -> None:
    with pytest.raises(UserError, match="train.optimizer='rmsprop'"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(UserError, match="train.lr"):
        TrainConfig(lr=0)
    assert default_train("cifar10", "lenet-5").augment == "crop-flip"
    assert default_train("mnist", "lenet-5", epochs=3).epochs == 3
