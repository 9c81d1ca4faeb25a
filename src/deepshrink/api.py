"""The public verbs (SPEC §10): `load_data`, `create_model`, `train`, `compress`, `measure`, `study`.
The CLI is a thin layer over these; each writes the same run-directory files the CLI does and returns
what it measured. Errors in what the caller passes raise `UserError` with the CLI's one-line message.

    import deepshrink as ds
    data = ds.load_data("mnist")                      # or ds.Data.from_arrays(x_train, y_train, x_test, y_test)
    base = ds.train("lenet-5", data, epochs=2, out="runs/mine")        # or any nn.Module of yours
    small = ds.compress(base, ["prune.structured:ratio=0.5", ds.steps.Quantize(method="qat")], data)
    small.row["accuracy_pct"], small.row["size_bytes"], small.artifact.path
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from deepshrink.api_search import recipe_search, run_recipe_search
from deepshrink.bench import bench_artifact
from deepshrink.compress import parse_step
from deepshrink.config import default_train
from deepshrink.data import DataSplits, load_dataset
from deepshrink.errors import UserError
from deepshrink.export import Artifact
from deepshrink.measure.latency import LatencyConfig, measure_latency
from deepshrink.models import create_model
from deepshrink.study.recipe import load_recipe
from deepshrink.study.run import compress_measured, run_study, train_measured
from deepshrink.study.trained import load_model as trained_model
from deepshrink.study.trained import module_variant, on_graph, onnx_variant
from deepshrink.variant import Variant, slug

__all__ = ["Result", "compress", "create_model", "load_data", "load_model", "measure", "study", "train"]


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


def load_data(name: str, data_dir: Path | None = None, val_size: int = 5000,
              allow_empty_classes: bool = False) -> DataSplits:
    """Any dataset form of SPEC §3: `mnist`, `cifar10`, `idx:PATH`, `folder:PATH`, `npz:PATH`.
    Generic data whose labels leave a class without a training example is refused unless
    `allow_empty_classes`."""
    return load_dataset(name, Path(data_dir) if data_dir else None, val_size=val_size,
                        allow_empty_classes=allow_empty_classes)


def train(model: str | nn.Module, data: DataSplits, epochs: int | None = None, out: str | Path | None = None,
          seed: int = 0, device: str = "auto", quiet: bool = True, model_args: dict[str, Any] | None = None,
          **train_overrides: Any) -> Result:
    """Train `model` (a registry name, a `PATH.py:CALLABLE` reference, or your own nn.Module, trained
    in place) on `data` with the tuned defaults (`train_overrides`: any TrainConfig field), then export
    and measure it."""
    name = model if isinstance(model, str) else type(model).__name__
    cfg = default_train(data.name, name, epochs=epochs, seed=seed, **train_overrides)
    run_dir = Path(out) if out else Path("runs") / slug(f"train-{data.name}-{name}")
    measured, variant = train_measured(model, data, cfg, run_dir, device, quiet=quiet, model_args=model_args)
    return Result(measured.row, measured.artifact, variant, run_dir)


def compress(base: "Result | nn.Module | str | Path", steps: list[Any], data: DataSplits, out: str | Path | None = None,
             seed: int = 0, device: str = "auto", quiet: bool = True, normalize: str | None = None) -> Result:
    """Apply a chain of steps (step strings or `ds.steps` configs) to a trained model, measured beside it:
    a `Result` of `train`, a trained `nn.Module` of yours, or an FP32 ONNX classifier's path (both measured
    as the baseline first). `normalize` is the preprocessing your model was trained with
    ("mean=0.1307,std=0.3081", per channel "mean=a+b+c,std=...", or "none"; default the data's own)."""
    configs = [parse_step(s) if isinstance(s, str) else s for s in steps]
    for c in configs:
        if not dataclasses.is_dataclass(c):
            raise UserError(f"compress: step {c!r} is neither a step string nor a ds.steps config")
    if isinstance(base, Result):
        variant, run_dir = base.variant, Path(out) if out else base.out
    else:
        if isinstance(base, nn.Module):
            variant, data = module_variant(base, data, normalize, seed)
        elif Path(base).suffix == ".onnx":
            variant, data = onnx_variant(Path(base), data, normalize, seed, graph=on_graph(configs))
        else:
            raise UserError(f"compress: {base!r} is neither a Result, an nn.Module nor an .onnx path")
        run_dir = Path(out) if out else Path("runs") / slug(f"compress-{variant.id}")
    measured = compress_measured(variant, configs, data, run_dir, device, quiet=quiet, seed=seed)
    results = [Result(m.row, m.artifact, v, run_dir) for m, v in measured[1:]]
    if len(results) > 1:
        results[0].control = results[1]
    return results[0]


def load_model(ref: str, weights: str | Path | None = None, data: Any = None, **model_args: Any) -> nn.Module:
    """Your model by reference (`PATH.py:CALLABLE`, `package.module:CALLABLE`, `torchvision.models:resnet18`,
    `timm:NAME`), sized for `data` when given, holding the state dict in `weights` (.safetensors, .pt, .pth)."""
    return trained_model(ref, weights, data, **model_args)


def measure(target: Result | str | Path, data: DataSplits | None = None, runtime: str = "onnxruntime",
            threads: int = 1, batch: int = 256, device: str = "cpu", quiet: bool = True) -> list[dict[str, Any]]:
    """Latency rows (as in latency.csv) of a result's artifact on `data`, or of an artifact file (then
    `data` or the file's manifest says which test set)."""
    if isinstance(target, Result):
        if data is None:
            raise UserError("measure: pass the data to time a result on")
        cfg = LatencyConfig(runtimes=(runtime,), threads=(threads,), batch=batch, devices=(device,))
        return measure_latency([(target.row["variant"], target.artifact)], data.test_x.numpy(), cfg)
    return bench_artifact(Path(target), runtime, threads, batch, None, device, quiet,
                          dataset=data.name if data is not None else None)


def study(recipe: str | Path, out: str | Path | None = None, jobs: int | None = None,
          overrides: tuple[str, ...] = (), fresh: bool = False, data_dir: str | Path | None = None,
          device: str = "auto", quiet: bool = True, executor: str = "local",
          address: str | None = None, allow_empty_classes: bool = False) -> tuple[Path, dict[str, str]]:
    """Run a whole study from a recipe (resumes by default); (run directory, variant -> status).
    `executor="ray"` runs its units on the Ray cluster at `address` (else $RAY_ADDRESS, else a local Ray)."""
    loaded = load_recipe(str(recipe), list(overrides))
    plan = recipe_search(loaded)  # its [search] checked before any work
    run_dir, statuses = run_study(str(recipe), Path(out) if out else None, Path(data_dir) if data_dir else None,
                                  device, jobs, overrides, fresh, quiet, executor, address, allow_empty_classes)
    if plan is not None:
        run_recipe_search(run_dir, plan, loaded, Path(data_dir) if data_dir else None, device, quiet, address)
    return run_dir, statuses
