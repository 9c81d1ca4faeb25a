"""The user's own models by reference (SPEC §4): `PATH.py:CALLABLE` and `package.module:CALLABLE`, with
model arguments; every bad reference a UserError naming the file or reference; the manifest records the
reference, its arguments and its source's sha256 (a changed source warns, a missing one is an error)."""

import hashlib
import importlib
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import deepshrink as ds
from deepshrink.checkpoint import load_checkpoint
from deepshrink.cli import app, main
from deepshrink.errors import UserError
from deepshrink.measure.latency import LatencyConfig
from deepshrink.models import create_model

from conftest import make_splits

MODELS_PY = '''
from torch import nn


def mlp(num_classes, input_shape):
    c, h, w = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 16), nn.ReLU(), nn.Linear(16, num_classes))


def wide(num_classes, input_shape, width=4):
    c, h, w = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, width), nn.ReLU(), nn.Linear(width, num_classes))


class ConvNet(nn.Module):
    def __init__(self, num_classes=10, input_shape=(1, 28, 28), channels=4):
        super().__init__()
        self.conv = nn.Conv2d(input_shape[0], channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.bn(self.conv(x)).relu()).flatten(1))


def no_args():
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))


def boom(num_classes):
    raise RuntimeError("no GPU here")


def not_a_module(num_classes, input_shape):
    return "a string"


def five_classes(input_shape):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], 5))


def wrong_input(num_classes):
    return nn.Linear(7, num_classes)


NOT_CALLABLE = 3
'''


@pytest.fixture
def models_py(tmp_path: Path) -> Path:
    path = tmp_path / "my_models.py"
    path.write_text(MODELS_PY)
    return path


@pytest.fixture
def fast_latency(monkeypatch: pytest.MonkeyPatch) -> None:
    run = importlib.import_module("deepshrink.study.run")
    monkeypatch.setattr(run, "_latency", lambda device, latency: LatencyConfig(
        runtimes=("onnxruntime",), threads=(1,), batch=64, repeats=1, single_calls=3))


DATA = make_splits(n_train=64, n_val=16, n_test=32)  # 1x28x28, 10 classes


def three_class_data() -> ds.Data:
    x = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8)
    return ds.Data.from_arrays(x[:30], torch.arange(30) % 3, x[30:], torch.arange(10) % 3)


def test_function_reference_sized_by_the_data(models_py: Path) -> None:
    data = three_class_data()
    model = create_model(f"{models_py}:mlp", data)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 3)
    assert model[1].in_features == 28 * 28  # type: ignore[index]


def test_class_reference_and_model_args(models_py: Path) -> None:
    model = ds.create_model(f"{models_py}:ConvNet", DATA, channels=6)
    assert type(model).__name__ == "ConvNet" and model.conv.out_channels == 6  # type: ignore[union-attr]
    wide = create_model(f"{models_py}:wide", (1, 28, 28), width=12)
    assert wide[1].out_features == 12 and wide[3].out_features == 10  # type: ignore[index]
    assert create_model(f"{models_py}:no_args", "mnist")(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_module_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ds_pkg_models_for_test.py").write_text(MODELS_PY)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = create_model("ds_pkg_models_for_test:wide", DATA, width=3)
    assert model[1].out_features == 3  # type: ignore[index]
    with pytest.raises(UserError, match="cannot import module 'no_such_pkg_xyz.models'"):
        create_model("no_such_pkg_xyz.models:net", DATA)


@pytest.mark.parametrize("ref, args, needle", [
    ("{py}:nope", {}, "model '{py}:nope': no callable 'nope' in {py}"),
    ("{py}:NOT_CALLABLE", {}, "no callable 'NOT_CALLABLE'"),
    ("{py}:boom", {}, "model '{py}:boom': calling it raised RuntimeError: no GPU here"),
    ("{py}:not_a_module", {}, "model '{py}:not_a_module': returned str, not a torch.nn.Module"),
    ("{py}:five_classes", {}, "model '{py}:five_classes': outputs (1, 5) for one image; the data has 10 classes"),
    ("{py}:wrong_input", {}, "model '{py}:wrong_input': a forward pass on [1, 28, 28] inputs failed"),
    ("{py}:wide", {"depth": 3}, "model '{py}:wide': calling it raised TypeError"),
    ("lenet-5", {"width": 8}, "model 'lenet-5': registry models take no model arguments (got width)"),
])
def test_bad_references(models_py: Path, ref: str, args: dict, needle: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(UserError, match=re.escape(needle.format(py=models_py))):
        create_model(ref.format(py=models_py), DATA, **args)


def test_missing_file_and_syntax_error(tmp_path: Path) -> None:
    missing = tmp_path / "absent.py"
    with pytest.raises(UserError, match=re.escape(f"{missing}: model file not found")):
        create_model(f"{missing}:net", DATA)
    bad = tmp_path / "broken.py"
    bad.write_text("from torch import nn\n\n\ndef net(num_classes:\n    return nn.Identity()\n")
    with pytest.raises(UserError, match=re.escape(f"{bad}:4: syntax error")):
        create_model(f"{bad}:net", DATA)
    raises = tmp_path / "raises_on_import.py"
    raises.write_text("import not_a_module_anywhere_xyz\n")
    with pytest.raises(UserError, match=re.escape(f"{raises}: importing it raised ModuleNotFoundError")):
        create_model(f"{raises}:net", DATA)
    # found by `make fuzz`: `super().__init__` without the call left torch to fail later with AttributeError
    uninit = tmp_path / "uninit.py"
    uninit.write_text("from torch import nn\n\n\nclass Net(nn.Module):\n    def __init__(self, num_classes=10):\n"
                      "        super().__init__\n")
    with pytest.raises(UserError, match=re.escape(f"{uninit}:Net': Net.__init__ never called super().__init__()")):
        create_model(f"{uninit}:Net", DATA)


def test_cli_bad_reference_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str], models_py: Path, mnist_dir: Path) -> None:
    bad = tmp_path / "broken.py"
    bad.write_text("def net(:\n")
    for ref, needle in ((f"{tmp_path / 'absent.py'}:net", f"{tmp_path / 'absent.py'}: model file not found"),
                        (f"{bad}:net", f"{bad}:1: syntax error"),
                        (f"{models_py}:missing", f"no callable 'missing' in {models_py}"),
                        (f"{models_py}:five_classes", "outputs (1, 5) for one image; the data has 10 classes")):
        monkeypatch.setattr(sys, "argv", ["deepshrink", "train", "--dataset", "mnist", "--model", ref, "--epochs",
                                          "1", "--data-dir", str(mnist_dir), "--out", str(tmp_path / "r")])
        with pytest.raises(SystemExit) as e:
            main()
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert e.value.code == 2 and len(lines) == 1 and needle in lines[0], err
    monkeypatch.setattr(sys, "argv", ["deepshrink", "train", "--dataset", "mnist", "--model", "lenet-5",
                                      "--model-arg", "width"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2 and "--model-arg 'width': expected KEY=VALUE" in capsys.readouterr().err


def test_cli_train_records_reference_args_and_source(tmp_path: Path, models_py: Path, mnist_dir: Path,
                                                     fast_latency: None) -> None:
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", "--dataset", "mnist", "--model", f"{models_py}:wide", "--model-arg",
                                 "width=8", "--epochs", "1", "--out", str(out), "--data-dir", str(mnist_dir),
                                 "--device", "cpu", "--quiet"])
    assert r.exit_code == 0, (r.output, r.exception)
    (meta,) = out.glob("artifacts/*/model.json")
    manifest = json.loads(meta.read_text())
    assert manifest["model"] == f"{models_py}:wide" and manifest["model_args"] == {"width": 8}
    assert manifest["model_sha256"] == hashlib.sha256(models_py.read_bytes()).hexdigest()
    assert manifest["shapes"]["1.weight"] == [8, 784] and manifest["num_classes"] == 10
    ckpt = meta.with_suffix(".safetensors")
    model, _ = load_checkpoint(ckpt)
    assert model[1].out_features == 8  # type: ignore[index]

    models_py.write_text(MODELS_PY + "\n# edited\n")
    with pytest.warns(UserWarning, match=re.escape(f"{models_py}: model source changed")):
        model, _ = load_checkpoint(ckpt)
    assert model[1].out_features == 8  # type: ignore[index]

    models_py.unlink()
    with pytest.raises(UserError, match=re.escape(f"{models_py}: model source file not found")):
        load_checkpoint(ckpt)


def test_own_module_trained_in_place_is_recorded(tmp_path: Path, models_py: Path, fast_latency: None) -> None:
    """An nn.Module passed to ds.train is recorded by a reference that rebuilds it."""
    module = importlib.import_module("deepshrink.models").resolve_reference(f"{models_py}:ConvNet")
    net = module(num_classes=10, input_shape=(1, 28, 28), channels=3)
    base = ds.train(net, DATA, epochs=1, out=tmp_path / "run", device="cpu")
    assert base.model is net and base.row["model"] == f"{models_py}:ConvNet"
    model, _ = load_checkpoint(tmp_path / "run" / base.row["checkpoint"])
    assert isinstance(model, nn.Module) and model.conv.out_channels == 3  # type: ignore[union-attr]
    torch.testing.assert_close(model(DATA.test_x[:4]), net.eval()(DATA.test_x[:4]))


def test_relative_reference_reloads_from_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   fast_latency: None) -> None:
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "nets.py").write_text(MODELS_PY)
    monkeypatch.chdir(tmp_path / "proj")
    base = ds.train("nets.py:wide", DATA, epochs=1, out=tmp_path / "run", device="cpu", model_args={"width": 5})
    monkeypatch.chdir(tmp_path)
    model, _ = load_checkpoint(tmp_path / "run" / base.row["checkpoint"])
    assert model[1].out_features == 5  # type: ignore[index]


def test_edited_model_file_is_loaded_afresh(tmp_path: Path) -> None:
    path = tmp_path / "edited.py"
    path.write_text(MODELS_PY)
    assert create_model(f"{path}:mlp", DATA)[1].out_features == 16  # type: ignore[index]
    path.write_text(MODELS_PY.replace("c * h * w, 16), nn.ReLU(), nn.Linear(16,", "c * h * w, 9), nn.ReLU(), "
                                      "nn.Linear(9,"))
    assert create_model(f"{path}:mlp", DATA)[1].out_features == 9  # type: ignore[index]
