"""benchmarks/bench_mcu.py (deepshrink beside TensorFlow Lite Micro, both measured): the summary's columns, the
input quantization, deepshrink's side on a ds firmware image, and (slow) TFLM built for a Cortex-M4 and run in
the emulator on the MLPerf Tiny keyword-spotting model, equal to the tflite_micro Python interpreter."""

import csv
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from deepshrink.mcu import toolchain
from deepshrink.mcu.measure import HostLibrary, ort_quantize
from deepshrink.mcu.run_tflite import tflm_outputs

from mcu_helpers import Head, generate, qdq_model, write

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
import bench_mcu  # noqa: E402
import tflm_build  # noqa: E402
import tflm_run  # noqa: E402

KWS = REPO.parent / "shared" / "mlperf-tiny" / "kws_ref_model.tflite"
# The TFLM library takes well over 3 minutes to build on two cores: the slow test uses a persistent cache and
# skips unless it holds the library or DEEPSHRINK_TFLM_BUILD=1 allows building it there.
TFLM_CACHE = Path(os.environ.get("DEEPSHRINK_TFLM_CACHE", Path.home() / ".cache" / "deepshrink-tflm"))


def test_summary_has_exactly_the_columns_and_the_ratios(tmp_path: Path) -> None:
    rows = [{"model": "kws", "target": "cortex-m4", "ds_flash_bytes": 50_000, "tflm_flash_bytes": 100_000,
             "ds_ram_bytes": 20_000, "tflm_ram_bytes": 40_000, "ds_instructions": 1_000, "tflm_instructions": 4_000,
             "ds_cycles_est": 1_500, "tflm_cycles_est": 6_000, "identical_pct": 100.0, "tflm_arena_bytes": 30_000},
            {"model": "vww", "target": "cortex-m0plus", "tflm_flash_bytes": 300_000, "tflm_ram_bytes": 90_000,
             "tflm_instructions": 10, "tflm_cycles_est": 20, "ds_note": "deepshrink side failed: no route"}]
    bench_mcu.write_summary(rows, tmp_path)
    with (tmp_path / "summary.csv").open() as f:
        got = list(csv.reader(f))
    assert tuple(got[0]) == bench_mcu.SUMMARY_COLUMNS == (
        "model", "target", "ds_flash_bytes", "tflm_flash_bytes", "ds_ram_bytes", "tflm_ram_bytes", "ds_instructions",
        "tflm_instructions", "ds_cycles_est", "tflm_cycles_est", "identical_pct")
    assert got[1] == ["kws", "cortex-m4", "50000", "100000", "20000", "40000", "1000", "4000", "1500", "6000", "100.0"]
    assert got[2][2] == "" and got[2][3] == "300000" and got[2][-1] == ""
    md = (tmp_path / "summary.md").read_text()
    assert "| kws | cortex-m4 | 50000 | 100000 | 0.50 | 20000 | 40000 | 0.50 | 1000 | 4000 | 0.25 |" in md
    assert "n/a" in md and "no route" in md
    assert "tflm_arena_bytes" in (tmp_path / "details.csv").read_text().splitlines()[0]


def test_pixels_are_quantized_as_the_input_tensor_takes_them() -> None:
    resnet = tflm_run.TensorInfo((1, 32, 32, 3), 1.0, -128)  # the MLPerf Tiny ResNet-8's input: raw pixels
    px = np.array([[[[0, 128, 255]]]], np.uint8)
    assert bench_mcu.quantize_pixels(px, resnet).tolist() == [[-128, 0, 127]]
    x = bench_mcu.random_inputs(50, tflm_run.TensorInfo((1, 49, 10, 1), 0.58, 83))
    assert x.shape == (50, 490) and x.dtype == np.int8 and 60 < x.mean() < 100
    assert np.array_equal(x, bench_mcu.random_inputs(50, tflm_run.TensorInfo((1, 49, 10, 1), 0.58, 83)))


def test_ds_measure_runs_a_deepshrink_image_as_the_core(tmp_path: Path) -> None:
    if toolchain.cross_compiler() is None:
        pytest.skip(f"{toolchain.CROSS} not found")
    model, x = qdq_model(Head(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()), 4 * 6 * 6), (1, 8, 8))
    gen = generate(model)
    folder = write(gen, tmp_path / "m")
    lib_path, _ = toolchain.build_host(folder, folder)
    xq = ort_quantize(gen.graph, x[:4]).reshape(4, -1)
    expected = HostLibrary(lib_path, 5, gen.graph.input.size).quantized(xq)[0]
    for core in ("cortex-m4", "cortex-m0plus"):
        elf, _ = toolchain.build_target(folder, folder / f"fw-{core}", core)
        res = bench_mcu.ds_measure(elf, core, xq, 5, counted=1)
        assert np.array_equal(res["outputs"], expected)
        assert res["cycles"] > res["instructions"] > 0 and res["ram"] > res["static_ram"] > 0 and res["flash"] > 0


@pytest.mark.slow
def test_tflm_built_for_cortex_m4_equals_the_python_interpreter_on_kws(tmp_path: Path) -> None:
    if shutil.which(tflm_build.CXX) is None or not (tflm_build.DEFAULT_TFLM / "tensorflow").is_dir() \
            or not KWS.is_file():
        pytest.skip("arm-none-eabi-g++, ../shared/tflm or the MLPerf Tiny models are absent")
    if not (TFLM_CACHE / "cortex-m4" / "libtflm.a").is_file() and not os.environ.get("DEEPSHRINK_TFLM_BUILD"):
        pytest.skip(f"no TFLM library in {TFLM_CACHE} (build it: python benchmarks/tflm_build.py --core cortex-m4 "
                    f"--cache {TFLM_CACHE}, or set DEEPSHRINK_TFLM_BUILD=1)")
    info = tflm_run.model_info(KWS)
    assert info.ops == ("CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "RESHAPE", "FULLY_CONNECTED", "SOFTMAX")
    x = bench_mcu.random_inputs(2, info.input)
    res = tflm_run.tflm_side(KWS, "cortex-m4", TFLM_CACHE, tmp_path, x, counted=1)
    assert np.array_equal(res.outputs, tflm_outputs(KWS, x))
    assert res.flash > KWS.stat().st_size and res.arena >= res.arena_used > 0
    assert res.ram > res.static_ram > res.arena and res.stack > 0
    assert res.cycles > res.instructions > 1_000_000
