"""A user's own .onnx through the default INT8 step, then `deepshrink mcu`: the step may ship INT8 weights with
float compute (the faster mode on a desktop CPU), and the target still runs it all-INT8, rebuilt from the
checkpoint with the step's own calibration (ONNX Runtime's quantizer on the same training images)."""

import sys
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from deepshrink.cli import main
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


@pytest.mark.parametrize("deploy", ["weights", "full"])
def test_an_onnx_quantized_by_the_default_step_runs_all_int8_on_the_target(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deploy: str) -> None:
    data = write_mnist_folder(tmp_path / "data" / "mnist", n_train=200, n_test=40).parent
    torch.manual_seed(0)
    path = tmp_path / "net.onnx"
    torch.onnx.export(_lenet5().eval(), (torch.zeros(1, 1, 28, 28),), str(path), input_names=["image"],
                      dynamic_axes={"image": {0: "batch"}}, dynamo=False)
    _cli(monkeypatch, "compress", str(path), "--dataset", "mnist", "--step",
         f"quantize:precision=int8,method=ptq,deploy={deploy}", "--out", str(tmp_path / "q"), "--data-dir", str(data),
         "--device", "cpu")
    row = next(r for r in read_rows(tmp_path / "q" / "results.csv") if r["pipeline"])
    shipped = tmp_path / "q" / row["artifact"]
    assert row["int8_mode"] == deploy
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(shipped)).graph.node) == (deploy == "full")
    out = tmp_path / f"mcu-{deploy}"
    _mcu_args = ["mcu", str(shipped), "--target", "host", "--out", str(out), "--data-dir", str(data), "--no-time"]
    _cli(monkeypatch, *_mcu_args)
    m = read_rows(out / "results.csv")[0]
    assert float(m["mcu_logits_exact_pct"]) == 100.0 and float(m["mcu_match_ort_pct"]) == 100.0
    assert ("rebuilt" in m["notes"]) == (deploy == "weights")
    rebuilt = onnx.load(str(out / "model.int8.onnx"))
    if deploy == "weights":  # the model deploy=full ships, the same calibration giving the same integers
        full = tmp_path / "full.onnx"
        monkeypatch.setattr(sys, "argv", [])
        _cli(monkeypatch, "compress", str(path), "--dataset", "mnist", "--step",
             "quantize:precision=int8,method=ptq,deploy=full", "--out", str(tmp_path / "f"), "--data-dir", str(data),
             "--device", "cpu")
        row_full = next(r for r in read_rows(tmp_path / "f" / "results.csv") if r["pipeline"])
        full = tmp_path / "f" / row_full["artifact"]
        assert rebuilt.graph.SerializeToString() == onnx.load(str(full)).graph.SerializeToString()
