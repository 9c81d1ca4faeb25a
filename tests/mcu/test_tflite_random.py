"""Random full-integer TFLite networks of every supported operator (tflite_nets.py): each one compiles, and
the C's outputs equal TensorFlow Lite Micro's interpreter byte for byte (`make test` proves the arithmetic on
every change, with or without ../shared)."""

from pathlib import Path

import numpy as np
import pytest

from deepshrink.ingest.tflite_write import write_tflite
from deepshrink.mcu.run_tflite import tflm_outputs

from test_tflite import host_outputs
from tflite_nets import random_tflite

SEEDS = range(36)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_network_equals_tflm(seed: int, tmp_path: Path) -> None:
    model = random_tflite(seed)
    path = tmp_path / model.source
    path.write_bytes(write_tflite(model))
    t = model.tensors[model.inputs[0]]
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, (40, int(np.prod(t.shape)))).astype(np.int8)
    assert np.array_equal(host_outputs(path, x, tmp_path / "c"), tflm_outputs(path, x))


def test_the_draws_cover_every_operator() -> None:
    ops = {op.op for seed in SEEDS for op in random_tflite(seed).operators}
    assert ops == {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "AVERAGE_POOL_2D", "MAX_POOL_2D",
                   "RESHAPE", "SOFTMAX"}
