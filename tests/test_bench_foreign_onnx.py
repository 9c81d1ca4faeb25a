"""`deepshrink bench any.onnx --dataset D`: an ONNX classifier deepshrink did not write (no manifest beside
it, its own input and output names) is timed on D's test set; one that does not fit D is exit 2."""

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from deepshrink.cli import app

from conftest import cli_error


def export(model: nn.Module, shape: tuple[int, ...], path: Path, dynamic: bool = True) -> Path:
    axes = {"pixels": {0: "n"}, "scores": {0: "n"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(1, *shape),), str(path), dynamo=False, input_names=["pixels"],
                          output_names=["scores"], dynamic_axes=axes)
    return path


def mlp(in_features: int, classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, 32), nn.ReLU(), nn.Linear(32, classes))


def bench_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    return cli_error(monkeypatch, capsys, "bench", *args)


def test_bench_foreign_onnx(tmp_path: Path, mnist_dir: Path) -> None:
    path = export(mlp(28 * 28, 10), (1, 28, 28), tmp_path / "theirs.onnx")
    assert not path.with_suffix(".json").exists()
    r = CliRunner().invoke(app, ["bench", str(path), "--dataset", "mnist", "--data-dir", str(mnist_dir),
                                 "--threads", "1", "--batch", "32", "--quiet"])
    assert r.exit_code == 0, (r.output, r.exception)
    assert "onnxruntime" in r.output and "32" in r.output


def test_bench_foreign_onnx_that_does_not_fit(tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--dataset", "mnist", "--data-dir", str(mnist_dir), "--quiet"]
    cifar = export(mlp(3 * 32 * 32, 10), (3, 32, 32), tmp_path / "cifar.onnx")
    line = bench_error(monkeypatch, capsys, str(cifar), *common)
    assert line.startswith(f"error: {cifar}: does not run on mnist's images [1, 28, 28]"), line
    five = export(mlp(28 * 28, 5), (1, 28, 28), tmp_path / "five.onnx")
    line = bench_error(monkeypatch, capsys, str(five), *common)
    assert line.startswith(f"error: {five}: outputs [2, 5]") and "10 classes" in line, line
    line = bench_error(monkeypatch, capsys, str(five), "--data-dir", str(mnist_dir))  # no --dataset, no manifest
    assert str(five) in line and "no manifest" in line, line


def test_bench_fixed_batch_or_junk_onnx(tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--dataset", "mnist", "--data-dir", str(mnist_dir), "--quiet"]
    fixed = export(mlp(28 * 28, 10), (1, 28, 28), tmp_path / "fixed.onnx", dynamic=False)
    line = bench_error(monkeypatch, capsys, str(fixed), *common)
    assert line.startswith(f"error: {fixed}: input 'pixels' has a fixed batch size of 1"), line
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07 not protobuf at all")
    line = bench_error(monkeypatch, capsys, str(junk), *common)
    assert line.startswith(f"error: {junk}: not a readable ONNX model"), line
