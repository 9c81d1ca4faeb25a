"""`deepshrink mcu` end to end on a trained, quantized LeNet-5 (synthetic MNIST): the generated C compiles
warning-free, the host build agrees with ONNX Runtime, the Cortex-M4 image runs in the emulator and equals
the host build bit for bit; bad input is refused in one line and leaves no model.c behind."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from deepshrink.cli import main
from deepshrink.mcu import toolchain
from deepshrink.mcu.emulate import Firmware
from deepshrink.mcu.measure import ort_quantize
from deepshrink.results import read_rows

from conftest import cli_error, write_mnist_folder
from mcu_helpers import Head, generate, qdq_model, write
from mcu_helpers import int8_lenet as trained_lenet

STRICT = ("-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic")


@pytest.fixture(scope="module")
def int8_lenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LeNet-5 trained one epoch on synthetic MNIST and quantized (PTQ): its shipped INT8 file."""
    root = tmp_path_factory.mktemp("mcu")
    write_mnist_folder(root / "data" / "mnist")
    return trained_lenet(root, root / "data")


def _mcu(monkeypatch: pytest.MonkeyPatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["deepshrink", "mcu", *args, "--quiet"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 0


def test_cli_builds_emulates_and_measures(int8_lenet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = int8_lenet.parents[3] / "data"
    out = tmp_path / "mcu"
    _mcu(monkeypatch, str(int8_lenet), "--out", str(out), "--images", "4", "--data-dir", str(data))
    row = read_rows(out / "results.csv")[0]
    assert float(row["mcu_match_ort_pct"]) == 100.0 and float(row["mcu_logits_exact_pct"]) == 100.0
    assert int(row["mcu_emulated_identical"]) == int(row["mcu_emulated_images"]) == 4
    assert 40_000 < int(row["mcu_flash_bytes"]) < 60_000  # 44k int8 weights + kernels
    assert int(row["mcu_ram_bytes"]) > int(row["mcu_static_ram_bytes"]) > int(row["mcu_arena_bytes"])
    macs = int(row["macs"])
    assert macs == 281_640 and macs < int(row["mcu_instructions"]) < 3 * macs
    assert int(row["mcu_cycles_est"]) > int(row["mcu_instructions"])
    assert int(row["mcu_host_warnings"]) == 0 and int(row["mcu_target_warnings"]) == 0
    assert "all-INT8" in row["notes"]
    c_rows = [r for r in read_rows(out / "latency.csv") if r["runtime"] == "c"]
    assert c_rows and all(float(r["us_per_image_median"]) > 0 for r in c_rows)
    for name in ("model.h", "model.c", "firmware.elf", "model.int8.onnx"):
        assert (out / name).is_file()
    body = (out / "model.c").read_text()
    assert "malloc" not in body and "#include <stdint.h>" in body and "#include <math.h>" not in body


@pytest.mark.parametrize("cc", ["gcc", "clang", toolchain.CROSS])
def test_generated_c_compiles_without_warnings(int8_lenet: Path, tmp_path: Path, cc: str) -> None:
    if shutil.which(cc) is None:
        if cc == "clang":
            pytest.skip("clang not installed")
        pytest.fail(f"{cc} not found: {toolchain.INSTALL_HINT}")
    model, _ = qdq_model(Head(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)), 64), (3, 8, 8))
    folder = write(generate(model, channels=3), tmp_path)
    flags = [*toolchain.TARGETS["cortex-m4"].cpu_flags, "-Os"] if cc == toolchain.CROSS else ["-O2"]
    proc = subprocess.run([cc, *STRICT, *flags, "-c", str(folder / "model.c"), "-o", str(tmp_path / "m.o")],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr


def test_emulated_image_equals_host_and_counts_every_instruction(tmp_path: Path) -> None:
    if toolchain.cross_compiler() is None:
        pytest.fail(f"{toolchain.CROSS} not found: {toolchain.INSTALL_HINT}")
    from unicorn import UC_HOOK_CODE

    model, x = qdq_model(Head(nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2)), 6 * 4 * 4), (1, 12, 12))
    gen = generate(model)
    folder = write(gen, tmp_path)
    elf, _ = toolchain.build_target(folder, folder / "fw", "cortex-m4")
    lib_path, _ = toolchain.build_host(folder, folder)
    from deepshrink.mcu.measure import HostLibrary

    host = HostLibrary(lib_path, 5, gen.graph.input.size)
    xq = ort_quantize(gen.graph, x[:3])
    expected = host.quantized(xq)[0]
    fw = Firmware.load(elf)
    seen = []
    hook = fw.uc.hook_add(UC_HOOK_CODE, lambda uc, address, size, user: seen.append(address))
    fw.uc.ctl_flush_tb()
    _, cls = fw.infer(xq[0], 5)
    fw.uc.hook_del(hook)
    fw.uc.ctl_flush_tb()
    counted, instructions, cycles = fw.count(xq[0], 5)
    # The block count includes instructions an IT block skips (they still issue); a code hook sees the rest.
    assert len(seen) <= instructions <= 1.01 * len(seen) and cycles > instructions
    for i in range(3):
        assert np.array_equal(fw.infer(xq[i], 5)[0], expected[i])
    assert np.array_equal(counted, expected[0]) and cls == int(np.argmax(expected[0]))
    assert 0 < fw.stack_bytes() < 1024


def test_bad_artifacts_are_refused_in_one_line_without_a_partial_model_c(
        int8_lenet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    data = ["--data-dir", str(int8_lenet.parents[3] / "data")]
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(int8_lenet.read_bytes()[:5000])
    assert str(cut) in cli_error(monkeypatch, capsys, "mcu", str(cut), "--dataset", "mnist", "--out", str(out))
    fp32 = int8_lenet.parents[3] / "train" / "artifacts" / "mnist-lenet-5" / "model.onnx"
    assert "float" in cli_error(monkeypatch, capsys, "mcu", str(fp32), "--out", str(out), *data)
    sigmoid, _ = qdq_model(Head(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sigmoid()), 2 * 26 * 26), (1, 28, 28))
    (tmp_path / "sig.onnx").write_bytes(sigmoid.SerializeToString())
    assert "Sigmoid" in cli_error(monkeypatch, capsys, "mcu", str(tmp_path / "sig.onnx"), "--dataset", "mnist",
                                  "--out", str(out), *data)
    assert "--target" in cli_error(monkeypatch, capsys, "mcu", str(int8_lenet), "--target", "avr", "--out", str(out))
    dsz = tmp_path / "model.dsz"
    dsz.write_bytes(b"x")
    assert ".dsz" in cli_error(monkeypatch, capsys, "mcu", str(dsz), "--out", str(out))
    assert not (out / "model.c").exists()


def test_cli_targets_a_core_without_fpu_or_dsp(int8_lenet: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`--target cortex-m0plus`: soft float, portable kernels, emulated as a Cortex-M0 (ARMv6-M), bit-identical."""
    data = int8_lenet.parents[3] / "data"
    out = tmp_path / "m0"
    _mcu(monkeypatch, str(int8_lenet), "--out", str(out), "--images", "3", "--data-dir", str(data),
         "--target", "cortex-m0plus", "--no-time")
    row = read_rows(out / "results.csv")[0]
    assert row["mcu_target"] == "cortex-m0plus" and int(row["mcu_target_warnings"]) == 0
    assert int(row["mcu_emulated_identical"]) == int(row["mcu_emulated_images"]) == 3
    assert int(row["mcu_cycles_est"]) > int(row["mcu_instructions"]) > int(row["macs"])
