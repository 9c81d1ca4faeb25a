"""The command line end to end on generated data: result files per SPEC §7, and exit 2 + one line for bad input."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deepshrink.results import LATENCY_COLUMNS, LAYERS_COLUMNS, RESULTS_COLUMNS

from conftest import requires_real_data

SPEC_RESULTS = ["variant", "dataset", "model", "pipeline", "precision", "sparsity", "params_total",
                "params_nonzero", "size_bytes", "size_kb", "artifact", "accuracy_pct", "baseline_accuracy_pct",
                "energy_nj_est", "train_seconds", "epochs", "seed", "checkpoint", "status"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "DEEPSHRINK_OFFLINE": "1", **(env or {})}
    full_env.pop("DEEPSHRINK_DATA", None) if env is None or "DEEPSHRINK_DATA" not in env else None
    return subprocess.run([sys.executable, "-m", "deepshrink", *args], capture_output=True, text=True,
                          env=full_env, timeout=300)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import write_mnist_folder

    root = tmp_path_factory.mktemp("cli")
    write_mnist_folder(root / "data" / "mnist", n_train=400, n_test=100)
    out = root / "run"
    r = run("train", "--dataset", "mnist", "--model", "mlp-50", "--epochs", "2", "--out", str(out),
            "--data-dir", str(root / "data"), "--quiet")
    assert r.returncode == 0, r.stderr
    return out


def test_train_writes_spec_files(trained: Path) -> None:
    for name in ("results.csv", "latency.csv", "layers.csv", "provenance.json"):
        assert (trained / name).is_file()
    (row,) = _rows(trained / "results.csv")
    assert list(row)[: len(SPEC_RESULTS)] == SPEC_RESULTS and set(RESULTS_COLUMNS) <= set(row)
    assert row["status"] == "ok" and row["precision"] == "fp32" and row["pipeline"] == ""
    assert int(row["params_total"]) == 39_760 and float(row["accuracy_pct"]) > 50
    art = trained / row["artifact"]
    assert art.suffix == ".onnx" and int(row["size_bytes"]) == art.stat().st_size
    assert (trained / row["checkpoint"]).is_file()
    lat = _rows(trained / "latency.csv")
    assert set(LATENCY_COLUMNS) <= set(lat[0])
    assert {(r["runtime"], r["threads"], r["batch"]) for r in lat} >= {("onnxruntime", "1", "256"),
                                                                       ("onnxruntime", "1", "1"), ("torch", "1", "1")}
    layers = _rows(trained / "layers.csv")
    assert [r["layer"] for r in layers] == ["fc1", "fc2"] and set(LAYERS_COLUMNS) <= set(layers[0])


def test_show_prints_table(trained: Path) -> None:
    r = run("show", str(trained))
    assert r.returncode == 0 and "mnist-mlp-50" in r.stdout


def test_bench_onnx(trained: Path) -> None:
    (row,) = _rows(trained / "results.csv")
    r = run("bench", str(trained / row["artifact"]), "--threads", "1", "--quiet",
            "--data-dir", str(trained.parent / "data"))
    assert r.returncode == 0, r.stderr
    assert "onnxruntime" in r.stdout


@pytest.mark.parametrize("args, needle", [
    (["train", "--dataset", "mnist", "--model", "lenet-9"], "unknown model 'lenet-9'"),
    (["train", "--dataset", "svhn", "--model", "lenet-5"], "unknown dataset 'svhn'"),
    (["train", "--dataset", "mnist", "--model", "lenet-5", "--data-dir", "/nonexistent"], "not found (looked in"),
    (["train", "--dataset", "idx:/nonexistent", "--model", "lenet-5"], "no such folder"),
    (["train", "--dataset", "mnist", "--model", "lenet-5", "--device", "tpu"], "--device 'tpu'"),
    (["show", "/nonexistent"], "no results.csv"),
    (["compress", "/nonexistent/model.safetensors", "--step", "quantize"], "/nonexistent/model"),
    (["data", "verify", "mnist", "--data-dir", "/nonexistent"], "not found"),
])
def test_bad_input_exit_2_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    r = run(*args, env={"XDG_CACHE_HOME": str(tmp_path)})
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_compress_unknown_step(trained: Path) -> None:
    (row,) = _rows(trained / "results.csv")
    r = run("compress", str(trained / row["checkpoint"]), "--step", "nosuchstep:a=1", "--out", str(trained / "c"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "unknown step 'nosuchstep'" in r.stderr


def test_bad_flag_is_usage_error() -> None:
    r = run("train", "--bogus")
    assert r.returncode == 2


def test_help_everywhere() -> None:
    for cmd in (["--help"], ["train", "--help"], ["compress", "--help"], ["data", "verify", "--help"]):
        r = run(*cmd)
        assert r.returncode == 0 and "Usage" in r.stdout


@requires_real_data
def test_verify_real_data() -> None:
    from conftest import real_data_dir

    r = run("data", "verify", "--data-dir", str(real_data_dir()))
    assert r.returncode == 0, r.stderr
    mnist_lines = [line for line in r.stdout.splitlines() if "ubyte" in line]
    assert len(mnist_lines) == 4 and all("canonical" in line and "non-canonical" not in line for line in mnist_lines)
    assert "5923 6742 5958 6131 5842 5421 5918 6265 5851 5949" in r.stdout
    assert r.stdout.count("non-canonical copy") == 6  # the JPEG-derived CIFAR-10 batches
