"""Model references into the common zoos' installed packages: `torchvision.models:resnet18`,
`torchvision.models:mobilenet_v3_small`, `timm:<name>`. Built without downloading weights (weights=None,
pretrained=False: bring trained weights with --weights), with the data's class count, and adapted to
small inputs: the first convolution takes the data's channels, and a ResNet-style stem (7x7 stride-2
conv + max pool, which leaves 8x8 of a 32x32 image before the first block) becomes a 3x3 stride-1 conv.

torchvision wheels are built against one exact torch; the one matching this project's pinned torch is
not on PyPI for the CPU build, so importing it fails here — said in one line, not a traceback.
"""

import importlib
from types import ModuleType
from typing import Any

import torch
from torch import nn

from deepshrink.errors import UserError

ZOOS = ("torchvision", "timm")
SMALL = 64  # inputs up to this side get the small-image stem


def is_zoo(ref: str) -> bool:
    target = ref.rpartition(":")[0]
    return not target.endswith(".py") and target.split(".")[0] in ZOOS


def import_zoo(target: str) -> ModuleType:
    package = target.split(".")[0]
    try:
        return importlib.import_module(target)
    except ImportError as e:
        if e.name is not None and e.name.split(".")[0] == package:
            raise UserError(f"{package} is not installed (it needs a torch build matching the installed torch "
                            f"{torch.__version__}; pip install one built for it, or use examples/models.py)") from None
        raise UserError(f"{package}: importing it failed ({e}); it needs a torch build matching torch "
                        f"{torch.__version__}") from None
    except Exception as e:  # e.g. "operator torchvision::nms does not exist": built for another torch
        first = (str(e).splitlines() or [""])[0][:120]
        raise UserError(f"{package} does not import beside torch {torch.__version__} ({type(e).__name__}: {first}); "
                        "it needs a torch build matching it") from None


def build_zoo(ref: str, shape: tuple[int, int, int], num_classes: int, args: dict[str, Any]) -> nn.Module:
    target, _, name = ref.rpartition(":")
    module = import_zoo(target)
    try:
        if target == "timm":
            model = module.create_model(name, pretrained=False, num_classes=num_classes, **args)
        else:
            fn = getattr(module, name, None)
            if not callable(fn):
                raise UserError(f"model {ref!r}: no callable {name!r} in {target}")
            model = fn(weights=None, num_classes=num_classes, **args)
    except UserError:
        raise
    except Exception as e:  # the zoo's own errors: an unknown name, a bad argument
        raise UserError(f"model {ref!r}: building it raised {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model {ref!r}: returned {type(model).__name__}, not a torch.nn.Module")
    return adapt(model, shape)


def adapt(model: nn.Module, shape: tuple[int, int, int]) -> nn.Module:
    """The first convolution sized for the data's channels, and a ResNet stem made small-image friendly."""
    c, h, w = shape
    first = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        return model
    name, conv = first
    small_stem = min(h, w) <= SMALL and isinstance(getattr(model, "maxpool", None), nn.MaxPool2d)
    if conv.in_channels == c and not small_stem:
        return model
    if small_stem:
        new = nn.Conv2d(c, conv.out_channels, 3, 1, 1, bias=conv.bias is not None)
        model.maxpool = nn.Identity()
    else:
        new = nn.Conv2d(c, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,  # type: ignore[arg-type]
                        conv.dilation, conv.groups, bias=conv.bias is not None)  # type: ignore[arg-type]
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], new)
    return model
