"""Runtime runners: ONNX Runtime and torch agree on an exported model; dtype conversions copy the model."""

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from deepshrink.export.formats.onnx_float import export_onnx
from deepshrink.export.runtimes import ort_runner, torch_runner
from deepshrink.export.runtimes.openvino import aligned_empty
from deepshrink.models import create_model


def _tiny() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 16),
                         nn.ReLU(), nn.Linear(16, 5)).eval()


def _x(n: int = 8) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 1, 8, 8)).astype(np.float32)


def test_ort_and_torch_runners_agree(tmp_path: Path) -> None:
    model = _tiny()
    path = export_onnx(model, tmp_path / "m.onnx", torch.zeros(1, 1, 8, 8))
    x = _x()
    for threads in (1, 2):
        ort_out = ort_runner(path)(threads, "cpu")(x)
        torch_out = torch_runner(model)(threads, "cpu")(x)
        assert ort_out.shape == torch_out.shape == (8, 5)
        assert ort_out.dtype == torch_out.dtype == np.float32
        np.testing.assert_allclose(ort_out, torch_out, atol=1e-5, rtol=0)
    # a dynamic batch axis: any batch size runs, batch 1 included
    np.testing.assert_allclose(ort_runner(path)(1, "cpu")(x[:1]), torch_runner(model)(1, "cpu")(x[:1]), atol=1e-5)


def test_torch_runner_float64_leaves_the_callers_model_alone() -> None:
    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run = torch_runner(model, torch.float64)(1, "cpu")
    out = run(_x().astype(np.float64))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert out.dtype == np.float32  # logits come back as float32 whatever the compute dtype
    np.testing.assert_allclose(out, torch_runner(model)(1, "cpu")(_x()), atol=1e-5)


def test_exporting_in_another_dtype_leaves_the_callers_model_alone(tmp_path: Path) -> None:
    model = create_model("lenet-300-100", (1, 28, 28))
    export_onnx(model, tmp_path / "m.onnx", torch.zeros(1, 1, 28, 28), torch.float16)
    torch_runner(model, torch.float64)(1, "cpu")
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_torch_runner_uses_the_model_itself_when_no_conversion_is_needed() -> None:
    model = _tiny()
    run = torch_runner(model)(1, "cpu")
    x = _x()
    first = run(x)
    with torch.no_grad():
        model[6].bias.add_(1.0)  # same dtype and device: the runner holds the caller's model, not a copy
    np.testing.assert_allclose(run(x), first + 1.0, atol=1e-5)


def test_openvino_runs_the_file_as_onnxruntime_does(tmp_path: Path) -> None:
    """FP32 held to f32 (not the bf16 OpenVINO picks by default on such CPUs): the same logits as ONNX
    Runtime at any batch size, one compiled model per shape; a QDQ file runs its integer layers."""
    pytest.importorskip("openvino")
    from deepshrink.export.formats.onnx_int8_ort import quantize_graph
    from deepshrink.export.runtimes import OvRunner, onnx_runners

    model = _tiny()
    path = export_onnx(model, tmp_path / "m.onnx", torch.zeros(1, 1, 8, 8))
    assert set(onnx_runners(path)) == {"onnxruntime", "openvino"}
    x = _x(16)
    run = OvRunner(path)(1, "cpu")
    for x_n in (x, x[:1], x[:3], x[::-1], x[5:6]):  # new data into the buffers bound per shape
        np.testing.assert_allclose(run(x_n), ort_runner(path)(1, "cpu")(x_n), atol=1e-5, rtol=0)
    assert run(x[:2]) is not run(x[:2])  # a fresh array per call: the request's buffer is reused
    q = tmp_path / "q.onnx"
    q.write_bytes(quantize_graph(model, torch.from_numpy(x[:1]), torch.from_numpy(x)).SerializeToString())
    ov_out, ort_out = OvRunner(q)(1, "cpu")(x), ort_runner(q)(1, "cpu")(x)
    spread = float(np.abs(ort_out).max())
    assert np.abs(ov_out - ort_out).max() < 0.05 * spread  # the same integer model, rounding apart
    with pytest.raises(ValueError, match="CPU"):
        OvRunner(path)(1, "cuda")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(path.read_bytes()[:100])  # a file OpenVINO cannot take is left to ONNX Runtime to report
    assert set(onnx_runners(bad)) == {"onnxruntime"}


def test_openvino_can_be_left_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deepshrink.export import runtimes as runners

    path = export_onnx(_tiny(), tmp_path / "m.onnx", torch.zeros(1, 1, 8, 8))
    monkeypatch.setenv("DEEPSHRINK_NO_OPENVINO", "1")
    runners.has_openvino.cache_clear()
    try:
        assert set(runners.onnx_runners(path)) == {"onnxruntime"}
    finally:
        monkeypatch.delenv("DEEPSHRINK_NO_OPENVINO")
        runners.has_openvino.cache_clear()


@settings(max_examples=50, deadline=None)
@given(shape=st.lists(st.integers(1, 33), min_size=1, max_size=4), align=st.sampled_from([16, 64, 4096]),
       dtype=st.sampled_from([np.float32, np.int8, np.float64]))
def test_aligned_buffers_start_on_the_boundary_and_hold_the_shape(shape: list[int], align: int, dtype: type) -> None:
    """OpenVINO reads its input in place: a buffer off a 64-byte line cost a batch-1 call 1.4-1.6x."""
    buf = aligned_empty(tuple(shape), dtype, align)
    assert buf.ctypes.data % align == 0 and buf.shape == tuple(shape) and buf.dtype == np.dtype(dtype)
    assert buf.flags.c_contiguous and buf.flags.writeable
    buf[...] = 1  # the whole view lies inside its allocation
    assert int(buf.sum()) == int(np.prod(shape))
