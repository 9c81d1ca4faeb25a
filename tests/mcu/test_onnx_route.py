"""A user's own .onnx through the default INT8 step, then `deepshrink mcu`: the step may ship INT8 weights with
float compute (the faster mode on a desktop CPU), and the target still runs it all-INT8, rebuilt from the
checkpoint with the step's own calibration (ONNX Runtime's quantizer on the same training images)."""

import importlib
import sys
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from deepshrink.cli import main
from deepshrink.measure.latency import LatencyConfig
from deepshrink.results import read_rows

from conftest import write_mnist_folder


def _lenet5() -> nn.Sequential:
    """examples/train_lenet5.py's network."""
    return nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(256, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                         nn.Linear(84, 10))


def _cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["deepshrink", *args, "--quiet"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 0


def _compress(monkeypatch: pytest.MonkeyPatch, onnx_file: Path, data: Path, deploy: str, out: Path) -> Path:
    _cli(monkeypatch, "compress", str(onnx_file), "--dataset", "mnist", "--step",
         f"quantize:precision=int8,method=ptq,deploy={deploy}", "--out", str(out), "--data-dir", str(data),
         "--device", "cpu")
    row = next(r for r in read_rows(out / "results.csv") if r["pipeline"])
    assert row["int8_mode"] == deploy
    return out / row["artifact"]


@pytest.mark.slow
def test_an_onnx_shipped_with_float_compute_runs_all_int8_on_the_target(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = importlib.import_module("deepshrink.study.run")
    monkeypatch.setattr(run, "_latency", lambda device, latency: LatencyConfig(
        runtimes=("onnxruntime",), threads=(1,), batch=64, repeats=1, single_calls=3))
    data = write_mnist_folder(tmp_path / "data" / "mnist", n_train=200, n_test=40).parent
    torch.manual_seed(0)
    path = tmp_path / "net.onnx"
    torch.onnx.export(_lenet5().eval(), (torch.zeros(1, 1, 28, 28),), str(path), input_names=["image"],
                      dynamic_axes={"image": {0: "batch"}}, dynamo=False)
    shipped = _compress(monkeypatch, path, data, "weights", tmp_path / "w")  # what deploy=auto picks on a desktop
    full = _compress(monkeypatch, path, data, "full", tmp_path / "f")
    assert not any(n.op_type == "QuantizeLinear" for n in onnx.load(str(shipped)).graph.node)
    out = tmp_path / "mcu"
    _cli(monkeypatch, "mcu", str(shipped), "--target", "host", "--out", str(out), "--data-dir", str(data), "--no-time")
    row = read_rows(out / "results.csv")[0]
    assert float(row["mcu_logits_exact_pct"]) == 100.0 and float(row["mcu_match_ort_pct"]) == 100.0
    assert "rebuilt from the checkpoint" in row["notes"]
    # the all-INT8 model deploy=full ships: the same quantizer on the same calibration images
    rebuilt = onnx.load(str(out / "model.int8.onnx"))
    assert rebuilt.graph.SerializeToString() == onnx.load(str(full)).graph.SerializeToString()
