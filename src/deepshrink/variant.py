"""The value that flows through a pipeline: a model, its manifest, and how it will ship."""

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from deepshrink import provenance
from deepshrink.checkpoint import Manifest
from deepshrink.data import DataSplits
from deepshrink.models import display_name
from deepshrink.progress import Progress, null_progress
from deepshrink.train import TrainLog


@dataclass(frozen=True)
class Deployment:
    """How a model is meant to ship: the name of the exporter that writes it (export/exporters) and its
    options. A technique sets it; export/ reads it."""

    name: str = "fp32"
    options: tuple[tuple[str, Any], ...] = ()

    def opts(self) -> dict[str, Any]:
        return dict(self.options)


@dataclass
class Variant:
    """A model ready to ship plus what the report needs to know about how it was made."""

    id: str
    model: nn.Module
    manifest: Manifest
    deployment: Deployment = field(default_factory=Deployment)
    log: TrainLog | None = None
    train_seconds: float = 0.0
    epochs: int = 0
    seed: int = 0
    info: dict[str, Any] = field(default_factory=dict)  # scalar facts copied into results.csv


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", text).strip("-")


def dataset_display(name: str) -> str:
    """`mnist`, or a generic form's prefix and folder/file name (`folder:/a/b/pets` -> `folder-pets`)."""
    prefix, colon, path = name.partition(":")
    return f"{prefix}-{Path(path).stem}" if colon else name


def variant_id(dataset: str, model: str, pipeline: list[str]) -> str:
    """`mnist-lenet-5--prune.unstructured-sparsity=0.9+quantize`: readable, and unique per pipeline."""
    base = slug(f"{dataset_display(dataset)}-{display_name(model)}")
    if not pipeline:
        return base
    tail = slug("+".join(pipeline))
    if len(tail) > 60:
        tail = tail[:50] + "-" + provenance.config_hash(pipeline, 8)
    return f"{base}--{tail}"


@dataclass
class StepContext:
    """What a compression step may use besides the model: data, device, progress, a cache folder."""

    data: DataSplits
    device: str = "cpu"
    seed: int = 0
    progress: Progress = field(default_factory=null_progress)
    cache_dir: Path | None = None
