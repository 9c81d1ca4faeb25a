"""Accuracy of the artifact that would ship, computed by running it, never by a stand-in."""

import numpy as np
import torch

from deepshrink.data import DataSplits
from deepshrink.measure.latency import Timeable
from deepshrink.train import accuracy


def artifact_accuracy(artifact: Timeable, data: DataSplits, runtime: str, batch: int = 1000) -> float:
    """Top-1 on the test set computed by running the shipped artifact in `runtime`."""
    run = artifact.runners[runtime](0, "cpu")
    x = data.test_x.numpy().astype(artifact.input_dtype, copy=False)
    logits = np.concatenate([run(x[i : i + batch]) for i in range(0, len(x), batch)])
    return accuracy(torch.from_numpy(np.asarray(logits, dtype=np.float32)), data.test_y)
