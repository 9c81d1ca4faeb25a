"""Full-integer .tflite models through the microcontroller target: TensorFlow Lite's arithmetic, checked byte
for byte against TensorFlow Lite Micro's own interpreter (the tflite-micro package, reference kernels), the
fixed-point helpers against TensorFlow Lite's published behaviour, and bad files refused in one line."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from deepshrink.cli import main
from deepshrink.ingest.tflite_file import read_tflite_file
from deepshrink.mcu import toolchain
from deepshrink.mcu.fixed import activation_range, add_params, quantize_multiplier, softmax_params
from deepshrink.mcu.measure import HostLibrary
from deepshrink.mcu.run import write_c
from deepshrink.mcu.run_tflite import pixel_table, tflm_outputs
from deepshrink.mcu.tflite_graph import read_tflite_graph
from deepshrink.results import read_rows

from conftest import cli_error

MLPERF = Path(__file__).resolve().parents[2].parent / "shared" / "mlperf-tiny"


def _mlperf(name: str) -> Path:
    path = MLPERF / name
    if not path.exists():
        pytest.skip(f"{path} absent (MLPerf Tiny's models live in ../shared/mlperf-tiny)")
    return path


def host_outputs(path: Path, x: np.ndarray, out: Path) -> np.ndarray:
    """The generated C, built for this host, on int8 inputs (TFLM's input tensor bytes)."""
    g = read_tflite_graph(read_tflite_file(path))
    write_c(g, out, pixel_table(g), path.name, "ds")
    lib_path, warnings = toolchain.build_host(out, out)
    assert "warning:" not in warnings
    return HostLibrary(lib_path, g.tensors[g.output].size, g.input.size).quantized(x)[0]


def test_quantize_multiplier_is_tflites() -> None:
    assert quantize_multiplier(0.0) == (0, 0)
    assert quantize_multiplier(0.5) == (1 << 30, 0)  # frexp(0.5) = 0.5 * 2^0
    m, shift = quantize_multiplier(0.0039)
    assert 1 << 30 <= m < 1 << 31 and abs(m * 2.0 ** (shift - 31) - 0.0039) < 1e-9
    assert quantize_multiplier(1 - 2**-40) == (1 << 30, 1)  # rounds up to 2^31: halved, shift + 1
    assert quantize_multiplier(2.0**-40) == (0, 0)  # below 2^-31: flushed to zero as TFLite does


def test_activation_ranges() -> None:
    assert activation_range("NONE", 0.1, 3) == (-128, 127)
    assert activation_range("RELU", 0.1, 3) == (3, 127)
    assert activation_range("RELU6", 0.05, -128) == (-128, -8)  # 6 / 0.05 = 120 above the zero point
    assert activation_range("RELU_N1_TO_1", 0.01, 0) == (-100, 100)


def test_add_and_softmax_parameters() -> None:
    p = add_params((0.1, -3), (0.05, 7), (0.2, -128))
    assert p["sa"] <= 0 and p["sb"] <= 0 and (p["za"], p["zb"], p["zy"]) == (-3, 7, -128)
    assert math.isclose(p["ma"] * 2.0 ** (p["sa"] - 31), 0.5, rel_tol=1e-6)  # a's scale over twice the larger one
    s = softmax_params(1.0, 0.17185351)
    assert s["shift"] >= 0 and s["diff_min"] < 0


def test_kws_host_build_equals_tflm_byte_for_byte(tmp_path: Path) -> None:
    """MLPerf Tiny's keyword spotting model: convolutions, depthwise convolutions, average pooling, a fully
    connected layer and softmax, on 200 random inputs around the input zero point."""
    path = _mlperf("kws_ref_model.tflite")
    g = read_tflite_graph(read_tflite_file(path))
    rng = np.random.default_rng(1)
    x = np.clip(np.round(rng.normal(g.input.zp, 40, (200, g.input.size))), -128, 127).astype(np.int8)
    ours = host_outputs(path, x, tmp_path)
    ref = tflm_outputs(path, x)
    assert np.array_equal(ours, ref)
    assert len(np.unique(ref.argmax(1))) > 1  # the inputs exercise more than one class


def test_float_and_corrupt_files_exit_2_with_no_model_c(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = _mlperf("pretrainedResnet.tflite")  # float32 tensors
    msg = cli_error(monkeypatch, capsys, "mcu", str(path), "--target", "host", "--out", str(tmp_path / "a"))
    assert "float32" in msg
    truncated = tmp_path / "cut.tflite"
    truncated.write_bytes(_mlperf("kws_ref_model.tflite").read_bytes()[:5000])
    msg = cli_error(monkeypatch, capsys, "mcu", str(truncated), "--target", "host", "--out", str(tmp_path / "b"))
    assert "cut.tflite" in msg and "corrupt" in msg
    assert not (tmp_path / "a" / "model.c").exists() and not (tmp_path / "b" / "model.c").exists()


def test_cli_reports_tflm_agreement(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _mlperf("kws_ref_model.tflite")
    monkeypatch.setattr(sys, "argv", ["deepshrink", "mcu", str(path), "--target", "host", "--out", str(tmp_path),
                                      "--no-time", "--quiet"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 0
    row = read_rows(tmp_path / "results.csv")[0]
    assert float(row["mcu_tflm_identical_pct"]) == 100.0 and row["mcu_tflm_compared"] == "1000"
    header = (tmp_path / "model.h").read_text()
    assert "DS_OUTPUT_SIZE 12" in header and "H x W x C" in header
