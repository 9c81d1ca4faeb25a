"""The fast kernels of MobileNet-style layers (depthwise 3 x 3, pointwise 1 x 1, the first convolution) and
the blocked convolution kernel, on the Cortex-M4 image in the emulator (their DSP paths) and on the host
(their portable paths): logits equal to ONNX Runtime's, integer for integer."""

from pathlib import Path

import numpy as np
import pytest
from torch import nn

from deepshrink.mcu import toolchain
from deepshrink.mcu.emulate import Firmware
from deepshrink.mcu.measure import integer_logits, ort_quantize

from mcu_helpers import Head, features, generate, host_logits, qdq_model, write


def _exact_everywhere(body: nn.Module, shape: tuple[int, ...], folder: Path) -> str:
    """Host and emulated target logits against ONNX Runtime on 3 images; returns model.c."""
    net = Head(body, features(body, shape))
    model, x = qdq_model(net, shape, n=16)
    gen = generate(model, channels=shape[0])
    c, ort = host_logits(gen, folder, x)
    assert np.array_equal(c, ort), f"host: {(c != ort).sum()} of {c.size} logits differ"
    if toolchain.cross_compiler() is None:
        pytest.fail(f"{toolchain.CROSS} not found: {toolchain.INSTALL_HINT}")
    target = write(gen, folder / "target")
    elf, warnings = toolchain.build_target(target, target / "fw", "cortex-m4")
    assert "warning" not in warnings, warnings
    fw = Firmware.load(elf)
    xq = ort_quantize(gen.graph, x[:3])
    want = integer_logits(model, x[:3], gen.graph.offset)
    for i in range(3):
        assert np.array_equal(fw.infer(xq[i], 5)[0], want[i]), f"target, image {i}"
    return gen.sources.body


@pytest.mark.parametrize(("c", "stride", "pad", "size"), [(8, 1, 1, 7), (6, 2, 1, 9), (3, 1, 0, 6), (13, 2, 0, 8),
                                                          (4, 2, 1, 6)])
def test_depthwise_3x3_any_channels_stride_and_padding(tmp_path: Path, c: int, stride: int, pad: int,
                                                       size: int) -> None:
    body = nn.Sequential(nn.Conv2d(2, c, 1), nn.ReLU(), nn.Conv2d(c, c, 3, stride, pad, groups=c), nn.ReLU())
    assert "ds_dwconv_c" in _exact_everywhere(body, (2, size, size), tmp_path)


@pytest.mark.parametrize(("cin", "cout", "k", "stride", "size"), [(8, 12, 1, 1, 5), (8, 6, 3, 1, 7), (6, 9, 3, 2, 8),
                                                                  (4, 7, 3, 1, 6)])
def test_convolution_two_columns_at_a_time(tmp_path: Path, cin: int, cout: int, k: int, stride: int,
                                           size: int) -> None:
    """Pointwise and 3 x 3 on H x W x C (odd widths leave a last column alone; 6 channels are not whole
    blocks of 4), behind a first convolution on the C x H x W input."""
    body = nn.Sequential(nn.Conv2d(3, cin, 3, 1, 1), nn.ReLU(), nn.Conv2d(cin, cout, k, stride, k // 2), nn.ReLU())
    assert "ds_dots16x2(" in _exact_everywhere(body, (3, size, size), tmp_path)


class _Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, c, 3, 1, 1), nn.ReLU())
        self.b = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x):  # type: ignore[no-untyped-def]
        y = self.a(x)
        return nn.functional.relu(self.b(y) + y)


def test_convolution_with_a_fused_residual_addition(tmp_path: Path) -> None:
    _exact_everywhere(_Residual(8), (3, 7, 7), tmp_path)


def test_grouped_convolution_with_whole_blocks_per_group(tmp_path: Path) -> None:
    body = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 6, 3, 1, 1, groups=2), nn.ReLU())
    assert "ds_dots16x2(" in _exact_everywhere(body, (3, 5, 5), tmp_path)
