"""Model registry: the LeNets of the reference study, Han et al.'s LeNet-5 variant, and the MLP student.

Models are `nn.Sequential`s with named layers (fc1, conv1, ...) so that export, pruning and
quantization see plain, traceable graphs and results can name layers the way the study does.
"""

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from deepshrink.errors import UserError
from deepshrink.registry import Registry

InputShape = tuple[int, int, int]
ModelFn = Callable[[InputShape, int], nn.Module]
MODELS: Registry[ModelFn] = Registry("model")

_DATASET_SHAPES: dict[str, InputShape] = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def input_shape_for(dataset: str) -> InputShape:
    """(C, H, W) of a dataset name; `idx:PATH` folders are MNIST-layout, 28x28 greyscale."""
    if dataset.startswith("idx:"):
        return (1, 28, 28)
    if dataset not in _DATASET_SHAPES:
        raise UserError(f"unknown dataset {dataset!r} (known: {', '.join(_DATASET_SHAPES)}, idx:PATH)")
    return _DATASET_SHAPES[dataset]


def _conv_out(size: int, kernel: int, pool: int) -> int:
    return (size - kernel + 1) // pool


@MODELS.register("lenet-300-100")
def lenet_300_100(shape: InputShape, num_classes: int) -> nn.Module:
    c, h, w = shape
    return nn.Sequential(OrderedDict(
        flatten=nn.Flatten(), fc1=nn.Linear(c * h * w, 300), relu1=nn.ReLU(),
        fc2=nn.Linear(300, 100), relu2=nn.ReLU(), fc3=nn.Linear(100, num_classes),
    ))


@MODELS.register("mlp-50")
def mlp_50(shape: InputShape, num_classes: int) -> nn.Module:
    c, h, w = shape
    return nn.Sequential(OrderedDict(
        flatten=nn.Flatten(), fc1=nn.Linear(c * h * w, 50), relu1=nn.ReLU(), fc2=nn.Linear(50, num_classes),
    ))


def _lenet_conv(shape: InputShape, num_classes: int, convs: tuple[int, int], fcs: tuple[int, ...]) -> nn.Module:
    c, h, w = shape
    side_h, side_w = _conv_out(_conv_out(h, 5, 2), 5, 2), _conv_out(_conv_out(w, 5, 2), 5, 2)
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv1=nn.Conv2d(c, convs[0], 5), relu_c1=nn.ReLU(), pool1=nn.MaxPool2d(2),
        conv2=nn.Conv2d(convs[0], convs[1], 5), relu_c2=nn.ReLU(), pool2=nn.MaxPool2d(2),
        flatten=nn.Flatten(),
    )
    width = convs[1] * side_h * side_w
    for i, out in enumerate((*fcs, num_classes), start=1):
        layers[f"fc{i}"] = nn.Linear(width, out)
        if i <= len(fcs):
            layers[f"relu{i}"] = nn.ReLU()
        width = out
    return nn.Sequential(layers)


@MODELS.register("lenet-5")
def lenet_5(shape: InputShape, num_classes: int) -> nn.Module:
    """The reference study's LeNet-5: conv 6, conv 16 (5x5, no padding), fc 120, fc 84."""
    return _lenet_conv(shape, num_classes, (6, 16), (120, 84))


@MODELS.register("lenet-5-caffe")
def lenet_5_caffe(shape: InputShape, num_classes: int) -> nn.Module:
    """Caffe's LeNet-5 as used by Han et al. and Deep Compression: conv 20, conv 50, fc 500."""
    return _lenet_conv(shape, num_classes, (20, 50), (500,))


WEIGHTED: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)


def weighted_layers(model: nn.Module,
                    kinds: tuple[type[nn.Module], ...] | None = WEIGHTED) -> list[tuple[str, nn.Module]]:
    """The one walker over a model's layers that techniques act on, in model order: the prunable and
    quantizable Linear/Conv2d layers by default; `kinds=None` is every leaf holding a weight tensor
    (batch norm included), which is what parameter counts need."""
    if kinds is None:
        return [(n, m) for n, m in model.named_modules()
                if isinstance(getattr(m, "weight", None), torch.Tensor) and not list(m.children())]
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]


def weight_of(model: nn.Module, layer: str) -> torch.Tensor:
    w = model.get_submodule(layer).weight
    assert isinstance(w, torch.Tensor)
    return w


def create_model(name: str, dataset: str | InputShape, num_classes: int = 10) -> nn.Module:
    shape = input_shape_for(dataset) if isinstance(dataset, str) else dataset
    return MODELS.get(name)(shape, num_classes)


def list_models() -> list[str]:
    return MODELS.names()


def layer_shapes(model: nn.Module) -> dict[str, list[int]]:
    """Every parameter's shape by name: enough to rebuild a structurally pruned model."""
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def shrink_to(model: nn.Module, shapes: dict[str, list[int]]) -> nn.Module:
    """Replace Linear/Conv2d layers whose shapes differ from `shapes` with fresh, smaller ones.

    timm's `_pruned` idea: build the dense architecture, then shrink it to the stored manifest so a
    plain state_dict loads. Works for any model of Linear/Conv2d layers without per-model width args.
    """
    for name, module in weighted_layers(model):
        key = f"{name}.weight"
        if key not in shapes or list(weight_of(model, name).shape) == shapes[key]:
            continue
        w = shapes[key]
        bias = f"{name}.bias" in shapes
        new: nn.Module
        if isinstance(module, nn.Linear):
            new = nn.Linear(w[1], w[0], bias=bias)
        else:
            assert isinstance(module, nn.Conv2d)
            new = nn.Conv2d(w[1] * module.groups, w[0], tuple(w[2:]), stride=module.stride,  # type: ignore[arg-type]
                            padding=module.padding, groups=module.groups, bias=bias)  # type: ignore[arg-type]
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        setattr(parent, name.rpartition(".")[2], new)
    return model


def count_params(model: nn.Module) -> tuple[int, int]:
    """(total, non-zero) over all parameters."""
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    return total, nonzero
