"""Models: the registry (the LeNets of the reference study, Han et al.'s LeNet-5 variant, the MLP
student), the user's own models by reference (`PATH.py:CALLABLE` or `package.module:CALLABLE`), and
the one walker over the layers techniques act on.

Registry models are `nn.Sequential`s with named layers (fc1, conv1, ...) so that results name layers
the way the study does. A referenced callable is called with `num_classes` and `input_shape` (C, H, W)
when its signature takes them, plus the user's model arguments; it must return an `nn.Module`.
"""

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepshrink.data import check_name
from deepshrink.errors import UserError
from deepshrink.registry import Registry
from deepshrink.zoo import build_zoo, import_zoo, is_zoo

InputShape = tuple[int, int, int]
ModelFn = Callable[[InputShape, int], nn.Module]
MODELS: Registry[ModelFn] = Registry("model")

_DATASET_SHAPES: dict[str, InputShape] = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def input_shape_for(dataset: str) -> InputShape:
    """(C, H, W) of a dataset name; `idx:PATH` folders are MNIST-layout, 28x28 greyscale. Other
    forms (folder:, npz:) say their shape only once loaded: pass the data instead."""
    if dataset.startswith("idx:"):
        return (1, 28, 28)
    if dataset not in _DATASET_SHAPES:
        check_name(dataset)  # an unknown name is said as such
        raise UserError(f"dataset {dataset!r}: its input shape is known once loaded; pass the data's shape")
    return _DATASET_SHAPES[dataset]


def is_reference(name: str) -> bool:
    """`PATH.py:CALLABLE` or `package.module:CALLABLE` (registry names hold no colon)."""
    return ":" in name


def reference_file(ref: str) -> Path | None:
    target = ref.rpartition(":")[0]
    return Path(target).expanduser().resolve() if target.endswith(".py") else None


# A study's model may be a trained file (SPEC §4 "Already trained?"): its baseline is the file, not a training run.
TRAINED_FILES = (".tflite", ".onnx", ".safetensors")


def is_trained_file(name: str) -> bool:
    """A path to a trained model (float .tflite, FP32 .onnx, deepshrink checkpoint), not a name or reference."""
    return not is_reference(name) and name.endswith(TRAINED_FILES)


def display_name(model: str) -> str:
    """A model's short name for ids and tables: the registry name, a reference's callable, a file's stem."""
    if is_trained_file(model):  # a checkpoint is always model.safetensors: its folder names it
        path = Path(model)
        return path.parent.name if path.suffix == ".safetensors" and path.parent.name else path.stem
    return model.rpartition(":")[2] if is_reference(model) else model


ORIGIN = "_deepshrink_origin"


def origin_of(model: nn.Module) -> tuple[str, dict[str, Any]] | None:
    """(reference, constructor arguments) of a module `create_model` built, else None."""
    origin = model.__dict__.get(ORIGIN)
    return (origin[0], dict(origin[1])) if origin else None


def reference_of(model: nn.Module) -> str:
    """How a caller's own module is rebuilt in another process: `package.module:Class` when its module
    is importable, else `FILE.py:Class` (weights and shapes come from the checkpoint)."""
    cls = type(model)
    module = sys.modules.get(cls.__module__)
    file = getattr(module, "__file__", None)
    if cls.__module__ != "__main__" and not cls.__module__.startswith("deepshrink_user_"):
        return f"{cls.__module__}:{cls.__qualname__}"
    return f"{file}:{cls.__qualname__}" if file else f"{cls.__module__}:{cls.__qualname__}"


def canonical(model: str) -> str:
    """A file reference with its absolute path (what a checkpoint records, so it reloads from anywhere);
    registry names and module references unchanged."""
    path = reference_file(model) if is_reference(model) else None
    return f"{path}:{model.rpartition(':')[2]}" if path else model


def source_sha256(ref: str) -> str:
    """The sha256 of a file reference's source, or of a trained model file ("" for registry names and module
    references)."""
    path = reference_file(ref) if is_reference(ref) else Path(ref) if is_trained_file(ref) else None
    return hashlib.sha256(path.read_bytes()).hexdigest() if path and path.is_file() else ""


# Callables that moved since a release recorded them in checkpoints and manifests: old reference -> new.
MOVED = {
    "deepshrink.export.onnx_torch:from_onnx": "deepshrink.ingest.onnx_to_torch:from_onnx",
    "deepshrink.export.onnx_graph:from_onnx_graph": "deepshrink.ingest.onnx_graph:from_onnx_graph",
}


def _load_module(ref: str) -> Any:
    ref = MOVED.get(ref, ref)
    target = ref.rpartition(":")[0]
    path = reference_file(ref)
    if path is None:
        if is_zoo(ref):
            return import_zoo(target)
        try:
            return importlib.import_module(target)
        except ImportError as e:
            raise UserError(f"model {ref!r}: cannot import module {target!r} ({e})") from None
    if not path.is_file():
        raise UserError(f"{path}: model file not found (model {ref!r})")
    # One module per file path and content: study workers and later runs load the same file under the
    # same name, and a file edited since it was loaded in this process (a notebook) is loaded afresh.
    name = f"deepshrink_user_{hashlib.sha256(str(path).encode() + path.read_bytes()).hexdigest()[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise UserError(f"{path}:{e.lineno}: syntax error ({e.msg})") from None
    except (Exception, SystemExit) as e:  # the user's module raised (or called exit()) while being imported
        raise UserError(f"{path}: importing it raised {type(e).__name__}: {e}") from None
    sys.modules[name] = module
    return module


def resolve_reference(ref: str) -> Callable[..., Any]:
    ref = MOVED.get(ref, ref)
    attr = ref.rpartition(":")[2]
    if ref.startswith("timm:"):  # timm's models are names for timm.create_model, not attributes
        return _load_module(ref).create_model
    fn = getattr(_load_module(ref), attr, None)
    if not callable(fn):
        raise UserError(f"model {ref!r}: no callable {attr!r} in {ref.rpartition(':')[0]}")
    return fn


def _build_reference(ref: str, shape: InputShape, num_classes: int, args: dict[str, Any]) -> nn.Module:
    if is_zoo(ref):
        return build_zoo(ref, shape, num_classes, args)
    fn = resolve_reference(ref)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in (("num_classes", num_classes), ("input_shape", shape)) if k in params or takes_any}
    try:
        model = fn(**kwargs, **args)
    except Exception as e:  # the user's callable raised: a problem with the model or its arguments
        raise UserError(f"model {ref!r}: calling it raised {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model {ref!r}: returned {type(model).__name__}, not a torch.nn.Module")
    if "_parameters" not in vars(model):  # torch's own error would come later, from deep inside nn.Module
        raise UserError(f"model {ref!r}: {type(model).__name__}.__init__ never called super().__init__()")
    return model


def build_unsized(ref: str, args: dict[str, Any]) -> nn.Module:
    """A reference built with its callable's own defaults for classes and shape (no data to size it by)."""
    fn = resolve_reference(ref)
    try:
        model = fn(**args)
    except Exception as e:  # the user's callable raised: a problem with the model or its arguments
        raise UserError(f"model {ref!r}: calling it raised {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model {ref!r}: returned {type(model).__name__}, not a torch.nn.Module")
    model.__dict__[ORIGIN] = (canonical(ref), dict(args))
    return model


def check_output(model: nn.Module, name: str, shape: InputShape, num_classes: int) -> None:
    """One forward pass on zeros: the model takes the data's images and gives one logit per class."""
    was_training = getattr(model, "training", True)
    try:
        model.eval()
        with torch.no_grad():
            out = model(torch.zeros(1, *shape))
        model.train(was_training)
    except Exception as e:  # shape mismatches surface as RuntimeError from deep inside torch
        raise UserError(f"model {name!r}: a forward pass on {list(shape)} inputs failed "
                        f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]})") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"model {name!r}: outputs {got} for one image; the data has {num_classes} classes")


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


def create_model(name: str, dataset: Any, num_classes: int | None = None, **model_args: Any) -> nn.Module:
    """A registry model or a referenced one, sized for `dataset`: a dataset name, an input shape
    (C, H, W), or loaded data (anything with `input_shape` and `num_classes`)."""
    if hasattr(dataset, "input_shape") and hasattr(dataset, "num_classes"):
        shape, classes = tuple(dataset.input_shape), int(num_classes or dataset.num_classes)
    else:
        shape = input_shape_for(dataset) if isinstance(dataset, str) else tuple(dataset)
        classes = num_classes or 10
    if is_reference(name):
        model = _build_reference(name, shape, classes, model_args)
        check_output(model, name, shape, classes)
        # How to rebuild it, for when the caller hands the module itself to `ds.train`: a module
        # cannot tell which constructor arguments made it.
        model.__dict__[ORIGIN] = (canonical(name), dict(model_args))
        return model
    if model_args:
        raise UserError(f"model {name!r}: registry models take no model arguments (got {', '.join(model_args)})")
    return MODELS.get(name)(shape, classes)


def check_model_name(name: str) -> None:
    """A registry name, a reference whose file/module and callable exist (nothing is built), or a trained file."""
    if is_trained_file(name):
        if not Path(name).is_file():
            raise UserError(f"{name}: no such file (a trained model: .tflite, .onnx or a .safetensors checkpoint)")
    elif is_reference(name):
        resolve_reference(name)
    else:
        MODELS.get(name)


def list_models() -> list[str]:
    return MODELS.names()


def layer_shapes(model: nn.Module) -> dict[str, list[int]]:
    """Every parameter's shape by name: enough to rebuild a structurally pruned model."""
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def _smaller(module: nn.Module, name: str, shapes: dict[str, list[int]]) -> nn.Module | None:
    """A fresh layer like `module` with the stored shapes, or None when it already has them."""
    w = shapes.get(f"{name}.weight")
    weight = getattr(module, "weight", None)
    if w is None or not isinstance(weight, torch.Tensor) or list(weight.shape) == w:
        return None
    bias = f"{name}.bias" in shapes
    if isinstance(module, nn.Linear):
        return nn.Linear(w[1], w[0], bias=bias)
    if isinstance(module, nn.Conv1d | nn.Conv2d):
        # A depthwise conv stays depthwise: its groups follow its (pruned) channel count.
        depthwise = module.groups == module.in_channels == module.out_channels and module.groups > 1
        groups = w[0] if depthwise else module.groups
        return type(module)(w[1] * groups, w[0], module.kernel_size, stride=module.stride,  # type: ignore[arg-type]
                            padding=module.padding, dilation=module.dilation, groups=groups, bias=bias)  # type: ignore[arg-type]
    if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
        return type(module)(w[0], eps=module.eps, momentum=module.momentum, affine=module.affine,
                            track_running_stats=module.track_running_stats)
    return None


def shrink_to(model: nn.Module, shapes: dict[str, list[int]]) -> nn.Module:
    """Replace layers whose shapes differ from `shapes` with fresh, smaller ones (Linear, Conv, BatchNorm).

    timm's `_pruned` idea: build the dense architecture, then shrink it to the stored manifest so a
    plain state_dict loads. Works for any model of these layers, without per-model width arguments.
    """
    for name, module in list(model.named_modules()):
        new = _smaller(module, name, shapes)
        if new is not None:
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            setattr(parent, name.rpartition(".")[2], new)
    return model


def count_params(model: nn.Module) -> tuple[int, int]:
    """(total, non-zero) over all parameters."""
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    return total, nonzero
