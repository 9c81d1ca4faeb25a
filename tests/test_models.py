"""The registry builds the SPEC §4 architectures with their exact parameter counts."""

import pytest
import torch

from deepshrink.errors import UserError
from deepshrink.models import count_params, create_model, layer_shapes, list_models, shrink_to

SPEC_PARAMS = {
    ("lenet-300-100", "mnist"): 266_610, ("lenet-300-100", "cifar10"): 953_010,
    ("lenet-5", "mnist"): 44_426, ("lenet-5", "cifar10"): 62_006,
    ("lenet-5-caffe", "mnist"): 431_080,
    ("mlp-50", "mnist"): 39_760, ("mlp-50", "cifar10"): 154_160,
}


@pytest.mark.parametrize(("name", "dataset"), sorted(SPEC_PARAMS))
def test_param_counts(name: str, dataset: str) -> None:
    model = create_model(name, dataset)
    assert count_params(model)[0] == SPEC_PARAMS[(name, dataset)]
    shape = (1, 28, 28) if dataset == "mnist" else (3, 32, 32)
    assert model(torch.zeros(2, *shape)).shape == (2, 10)


def test_registry_lists_and_rejects() -> None:
    assert set(list_models()) == {"lenet-300-100", "lenet-5", "lenet-5-caffe", "mlp-50"}
    with pytest.raises(UserError, match="unknown model 'lenet-6'"):
        create_model("lenet-6", "mnist")
    with pytest.raises(UserError, match="unknown dataset 'svhn'"):
        create_model("lenet-5", "svhn")


def test_shrink_to_rebuilds_smaller_layers() -> None:
    small = create_model("lenet-5", "mnist")
    small.conv2 = torch.nn.Conv2d(6, 9, 5)
    small.fc1 = torch.nn.Linear(9 * 16, 30)
    small.fc2 = torch.nn.Linear(30, 84)
    rebuilt = shrink_to(create_model("lenet-5", "mnist"), layer_shapes(small))
    rebuilt.load_state_dict(small.state_dict())
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(rebuilt(x), small(x))
