"""The model verbs: `load_data`, `load_model`, `train`, `compress`. Each writes the same run-directory files
as the CLI command of the same name (which calls it) and returns what it measured."""

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from deepshrink.checkpoint import save_checkpoint
from deepshrink.compress import parse_step
from deepshrink.config import default_train
from deepshrink.data import DataSplits, check_name, load_dataset
from deepshrink.errors import UserError
from deepshrink.export import Artifact
from deepshrink.export.choice import DEFAULT_MARGIN
from deepshrink.measure.latency import LatencyConfig
from deepshrink.models import check_model_name
from deepshrink.study.run import compress_measured, train_measured
from deepshrink.study.trained import BroughtModel, brought_variant, module_variant, on_graph
from deepshrink.study.trained import load_model as _load_model
from deepshrink.variant import Variant, slug

RUNS = Path("runs")  # where every verb writes when not told `out`


@dataclass
class Result:
    """A measured variant: its results.csv row, the artifact that ships, and the model (the input of
    a further `compress`)."""

    row: dict[str, Any]
    artifact: Artifact
    variant: Variant
    out: Path
    control: "Result | None" = None  # a distilled student's no-teacher twin, measured beside it

    @property
    def model(self) -> nn.Module:
        return self.variant.model


def load_data(name: str, data_dir: str | Path | None = None, val_size: int = 5000,
              allow_empty_classes: bool = False) -> DataSplits:
    """Any dataset form of SPEC §3: `mnist`, `cifar10`, `idx:PATH`, `folder:PATH`, `npz:PATH`.
    Generic data whose labels leave a class without a training example is refused unless
    `allow_empty_classes`."""
    return load_dataset(name, Path(data_dir) if data_dir else None, val_size=val_size,
                        allow_empty_classes=allow_empty_classes)


def _data(data: DataSplits | str, data_dir: str | Path | None, allow_empty_classes: bool) -> DataSplits:
    return data if isinstance(data, DataSplits) else load_data(data, data_dir, allow_empty_classes=allow_empty_classes)


def load_model(ref: str, weights: str | Path | None = None, data: DataSplits | str | None = None,
               out: str | Path | None = None, data_dir: str | Path | None = None, **model_args: Any) -> nn.Module:
    """Your model by reference (`PATH.py:CALLABLE`, `package.module:CALLABLE`, `torchvision.models:resnet18`,
    `timm:NAME`), sized for `data` when given, holding the state dict in `weights` (.safetensors, .pt, .pth).
    With `out` (and `data`), it is also saved as a deepshrink checkpoint (OUT/model.safetensors + model.json),
    which `compress` and `search` take."""
    if out is not None and data is None:
        raise UserError(f"load_model: saving {ref} to {out} needs the data it is for (its shape and classes)")
    splits = _data(data, data_dir, True) if data is not None else None
    model = _load_model(ref, weights, splits, **model_args)
    if out is not None and splits is not None:
        variant, _ = module_variant(model, splits)
        save_checkpoint(model, variant.manifest, Path(out) / "model")
    return model


def train(model: str | nn.Module, data: DataSplits | str, epochs: int | None = None, out: str | Path | None = None,
          seed: int = 0, device: str = "auto", quiet: bool = True, model_args: dict[str, Any] | None = None,
          data_dir: str | Path | None = None, allow_empty_classes: bool = False,
          latency: LatencyConfig | None = None, choice_margin: float = DEFAULT_MARGIN,
          **train_overrides: Any) -> Result:
    """Train `model` (a registry name, a `PATH.py:CALLABLE` reference, or your own nn.Module, trained
    in place) on `data` (loaded data or a dataset name) with the tuned defaults (`train_overrides`: any
    TrainConfig field), then export and measure it; the run directory defaults to runs/train-DATASET-MODEL."""
    name = model if isinstance(model, str) else type(model).__name__
    if isinstance(data, str):  # a bad name or model is said before any data loads
        check_name(data)
    if isinstance(model, str):
        check_model_name(model)
    data = _data(data, data_dir, allow_empty_classes)
    cfg = default_train(data.name, name, epochs=epochs, seed=seed, **train_overrides)
    run_dir = Path(out) if out else RUNS / slug(f"train-{data.name}-{name}")
    measured, variant = train_measured(model, data, cfg, run_dir, device, latency, quiet, model_args, choice_margin)
    return Result(measured.row, measured.artifact, variant, run_dir)


def _configs(steps: list[Any]) -> list[Any]:
    if not steps:
        raise UserError("compress: give at least one step (NAME:key=value)")
    configs = [parse_step(s) if isinstance(s, str) else s for s in steps]  # every step checked before any work
    for c in configs:
        if not dataclasses.is_dataclass(c):
            raise UserError(f"compress: step {c!r} is neither a step string nor a ds.steps config")
    return configs


def _baseline(base: Any, configs: list[Any], data: DataSplits | str | None, normalize: str | None, seed: int,
              weights: str | Path | None, model_args: dict[str, Any] | None,
              data_dir: str | Path | None) -> tuple[Variant, DataSplits]:
    """The baseline a compress starts from, and the data normalized as it was trained."""
    if isinstance(base, nn.Module):
        if data is None:
            raise UserError("compress: pass the data your module was trained on")
        return module_variant(base, _data(data, data_dir, True), normalize, seed)
    if not isinstance(base, str | Path):
        raise UserError(f"compress: {base!r} is neither a Result, an nn.Module, a file nor a model reference")
    given = BroughtModel(path=None if weights is not None else Path(base),
                         model=str(base) if weights is not None else None, model_args=dict(model_args or {}),
                         weights=Path(weights) if weights is not None else None,
                         dataset=data if isinstance(data, str) else None, normalize=normalize)
    if given.path is not None and given.path.suffix == ".onnx" and on_graph(configs):
        given = dataclasses.replace(given, graph=True)  # ONNX Runtime's quantizer on the file as it came
    return brought_variant(given, Path(data_dir) if data_dir else None, seed,
                           data if isinstance(data, DataSplits) else None)


def compress(base: "Result | nn.Module | str | Path", steps: list[Any], data: DataSplits | str | None = None,
             out: str | Path | None = None, seed: int = 0, device: str = "auto", quiet: bool = True,
             normalize: str | None = None, weights: str | Path | None = None,
             model_args: dict[str, Any] | None = None, data_dir: str | Path | None = None,
             latency: LatencyConfig | None = None, choice_margin: float = DEFAULT_MARGIN) -> Result:
    """Apply a chain of steps (step strings or `ds.steps` configs) to a trained model, measured beside it.
    `base`: a `Result` of `train`, a trained `nn.Module` of yours, a checkpoint (.safetensors) or FP32 ONNX
    classifier path, or, with `weights` (a state dict), a model reference. `data`: loaded data or a dataset
    name (default: the checkpoint's). `normalize`: the preprocessing the model was trained with
    ("mean=0.1307,std=0.3081", per channel "mean=a+b+c,std=...", or "none"; default the data's own). The
    run directory defaults to runs/compress-BASELINE. A distilled student's no-teacher control is `.control`."""
    configs = _configs(steps)
    if isinstance(base, Result):
        if data is None:
            raise UserError("compress: pass the data to measure a result on")
        variant, splits, run_dir = base.variant, _data(data, data_dir, True), Path(out) if out else base.out
    else:
        variant, splits = _baseline(base, configs, data, normalize, seed, weights, model_args, data_dir)
        run_dir = Path(out) if out else RUNS / slug(f"compress-{variant.id}")
    measured = compress_measured(variant, configs, splits, run_dir, device, latency, quiet, seed, choice_margin)
    results = [Result(m.row, m.artifact, v, run_dir) for m, v in measured[1:]]
    if len(results) > 1:
        results[0].control = results[1]
    return results[0]
