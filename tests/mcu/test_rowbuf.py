"""The row-buffer convolution (kernels.c.j2, ds_conv_rb and its column kernels): layers of 16 channels take
it (3x3 stride 1 and 2, SAME and VALID, 1x1, a fused residual addition; output widths taken in threes, in
pairs and a column alone), and their outputs equal TensorFlow Lite Micro's on this host, on the Cortex-M4
(the DSP kernels) and on the Cortex-M0+ (the portable ones) byte for byte; in ONNX Runtime's float
arithmetic (deepshrink's own models) they equal ONNX Runtime's."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_ops import _exact, _Residual
from torch import nn

from deepshrink.ingest.tflite_file import TfModel, read_tflite_file
from deepshrink.ingest.tflite_write import write_tflite
from deepshrink.mcu import toolchain
from deepshrink.mcu.emulate import Firmware
from deepshrink.mcu.run import write_c
from deepshrink.mcu.run_tflite import pixel_table, tflm_outputs
from deepshrink.mcu.tflite_graph import read_tflite_graph

from test_tflite import host_outputs
from tflite_nets import Net, conv, head, residual


def _network(seed: int) -> TfModel:
    n = Net(np.random.default_rng(seed))
    hwc = (7, 9, 16)
    x = n.act((1, *hwc))
    x, hwc = conv(n, x, hwc, 3, 1, True, 16, act="RELU6")
    x, hwc = residual(n, x, hwc)
    x, hwc = conv(n, x, hwc, 3, 2, False, 12, act="RELU")  # 3 x 4: two pairs of columns
    x, hwc = conv(n, x, hwc, 3, 1, True, 10, act="NONE")  # 10 rows: not in groups of 4, ds_conv's
    x, hwc = conv(n, x, hwc, 3, 2, False, 16, act="RELU")  # 10 channels padded to 12; 1 x 1: a column alone
    x, hwc = conv(n, x, hwc, 1, 1, True, 8, act="NONE")
    return head(n, x, hwc, seed)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    path = tmp_path_factory.mktemp("rowbuf") / "rowbuf.tflite"
    path.write_bytes(write_tflite(_network(3)))
    x = np.random.default_rng(3).integers(-128, 128, (24, 7 * 9 * 16)).astype(np.int8)
    return path, x


def test_sixteen_channel_layers_take_the_row_buffer(model: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    g = read_tflite_graph(read_tflite_file(model[0]))
    write_c(g, tmp_path, pixel_table(g), "rowbuf", "ds")
    body = (tmp_path / "model.c").read_text()
    assert body.count("ds_conv_rb(&") == 5 and body.count("ds_conv(&") == 1


def test_the_row_buffer_equals_tflm(model: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, x = model
    assert np.array_equal(host_outputs(path, x, tmp_path / "c"), tflm_outputs(path, x))


@pytest.mark.parametrize(("core", "optimize"), [("cortex-m4", "speed"), ("cortex-m4", "size"),
                                                ("cortex-m0plus", "speed")])
def test_each_core_equals_the_host(model: tuple[Path, np.ndarray], tmp_path: Path, core: str, optimize: str) -> None:
    if toolchain.cross_compiler() is None:
        pytest.skip(f"{toolchain.CROSS} not found: {toolchain.INSTALL_HINT}")
    path, x = model
    expected = host_outputs(path, x[:4], tmp_path / "host")
    g = replace(read_tflite_graph(read_tflite_file(path)), optimize=optimize)
    write_c(g, tmp_path / core, pixel_table(g), "rowbuf", "ds")
    body = (tmp_path / core / "model.c").read_text()
    assert ("ds_conv_cols2(" in body) == (optimize == "size") and ("_u6_3(" in body) == (optimize == "speed")
    elf, _ = toolchain.build_target(tmp_path / core, tmp_path / core / "fw", core)
    fw = Firmware.load(elf, core=core)
    for i in range(len(expected)):
        assert np.array_equal(fw.infer(x[i], expected.shape[1])[0], expected[i])


def test_the_onnx_route_in_float_arithmetic(tmp_path: Path) -> None:
    # 8 and 16 channels in: rows of 72 and 144 values; the second convolution of the block adds in place.
    _exact(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), _Residual(8, 1)), (3, 7, 7), tmp_path)
