"""Conv + max pool run as a polyphase convolution (export/conv_pool.py): the rewritten graph computes the
same logits, only the pairs it is exact for are rewritten, and deploy.py keeps the file's own graph unless
a rewrite is faster (timings stubbed: the choice, not the machine, is under test)."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from deepshrink.export import choice as deploy
from deepshrink.export.formats.onnx_float import export_onnx
from deepshrink.export.runtimes import OrtRunner
from deepshrink.export.runtimes.conv_pool import find_pairs, fuse


def _net(act: nn.Module, s: int = 2, padding: int = 0) -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 5, padding=padding), act, nn.MaxPool2d(s), nn.Conv2d(3, 5, 3),
                        nn.MaxPool2d(2), nn.Flatten(), nn.LazyLinear(10)).eval()
    net(torch.zeros(1, 1, 28, 28))  # sizes the lazy layer
    return net


def _export(net: nn.Module, path: Path, opset: int = 17) -> onnx.ModelProto:
    x = torch.zeros(1, 1, 28, 28)
    torch.onnx.export(net, (x,), str(path), dynamo=False, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset)
    return onnx.load(str(path))


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"input": x})[0])


@pytest.mark.parametrize(("act", "s", "padding", "opset"), [
    (nn.ReLU(), 2, 0, 17), (nn.ReLU6(), 2, 2, 17), (nn.Tanh(), 3, 1, 17), (nn.ReLU(), 2, 0, 11),
    (nn.Identity(), 2, 0, 19),
])
def test_rewrite_computes_the_same_logits(tmp_path: Path, act: nn.Module, s: int, padding: int, opset: int) -> None:
    model = _export(_net(act, s, padding), tmp_path / "m.onnx", opset)
    assert len(find_pairs(model)) == 2
    x = np.random.default_rng(0).standard_normal((7, 1, 28, 28)).astype(np.float32)
    ref = _run(model, x)
    for n in (1, 2):
        fused = fuse(model, n)
        onnx.checker.check_model(fused)
        assert sum(node.op_type == "MaxPool" for node in fused.graph.node) == 2 - n
        np.testing.assert_allclose(_run(fused, x), ref, rtol=1e-4, atol=1e-5)


def test_split_max_when_the_width_is_unknown(tmp_path: Path) -> None:
    model = _export(_net(nn.ReLU()), tmp_path / "m.onnx")
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "h", "w"  # no static image size: shape inference gives no width
    x = np.random.default_rng(1).standard_normal((3, 1, 28, 28)).astype(np.float32)
    fused = fuse(model, 1)
    assert "Max" in {node.op_type for node in fused.graph.node}
    np.testing.assert_allclose(_run(fused, x), _run(model, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("net", [
    nn.Sequential(nn.Conv2d(1, 3, 5, stride=2), nn.ReLU(), nn.MaxPool2d(2)),  # strided conv
    nn.Sequential(nn.Conv2d(1, 3, 5), nn.ReLU(), nn.MaxPool2d(3, stride=2)),  # overlapping windows
    nn.Sequential(nn.Conv2d(1, 3, 5), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)),
    nn.Sequential(nn.Conv2d(2, 4, 5, groups=2), nn.ReLU(), nn.MaxPool2d(2)),  # grouped
    nn.Sequential(nn.Conv2d(1, 3, 5), nn.ReLU(), nn.AvgPool2d(2)),  # not a max
])
def test_inexpressible_pairs_are_left(tmp_path: Path, net: nn.Module) -> None:
    c = next(m for m in net if isinstance(m, nn.Conv2d)).in_channels
    path = export_onnx(net.eval(), tmp_path / "m.onnx", torch.zeros(1, c, 28, 28))
    assert find_pairs(onnx.load(str(path))) == []


def _tune(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, us: dict[int, dict[str, float]]) -> tuple[dict, dict]:
    path = export_onnx(_net(nn.ReLU()), tmp_path / "m.onnx", torch.zeros(1, 1, 28, 28))
    monkeypatch.setattr(deploy, "time_runtimes", lambda runners, x, keep=(): {b: {k: [v] * 30 for k, v in t.items()}
                                                                              for b, t in us.items()})
    runners: dict = {"onnxruntime": OrtRunner(path)}
    info = deploy.tune_onnxruntime(runners, np.zeros((4, 1, 28, 28), np.float32), 0.03)
    return runners, info


def test_faster_rewrite_replaces_the_runner_at_each_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runners, info = _tune(tmp_path, monkeypatch, {256: {"0": 10.0, "1": 6.0, "2": 8.0}, 1: {"0": 10.0, "1": 10.5,
                                                                                             "2": 8.0}})
    ort = runners["onnxruntime"]
    assert (ort.fused, ort.fused_b1) == (1, 2)
    assert (info["ort_conv_pool_fused"], info["ort_conv_pool_fused_b1"]) == (1, 2)
    assert "1 at batch 256 (1.67x" in info["notes"] and "2 at batch 1 (1.25x" in info["notes"]
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    run, plain = ort(1, "cpu"), OrtRunner(ort.path)(1, "cpu")
    assert np.allclose(run(x), plain(x), atol=1e-4) and np.allclose(run(x[:1]), plain(x[:1]), atol=1e-4)


def test_file_graph_kept_within_the_margin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runners, info = _tune(tmp_path, monkeypatch, {b: {"0": 10.0, "1": 9.8, "2": 11.0} for b in (256, 1)})
    assert runners["onnxruntime"].fused == 0 and info["ort_conv_pool_fused"] == info["ort_conv_pool_fused_b1"] == 0


def test_no_pair_no_timing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = export_onnx(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval(), tmp_path / "m.onnx",
                       torch.zeros(1, 1, 28, 28))
    monkeypatch.setattr(deploy, "time_runtimes", lambda *a: pytest.fail("timed a graph with nothing to rewrite"))
    runners: dict = {"onnxruntime": OrtRunner(path)}
    assert deploy.tune_onnxruntime(runners, np.zeros((4, 1, 28, 28), np.float32)) == {}
