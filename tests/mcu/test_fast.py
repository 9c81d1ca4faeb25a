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
