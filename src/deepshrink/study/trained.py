"""Already trained models as baselines (SPEC §4 "Already trained?"): a model reference with a weights file,
an FP32 ONNX classifier, or a trained `nn.Module` handed to the API. Each becomes what `compress` takes
from a checkpoint: a Variant with a manifest (no training run: train_seconds 0) and the data normalized
as the model was trained (`--normalize`, else what a .tflite file's metadata states; recorded in the
manifest, so every technique, `bench` and the microcontroller's pixel entry point use it).
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from deepshrink.checkpoint import Manifest, load_checkpoint, read_manifest
from deepshrink.compress.quantize import QuantizeConfig
from deepshrink.data import DataSplits, check_name, load_dataset
from deepshrink.data.normalize import Norm, for_channels, parse_normalize, renormalize
from deepshrink.errors import UserError
from deepshrink.ingest.onnx_file import read_onnx
from deepshrink.ingest.onnx_graph import REFERENCE as GRAPH_REFERENCE
from deepshrink.ingest.onnx_graph import graph_of
from deepshrink.ingest.onnx_to_torch import REFERENCE, convert
from deepshrink.ingest.state_dict import load_weights, read_state_dict
from deepshrink.ingest.tflite_file import read_tflite_file
from deepshrink.ingest.tflite_metadata import stated_normalization
from deepshrink.ingest.tflite_to_torch import REFERENCE as TFLITE_REFERENCE
from deepshrink.ingest.tflite_to_torch import convert_tflite
from deepshrink.models import (
    build_unsized,
    canonical,
    check_model_name,
    check_output,
    create_model,
    origin_of,
    reference_of,
)
from deepshrink.variant import Variant, variant_id

# A trained model brings its own classes: the data is measured against them, not checked for gaps.
ALLOW_EMPTY = True

TRAINED = {"trained_by": "the user (weights given, no training run)"}


@dataclass(frozen=True)
class BroughtModel:
    """What `compress` was given: a checkpoint, `.onnx` or `.tflite` path, or a model reference + weights."""

    path: Path | None = None
    model: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    weights: Path | None = None
    dataset: str | None = None
    normalize: str | None = None
    normalize_key: str = "--normalize"  # where `normalize` came from, for messages (a recipe: its model_args key)
    graph: bool = False  # an .onnx kept as its own graph (`on_graph`: INT8 PTQ the only step), not converted


def on_graph(configs: list[Any]) -> bool:
    """Whether an .onnx input's steps run on its own graph: INT8 PTQ alone is ONNX Runtime's quantizer on
    the original file (so ops the converter lacks do not matter); every other step needs a PyTorch module."""
    return len(configs) == 1 and isinstance(cfg := configs[0], QuantizeConfig) and \
        (cfg.precision, cfg.method, cfg.bits) == ("int8", "ptq", 8)


def _norm(text: str | None, key: str = "--normalize") -> Norm | None:
    return parse_normalize(text, key) if text else None


def _variant(model: nn.Module, ref: str, args: dict[str, Any], data: DataSplits, norm: Norm | None,
             seed: int = 0, name: str = "", key: str = "--normalize") -> tuple[Variant, DataSplits]:
    """A baseline Variant of an already trained module, and the data normalized as it was trained; `name`: its
    short name when the reference does not say it (an ONNX file's stem, not the converter's function)."""
    mean, std = for_channels(norm, data.input_shape[0], key) if norm else (data.mean, data.std)
    data = renormalize(data, (mean, std))
    check_output(model, ref, data.input_shape, data.num_classes)
    manifest = Manifest(model=ref, dataset=data.name, input_shape=list(data.input_shape), num_classes=data.num_classes,
                        mean=list(mean), std=list(std), train=dict(TRAINED), model_args=dict(args), name=name)
    return Variant(variant_id(data.name, manifest.display, []), model.eval(), manifest, seed=seed), data


def module_variant(model: nn.Module, data: DataSplits, normalize: str | Norm | None = None,
                   seed: int = 0) -> tuple[Variant, DataSplits]:
    """The API's trained `nn.Module` (rebuilt elsewhere by the reference `create_model` recorded, else by
    its class)."""
    origin = origin_of(model)
    ref, args = origin if origin else (reference_of(model), {})
    norm = _norm(normalize) if isinstance(normalize, str) else normalize
    return _variant(model, ref, args, data, norm, seed)


def _dataset(src: BroughtModel, what: str) -> str:
    """`src.dataset`, which the caller must name, checked before any file is read or converted."""
    if not src.dataset:
        raise UserError(f"{what}: pass --dataset (the data to measure it on)")
    check_name(src.dataset)
    return src.dataset


def _data(src: BroughtModel, what: str, data_dir: Path | None, data: DataSplits | None) -> DataSplits:
    """The data given as loaded, else by `src.dataset`."""
    if data is not None:
        return data
    return load_dataset(_dataset(src, what), data_dir, allow_empty_classes=ALLOW_EMPTY)


def brought_variant(src: BroughtModel, data_dir: Path | None = None, seed: int = 0,
                    data: DataSplits | None = None) -> tuple[Variant, DataSplits]:
    """The baseline and its data for `compress`, whichever way the model came (`data`: already loaded): a
    `model` reference with its `weights`, else a checkpoint or .onnx `path` (which flags combine is the CLI's
    to check)."""
    if src.model is not None:
        assert src.weights is not None
        check_model_name(src.model)
        state = read_state_dict(src.weights)  # a refused file is said before any data is looked for
        data = _data(src, f"--model {src.model}", data_dir, data)
        model = load_weights(create_model(src.model, data, **src.model_args), src.weights, state)
        return _variant(model, canonical(src.model), src.model_args, data, _norm(src.normalize, src.normalize_key),
                        seed, key=src.normalize_key)
    assert src.path is not None
    if src.path.suffix in (".onnx", ".tflite"):
        return _onnx(src, data_dir, seed, data)
    return _checkpoint(src, data_dir, seed, data)


def file_baseline(model: str, data: DataSplits, args: dict[str, Any], seed: int = 0) -> tuple[Variant, DataSplits]:
    """A study's trained model file (`models = ["PATH.tflite"]`) as its baseline on `data`, with the
    preprocessing its `[model_args."PATH"] normalize` names."""
    src = BroughtModel(path=Path(model), dataset=data.name, normalize=args.get("normalize"),
                       normalize_key=f'[model_args."{model}"] normalize')
    return brought_variant(src, seed=seed, data=data)


def _onnx(src: BroughtModel, data_dir: Path | None, seed: int, data: DataSplits | None) -> tuple[Variant, DataSplits]:
    assert src.path is not None
    if data is None:
        _dataset(src, str(src.path))  # a missing or bad name is said before the file is converted
    given = _norm(src.normalize, src.normalize_key)
    model, ref, norm = _convert(src.path, src.graph, given)
    if ref == TFLITE_REFERENCE and norm is None:
        raise UserError(f"{src.path}: the file does not say how its input is normalized (no normalization in its "
                        f"metadata): pass {src.normalize_key} (raw for 0-255 pixel values, mean=0,std=1 for 0-1, or "
                        "the mean and std it was trained with)")
    data = _data(src, str(src.path), data_dir, data)
    stated = given is None and norm is not None  # the file's own metadata said it
    if stated and norm is not None:  # checked here so that a wrong count names the file, not --normalize
        norm = for_channels(norm, data.input_shape[0], f"{src.path}: its metadata's input normalization")
    variant, data = _variant(model, ref, {"path": str(src.path.resolve())}, data, norm, seed, src.path.stem,
                             src.normalize_key)
    if stated:
        variant.manifest.train["normalize"] = "the file's metadata (TFLite NormalizationOptions)"
    return variant, data


def _convert(path: Path, graph: bool = False, norm: Norm | None = None) -> tuple[nn.Module, str, Norm | None]:
    """The module of an ONNX or TFLite file, the reference that rebuilds it (an ONNX file's own graph, or the
    conversion), and its input's normalization: `norm` where the caller gives one, else what a TFLite file's
    metadata states, else None."""
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if path.suffix == ".tflite":
        tf = read_tflite_file(path)
        # The metadata is read only without `norm`: a given normalization wins, even over unreadable metadata.
        return convert_tflite(tf), TFLITE_REFERENCE, norm if norm is not None else stated_normalization(tf)
    if graph:
        return graph_of(path.read_bytes(), str(path)), GRAPH_REFERENCE, norm
    return convert(read_onnx(path.read_bytes(), str(path), session=True), str(path)), REFERENCE, norm


def onnx_variant(path: Path, data: DataSplits, normalize: str | Norm | None = None, seed: int = 0,
                 graph: bool = False) -> tuple[Variant, DataSplits]:
    """The API's ONNX classifier file as a baseline on `data` (`graph`: kept as its own graph, see on_graph)."""
    norm = _norm(normalize) if isinstance(normalize, str) else normalize
    model, ref, norm = _convert(path, graph, norm)
    return _variant(model, ref, {"path": str(path.resolve())}, data, norm, seed, path.stem)


def load_model(ref: str, weights: Path | str | None = None, data: Any = None, **model_args: Any) -> nn.Module:
    """A model reference built (sized for `data` when given: data, a dataset name or a shape) and, with
    `weights`, holding a trained state dict."""
    model = create_model(ref, data, **model_args) if data is not None else build_unsized(ref, model_args)
    return load_weights(model, Path(weights)) if weights is not None else model


def _checkpoint(src: BroughtModel, data_dir: Path | None, seed: int,
                data: DataSplits | None) -> tuple[Variant, DataSplits]:
    """A deepshrink checkpoint: its manifest's normalization unless `--normalize` overrides it."""
    assert src.path is not None
    read_manifest(src.path)
    model, manifest = load_checkpoint(src.path)
    if data is None:
        data = load_dataset(src.dataset or manifest.dataset, data_dir, allow_empty_classes=ALLOW_EMPTY)
    norm = _norm(src.normalize, src.normalize_key) or (manifest.mean, manifest.std)
    manifest.mean, manifest.std = for_channels(norm, data.input_shape[0], src.normalize_key)
    data = renormalize(data, (manifest.mean, manifest.std))
    return Variant(variant_id(manifest.dataset, manifest.display, manifest.pipeline), model, manifest, seed=seed), data
