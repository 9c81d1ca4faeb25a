"""Random small CNNs of the operators docs/mcu.md lists, quantized by the repo's ONNX Runtime route: every one
must compile, and its C must compute ONNX Runtime's logits integer for integer. The draws include what a
hand-written test tends to miss: a pooling or a residual addition straight on the network input (which
arrives C x H x W; the rest is stored H x W x C), an average pooling there (which the quantizer leaves in
float unless told otherwise), grouped and depthwise convolutions, strides, paddings."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deepshrink.mcu import toolchain
from deepshrink.mcu.emulate import Firmware
from deepshrink.mcu.measure import ort_quantize

from mcu_helpers import Head, features, generate, host_logits, qdq_model, write

NETS = 36  # seeded: the same networks every run


class _Residual(nn.Module):
    """x + f(x), f a shape-keeping convolution (maybe grouped), maybe behind a ReLU."""

    def __init__(self, c: int, k: int, groups: int, relu: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, k, 1, k // 2, groups=groups)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + (torch.relu(y) if self.relu else y)


def _conv(rng: np.random.Generator, c: int, size: int) -> tuple[nn.Module, int, int]:
    k = int(rng.choice([1, 3])) if size >= 3 else 1
    stride, pad = int(rng.choice([1, 2])), int(rng.choice([0, 1])) if k == 3 else 0
    kind = rng.choice(["full", "full", "depthwise", "grouped"])
    out = c if kind == "depthwise" else int(rng.integers(2, 9))
    groups = c if kind == "depthwise" else 2 if kind == "grouped" and c % 2 == 0 and out % 2 == 0 else 1
    return nn.Conv2d(c, out, k, stride, pad, groups=groups), out, (size + 2 * pad - k) // stride + 1


def _pool(rng: np.random.Generator, size: int) -> tuple[nn.Module, int]:
    k = int(rng.choice([2, 3]))
    stride, pad = int(rng.choice([1, 2])), int(rng.choice([0, 1]))
    if rng.random() < 0.5:
        return nn.MaxPool2d(k, stride, pad), (size + 2 * pad - k) // stride + 1
    return nn.AvgPool2d(k, stride, pad, count_include_pad=bool(rng.random() < 0.5)), (size + 2 * pad - k) // stride + 1


def _layer(rng: np.random.Generator, c: int, size: int) -> tuple[nn.Module, int, int]:
    """One layer drawn for a c x size x size tensor: (it, channels out, size out)."""
    kind = rng.choice(["conv", "conv", "pool", "residual", "relu"])
    if kind == "pool" and size >= 4:
        pool, out = _pool(rng, size)
        return pool, c, out
    if kind == "residual":
        groups = c if rng.random() < 0.3 else 1
        return _Residual(c, int(rng.choice([1, 3])), groups, bool(rng.random() < 0.5)), c, size
    if kind == "relu":
        return nn.ReLU(), c, size
    return _conv(rng, c, size)


def random_net(seed: int) -> tuple[nn.Module, tuple[int, int, int]]:
    """A small CNN (input 1 or 3 channels, 8x8 to 12x12): 1-4 drawn layers, then a classifier behind a
    global average pooling or a flatten, maybe with a hidden fully connected layer."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    c0, size0 = int(rng.choice([1, 3])), int(rng.integers(8, 13))
    layers: list[nn.Module] = []
    c, size = c0, size0
    for _ in range(int(rng.integers(1, 5))):
        layer, c, size = _layer(rng, c, size)
        layers.append(layer)
    if rng.random() < 0.4:
        layers.append(nn.AdaptiveAvgPool2d(1))
    body = nn.Sequential(*layers, nn.Flatten())
    if rng.random() < 0.3:
        body.append(nn.Linear(features(body, (c0, size0, size0)), 7))
        body.append(nn.ReLU())
    shape = (c0, size0, size0)
    return Head(body, features(body, shape)), shape


@pytest.mark.parametrize("seed", range(NETS))
def test_random_network_compiles_and_equals_onnx_runtime(tmp_path: Path, seed: int) -> None:
    net, shape = random_net(seed)
    model, x = qdq_model(net, shape, n=32, seed=seed)
    gen = generate(model, channels=shape[0])
    c, ort = host_logits(gen, tmp_path, x)
    assert np.array_equal(c, ort), f"{net}: {(c != ort).sum()} of {c.size} logits differ"


# 18: a residual addition on a 3-channel input (the convolution adds in place over ds_hwc's copy); 32: an
# average pooling on the input (ds_hwc) and a max pooling that requantizes (ds_maxpoolq).
@pytest.mark.parametrize("seed", [18, 32])
def test_random_network_on_the_cortex_m4_equals_onnx_runtime(tmp_path: Path, seed: int) -> None:
    if toolchain.cross_compiler() is None:
        pytest.fail(f"{toolchain.CROSS} not found: {toolchain.INSTALL_HINT}")
    net, shape = random_net(seed)
    model, x = qdq_model(net, shape, n=32, seed=seed)
    gen = generate(model, channels=shape[0])
    kernels = {c.kernel for c in gen.prog.calls}
    assert "ds_hwc" in kernels and (seed != 32 or "ds_maxpoolq" in kernels)
    folder = write(gen, tmp_path)
    elf, warnings = toolchain.build_target(folder, folder / "fw", "cortex-m4")
    assert "warning" not in warnings, warnings
    _, ort = host_logits(gen, tmp_path, x[:4])
    fw = Firmware.load(elf)
    xq = ort_quantize(gen.graph, x[:4])
    for i in range(4):
        assert np.array_equal(fw.infer(xq[i], ort.shape[1])[0], ort[i])
