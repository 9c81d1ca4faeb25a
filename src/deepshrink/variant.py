"""The value that flows through a pipeline: a model, its manifest, and how it will ship."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from deepshrink.checkpoint import Manifest
from deepshrink.data import DataSplits
from deepshrink.export import Deployment
from deepshrink.progress import Progress, null_progress
from deepshrink.train import TrainLog


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


@dataclass
class StepContext:
    """What a compression step may use besides the model: data, device, progress, a cache folder."""

    data: DataSplits
    device: str = "cpu"
    seed: int = 0
    progress: Progress = field(default_factory=null_progress)
    cache_dir: Path | None = None
