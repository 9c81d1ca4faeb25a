"""What every exporter shares: the `Artifact` an exporter writes, the context it may use, and the registry
from a `Deployment` name (variant.py: what a technique asks for) to the exporter that writes it."""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepshrink.measure.latency import RunnerFactory
from deepshrink.registry import Registry

# The least lead a timed challenger needs, whatever the noise (a fraction of the incumbent's time); why 10 %:
# export/choice.py.
DEFAULT_MARGIN = 0.10


@dataclass
class Artifact:
    """The files a variant ships and how to run them."""

    path: Path  # primary deployable file: its bytes are the variant's `size_bytes`
    kind: str
    precision: str
    files: dict[str, int] = field(default_factory=dict)  # every file written -> bytes
    runners: dict[str, RunnerFactory] = field(default_factory=dict)  # runtime -> factory
    input_dtype: Any = np.float32
    info: dict[str, Any] = field(default_factory=dict)  # e.g. the chosen "never slower" deployment

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size


@dataclass
class ExportContext:
    """What exporters may need beyond the model: an example input and calibration images."""

    example: torch.Tensor  # (1, C, H, W) float32
    calib: torch.Tensor | None = None
    # Timing-based choices (runtime, ONNX Runtime graph, INT8 mode) keep their incumbent unless a challenger
    # is faster by more than the noise and this fraction ([measure] choice_margin; export/choice.py).
    choice_margin: float = DEFAULT_MARGIN


Exporter = Callable[[nn.Module, Path, ExportContext, dict[str, Any]], Artifact]
EXPORTERS: Registry[Exporter] = Registry("deployment")
