"""Already trained models (README "Already trained?"): a reference with a weights file, an ONNX classifier
converted to PyTorch, a trained nn.Module through the API; `--normalize`; the zoo references; and a
pickled payload in a .pt that is refused without ever running."""

import csv
import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

import deepshrink as ds
from deepshrink.cli import app
from deepshrink.data.normalize import parse_normalize, renormalize
from deepshrink.errors import UserError
from deepshrink.ingest.onnx_to_torch import OnnxNet, from_onnx
from deepshrink.ingest.state_dict import load_weights, read_state_dict
from deepshrink.measure.latency import LatencyConfig
from deepshrink.models import create_model

from conftest import cli_error, make_splits, synthetic_images

MODEL_PY = '''
from torch import nn


def net(num_classes=10):
    return nn.Sequential(nn.Conv2d(1, 4, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(576, num_classes))
'''


class Payload:
    """What a hostile .pt holds: unpickling it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:  # type: ignore[type-arg]
        return (Path.touch, (self.marker,))


@pytest.fixture
def fast_latency(monkeypatch: pytest.MonkeyPatch) -> None:
    run = importlib.import_module("deepshrink.study.run")
    monkeypatch.setattr(run, "_latency", lambda device, latency: LatencyConfig(
        runtimes=("onnxruntime",), threads=(1,), batch=64, repeats=1, single_calls=3))


@pytest.fixture
def model_py(tmp_path: Path) -> Path:
    path = tmp_path / "user_net.py"
    path.write_text(MODEL_PY)
    return path


def test_parse_normalize() -> None:
    assert parse_normalize("mean=0.1307,std=0.3081") == ([0.1307], [0.3081])
    assert parse_normalize("mean=0.49+0.48+0.45,std=0.2+0.3+0.4") == ([0.49, 0.48, 0.45], [0.2, 0.3, 0.4])
    assert parse_normalize("none") == ([0.0], [1.0])
    for bad, needle in (("mean=0.1", "expected mean="), ("mean=a,std=1", "'a' is not a number"),
                        ("mean=0,std=0", "must be positive")):
        with pytest.raises(UserError, match=needle):
            parse_normalize(bad)


def test_renormalize_is_exact_from_pixels() -> None:
    x, y = synthetic_images(60, (3, 8, 8))
    data = ds.Data.from_arrays(x[:40], y[:40], x[40:], y[40:], val_size=0)
    again = renormalize(data, ([0.5, 0.4, 0.3], [0.25, 0.2, 0.1]))
    mean = np.array([0.5, 0.4, 0.3], np.float32)[None, :, None, None]
    std = np.array([0.25, 0.2, 0.1], np.float32)[None, :, None, None]
    assert np.array_equal(again.test_x.numpy(), (x[40:].astype(np.float32) / np.float32(255) - mean) / std)
    assert again.mean == [0.5, 0.4, 0.3]
    with pytest.raises(UserError, match="mean has 2 values; the data has 3 channels"):
        renormalize(data, ([0.1, 0.2], [1.0]))


def test_pickled_payload_is_refused_and_never_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str], model_py: Path) -> None:
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "net.pt"
    torch.save(Payload(marker), evil)
    with pytest.raises(UserError, match=r"not a plain state dict \(it pickles "):
        read_state_dict(evil)
    line = cli_error(monkeypatch, capsys, "compress", "--model", f"{model_py}:net", "--weights", str(evil),
                     "--dataset", "mnist", "--step", "quantize:precision=fp16")
    assert str(evil) in line and "torch.save(model.state_dict()" in line and line.endswith("'net.safetensors')")
    assert not marker.exists()


def test_a_legacy_pickle_is_refused_in_one_whole_line(tmp_path: Path, model_py: Path) -> None:
    """torch's warning about the pickle protocol of a legacy file would add lines to the one error line (a
    real process: pytest would catch the warning before it reached stderr)."""
    import subprocess
    import sys

    legacy = tmp_path / "legacy.pt"
    torch.save(nn.Linear(2, 2), legacy, _use_new_zipfile_serialization=False)
    res = subprocess.run([sys.executable, "-m", "deepshrink", "compress", "--model", f"{model_py}:net", "--weights",
                          str(legacy), "--dataset", "mnist", "--step", "quantize:precision=fp16"],
                         capture_output=True, text=True, timeout=300)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert "it pickles torch.nn.modules.linear.Linear" in lines[0] and lines[0].endswith("'net.safetensors')")


def test_weights_mismatches_are_named(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    state = model.state_dict()
    state.pop("2.bias")
    state["extra.weight"] = torch.zeros(1)
    state["0.weight"] = torch.zeros(5, 4)
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    with pytest.raises(UserError) as e:
        load_weights(model, path)
    msg = str(e.value)
    assert "missing keys 2.bias" in msg and "unexpected keys extra.weight" in msg and "0.weight [5, 4]" in msg
    for name, needle in (("w.npz", "must be a state dict in .safetensors, .pt or .pth"), ("no.pt", "not found")):
        with pytest.raises(UserError, match=needle):
            read_state_dict(tmp_path / name)
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(UserError, match="holds a list, not a state dict"):
        read_state_dict(tmp_path / "list.pt")


def _own_accuracy(model: nn.Module, data: ds.Data, mean: float, std: float) -> float:
    pixels = np.rint((data.test_x.numpy() * np.float32(data.std[0]) + np.float32(data.mean[0])) * 255)
    x = (torch.from_numpy(pixels.astype(np.float32)) / 255 - mean) / std
    with torch.no_grad():
        return 100.0 * float((model.eval()(x).argmax(1) == data.test_y).double().mean())


def test_cli_weights_baseline_with_normalize(tmp_path: Path, model_py: Path, mnist_dir: Path,
                                             fast_latency: None) -> None:
    model = create_model(f"{model_py}:net", "mnist")
    torch.save(model.state_dict(), tmp_path / "net.pt")
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["compress", "--model", f"{model_py}:net", "--weights", str(tmp_path / "net.pt"),
                                 "--dataset", "mnist", "--normalize", "mean=0.5,std=0.25", "--step",
                                 "quantize:precision=fp16", "--out", str(out), "--data-dir", str(mnist_dir),
                                 "--device", "cpu", "--quiet"])
    assert r.exit_code == 0, (r.output, r.exception)
    rows = list(csv.DictReader((out / "results.csv").open()))
    base = next(row for row in rows if not row["pipeline"])
    assert float(base["train_seconds"]) == 0.0 and len(rows) == 2
    manifest = json.loads((out / base["checkpoint"]).with_suffix(".json").read_text())
    assert manifest["mean"] == [0.5] and manifest["std"] == [0.25] and manifest["train"]["trained_by"]
    data = ds.load_data("mnist", mnist_dir)
    # abs 1e-5: the row holds a float32 mean (21 of 100 is 20.999999); one image is a whole point
    assert float(base["accuracy_pct"]) == pytest.approx(_own_accuracy(model, data, 0.5, 0.25), abs=1e-5)


class Branchy(nn.Module):
    """A graph, not a chain: batch norm, residual addition, squeeze-excite product, concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(4, 4, 1), nn.Hardsigmoid())
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(8 * 14 * 14, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = nn.functional.hardswish(self.bn(self.conv(x)))
        b = a + nn.functional.relu6(self.dw(a))
        b = b * self.se(b)
        return self.fc(torch.flatten(self.pool(torch.cat([a, torch.sigmoid(b)], 1)), 1))


def _export(model: nn.Module, path: Path) -> Path:
    torch.onnx.export(model.eval(), (torch.zeros(1, 1, 28, 28),), str(path), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "n"}}, opset_version=17)
    return path


def test_onnx_converter_matches_and_names_missing_ops(tmp_path: Path, model_py: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 1, 28, 28)
    chain = create_model(f"{model_py}:net", "mnist").eval()
    conv = from_onnx(str(_export(chain, tmp_path / "chain.onnx")))
    assert isinstance(conv, nn.Sequential) and torch.allclose(conv(x), chain(x), atol=1e-5)
    branchy = Branchy()
    branchy.bn.running_mean.fill_(0.1)  # type: ignore[operator]
    graph = from_onnx(str(_export(branchy, tmp_path / "branchy.onnx")))
    assert isinstance(graph, OnnxNet) and torch.allclose(graph(x), branchy.eval()(x), atol=1e-5)
    leaky = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.LeakyReLU())
    with pytest.raises(UserError, match=r"leaky.onnx: cannot convert ONNX op LeakyRelu"):
        from_onnx(str(_export(leaky, tmp_path / "leaky.onnx")))


def test_cli_compress_onnx(tmp_path: Path, model_py: Path, mnist_dir: Path, fast_latency: None,
                           monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    path = _export(create_model(f"{model_py}:net", "mnist"), tmp_path / "net.onnx")
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["compress", str(path), "--dataset", "mnist", "--step",
                                 "prune.structured:ratio=0.5,epochs=0", "--out", str(out), "--data-dir",
                                 str(mnist_dir), "--device", "cpu", "--quiet"])
    assert r.exit_code == 0, (r.output, r.exception)
    rows = list(csv.DictReader((out / "results.csv").open()))
    pruned = next(row for row in rows if row["pipeline"])
    assert int(pruned["params_total"]) < int(next(row for row in rows if not row["pipeline"])["params_total"])
    # named after the file, as a registry model is after itself (not after the converter's function)
    assert {row["variant"].split("--")[0] for row in rows} == {"mnist-net"}
    assert {row["model"] for row in rows} == {"net"}
    assert (out / "artifacts" / "mnist-net" / "model.onnx").is_file()
    leaky = _export(nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.LeakyReLU()), tmp_path / "leaky.onnx")
    line = cli_error(monkeypatch, capsys, "compress", str(leaky), "--dataset", "mnist", "--data-dir", str(mnist_dir),
                     "--step", "quantize:precision=fp16")  # a step that needs the converted module
    assert "LeakyRelu" in line and str(leaky) in line


def _leaky_graph(path: Path, act: str = "LeakyRelu") -> Path:
    """A tiny classifier written with onnx.helper: Conv -> LeakyRelu (an op the converter lacks) -> Flatten
    -> Gemm, with a dynamic batch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 1, 5, 5)) * 0.3).astype(np.float32), "w1"),
             numpy_helper.from_array(np.zeros(4, np.float32), "b1"),
             numpy_helper.from_array((rng.standard_normal((10, 4 * 24 * 24)) * 0.05).astype(np.float32), "w2"),
             numpy_helper.from_array(np.zeros(10, np.float32), "b2")]
    nodes = [helper.make_node("Conv", ["image", "w1", "b1"], ["c"]),
             helper.make_node(act, ["c"], ["a"], **({"alpha": 0.1} if act == "LeakyRelu" else {})),
             helper.make_node("Flatten", ["a"], ["f"]),
             helper.make_node("Gemm", ["f", "w2", "b2"], ["scores"], transB=1)]
    graph = helper.make_graph(nodes, "leaky", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                             ["n", 1, 28, 28])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_cli_int8_ptq_of_an_onnx_runs_on_its_own_graph(tmp_path: Path, mnist_dir: Path, fast_latency: None) -> None:
    """INT8 PTQ alone of an .onnx is ONNX Runtime's quantize_static on the original graph: a graph with an op
    the converter lacks is quantized, and the baseline ships the user's file byte for byte."""
    import onnx

    path = _leaky_graph(tmp_path / "leaky.onnx")
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["compress", str(path), "--dataset", "mnist", "--normalize", "none", "--step",
                                 "quantize:precision=int8,method=ptq", "--out", str(out), "--data-dir",
                                 str(mnist_dir), "--device", "cpu", "--quiet"])
    assert r.exit_code == 0, (r.output, r.exception)
    base, q = sorted(csv.DictReader((out / "results.csv").open()), key=lambda row: bool(row["pipeline"]))
    assert (out / base["artifact"]).read_bytes() == path.read_bytes()
    assert base["variant"] == "mnist-leaky" and q["variant"].startswith("mnist-leaky--")
    assert int(base["params_total"]) == int(q["params_total"]) == 4 * 25 + 4 + 10 * 4 * 24 * 24 + 10
    assert int(base["macs"]) == 4 * 25 * 24 * 24 + 10 * 4 * 24 * 24  # the conv's weights once per output position
    mode = q["int8_mode"]  # chosen by timing: weights (decoded at load) unless full is 3 % faster
    assert q["int8_route"] == "onnxruntime quantize_static (QDQ)" and q["deployment"] == f"onnx-qdq-int8-{mode}"
    assert mode in ("full", "weights") and "int8 mode" in q["notes"] and q["int8_mode_rival"] != mode
    assert int(q["size_bytes"]) <= 0.3 * int(base["size_bytes"])
    assert abs(float(q["accuracy_pct"]) - float(base["accuracy_pct"])) <= 1.0
    ops = {n.op_type for n in onnx.load(str(out / q["artifact"])).graph.node}
    assert {"DequantizeLinear", "LeakyRelu", "Conv"} <= ops and ("QuantizeLinear" in ops) == (mode == "full")


@pytest.mark.parametrize("act", ["LeakyRelu", "Relu"])
def test_weights_only_graph_keeps_int8_weights_and_computes_in_float(tmp_path: Path, act: str) -> None:
    """The activations' Q/DQ pairs go; the weights stay INT8 behind DequantizeLinear; the logits are the
    float graph's on the dequantized weights (close to FP32), and the all-INT8 model's weights are equal.
    A Relu, which the quantizer folds into a range unless told to keep it, is still there."""
    import onnx
    import onnxruntime as ort

    from deepshrink.export.formats.onnx_int8_ort import quantize_graph, weights_only
    from deepshrink.ingest.onnx_graph import graph_of

    path = _leaky_graph(tmp_path / "leaky.onnx", act)
    x = torch.rand(64, 1, 28, 28) - 0.5  # negative pre-activations too: a lost Relu shows
    graph = graph_of(path.read_bytes(), str(path))
    full = quantize_graph(graph, x[:1], x)
    light = weights_only(quantize_graph(graph, x[:1], x, keep_activations=True))
    ops = [n.op_type for n in light.graph.node]
    assert "QuantizeLinear" not in ops and ops.count("DequantizeLinear") >= 2 and act in ops
    int8 = {t.name: t for t in light.graph.initializer if t.data_type == onnx.TensorProto.INT8}
    assert int8 and all(t.name in {u.name for u in full.graph.initializer} for t in int8.values())

    def run(m: bytes | str) -> np.ndarray:
        sess = ort.InferenceSession(m, providers=["CPUExecutionProvider"])
        return np.asarray(sess.run(None, {"image": x.numpy()})[0])

    ref = run(str(path))
    assert np.abs(run(light.SerializeToString()) - ref).max() <= 0.02 * np.abs(ref).max()


def test_api_compress_module_and_load_model(tmp_path: Path, model_py: Path) -> None:
    data = make_splits(n_train=64, n_val=16, n_test=32)
    model = ds.load_model(f"{model_py}:net")
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    again = ds.load_model(f"{model_py}:net", weights=tmp_path / "w.safetensors", data=data)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(),
                                                strict=True))
    small = ds.compress(again, ["quantize:precision=fp16"], data, out=tmp_path / "run", device="cpu",
                        normalize="none")
    assert small.variant.manifest.mean == [0.0] and small.row["baseline_accuracy_pct"] is not None


ZOO = '''
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.maxpool(self.conv1(x))).flatten(1))


def resnet18(*, weights=None, progress=True, **kwargs):
    assert weights is None
    return Net(**kwargs)


def create_model(name, pretrained=False, num_classes=1000, **kwargs):
    assert not pretrained and name == "tiny"
    return Net(num_classes)
'''


def test_zoo_references(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "torchvision").mkdir()
    (tmp_path / "torchvision" / "__init__.py").write_text("")
    (tmp_path / "torchvision" / "models.py").write_text(ZOO)
    (tmp_path / "timm.py").write_text(ZOO)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("torchvision", "torchvision.models", "timm"):
        monkeypatch.setitem(sys.modules, name, None)  # restored (absent) after the test
        del sys.modules[name]
    data = make_splits(n_train=16, n_val=4, n_test=4)
    for ref in ("torchvision.models:resnet18", "timm:tiny"):
        model = create_model(ref, data)
        conv = model.conv1
        assert isinstance(conv, nn.Conv2d) and conv.in_channels == 1 and conv.stride == (1, 1)
        assert isinstance(model.maxpool, nn.Identity) and model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_zoo_missing_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("torchvision", "torchvision.models"):
        monkeypatch.setitem(sys.modules, name, None)  # an import of it raises ImportError
    with pytest.raises(UserError, match=r"^torchvision is not installed \(it needs a torch build matching"):
        create_model("torchvision.models:mobilenet_v3_small", "mnist")
