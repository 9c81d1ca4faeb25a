"""Quantization: the shipped INT8 file is a real integer model that agrees with FP32 and is ~4x
smaller; QAT, FP16/FP64, sub-8-bit packing round trips, bad input."""

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from deepshrink.checkpoint import Manifest, save_checkpoint
from deepshrink.compress import apply, format_step, parse_step
from deepshrink.compress.quantize import QuantizeConfig
from deepshrink.data import DataSplits
from deepshrink.errors import UserError
from deepshrink.export import Artifact, ExportContext, export
from deepshrink.export.formats import dsonnx
from deepshrink.export.formats.dsq import decode
from deepshrink.export.formats.onnx_int8 import int8_weight_elements
from deepshrink.models import create_model
from deepshrink.report.plots import plot_accuracy_vs_bits
from deepshrink.train import TrainConfig, evaluate, fit
from deepshrink.variant import StepContext, Variant

from conftest import make_splits, requires_real_data


@pytest.fixture(scope="module")
def data() -> DataSplits:
    return make_splits(n_train=384, n_val=96, n_test=192)


def _trained(data: DataSplits, name: str) -> Variant:
    torch.manual_seed(0)
    net = create_model(name, data.input_shape, data.num_classes)
    log = fit(net, data, TrainConfig(epochs=3, lr=0.05))
    manifest = Manifest(model=name, dataset=data.name, input_shape=list(data.input_shape),
                        num_classes=data.num_classes, mean=data.mean, std=data.std)
    return Variant(f"{data.name}-{name}", net.eval(), manifest, log=log)


@pytest.fixture(scope="module")
def mlp(data: DataSplits) -> Variant:
    return _trained(data, "lenet-300-100")


@pytest.fixture(scope="module")
def cnn(data: DataSplits) -> Variant:
    return _trained(data, "lenet-5")


def _quantized(v: Variant, step: str, data: DataSplits, tmp: Path) -> tuple[Variant, Artifact, Artifact]:
    ctx = StepContext(data=data)
    q = apply(Variant(v.id, copy.deepcopy(v.model), copy.deepcopy(v.manifest)), parse_step(step), ctx)
    ectx = ExportContext(example=data.test_x[:1].clone(), calib=data.train_x[:256].clone())
    base = export(v.model, Variant(v.id, v.model, v.manifest).deployment, tmp / "fp32", ectx)
    return q, export(q.model, q.deployment, tmp / "q", ectx), base


def _logits(a: Artifact, x: torch.Tensor, runtime: str = "onnxruntime") -> np.ndarray:
    return a.runners[runtime](1, "cpu")(x.numpy().astype(a.input_dtype))


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_int8_ptq_is_integer_smaller_and_agrees(model: str, data: DataSplits, tmp_path: Path,
                                                request: pytest.FixtureRequest) -> None:
    v = request.getfixturevalue(model)
    q, art, base = _quantized(v, "quantize:precision=int8,method=ptq,deploy=full", data, tmp_path)
    weights = sum(p.numel() for n, p in v.model.named_parameters() if n.endswith("weight"))
    assert int8_weight_elements(str(art.path)) == weights  # every weight stored as int8
    assert art.size_bytes <= 0.27 * base.size_bytes
    ref, out = _logits(base, data.test_x), _logits(art, data.test_x)
    assert (ref.argmax(1) == out.argmax(1)).mean() >= 0.97
    assert np.abs(ref - out).max() <= 0.1 * np.abs(ref).max()
    assert q.manifest.info["quantized"] is True and art.precision == "int8"
    in_torch = _logits(art, data.test_x, "torch")  # PyTorch's x86 quantized engine, same scales
    assert (in_torch.argmax(1) == out.argmax(1)).mean() >= 0.97


def test_onnxruntime_runs_integer_kernels(cnn: Variant, data: DataSplits, tmp_path: Path) -> None:
    _, art, _ = _quantized(cnn, "quantize:precision=int8,deploy=full", data, tmp_path)
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(art.path), opts, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node}
    assert {"QLinearConv", "QGemm"} <= ops and "Conv" not in ops and "Gemm" not in ops


def test_weight_only_and_auto_deployments(cnn: Variant, data: DataSplits, tmp_path: Path) -> None:
    _, wo, base = _quantized(cnn, "quantize:precision=int8,deploy=weights", data, tmp_path / "w")
    assert int8_weight_elements(str(wo.path)) > 0.9 * sum(p.numel() for p in cnn.model.parameters())
    assert wo.size_bytes <= 0.27 * base.size_bytes
    assert np.abs(_logits(wo, data.test_x) - _logits(base, data.test_x)).max() < 0.05
    _, auto, _ = _quantized(cnn, "quantize:precision=int8,deploy=auto", data, tmp_path / "a")
    assert auto.info["int8_mode"] in ("full", "mixed", "weights")
    assert {"int8_us_b256_fp32", "int8_us_b1_full_onnxruntime", "int8_us_b256_weights_onnxruntime"} <= set(auto.info)
    assert auto.info["int8_speedup_vs_fp32_b256"] > 0 and auto.info["int8_speedup_vs_fp32_b1"] > 0
    assert auto.kind.endswith(auto.info["int8_mode"])


@pytest.mark.parametrize(("model", "pruned"), [("mlp", 0.9), ("cnn", 0.0)])
def test_smallest_deployment_ships_the_smallest_modes_file_without_timing(model: str, pruned: float, data: DataSplits,
                                                                         tmp_path: Path,
                                                                         request: pytest.FixtureRequest) -> None:
    """deploy=smallest (a bytes search's INT8 steps): the mode whose shipped file is smallest, packed
    when pruned, chosen by bytes alone, so two exports give the same file."""
    v = request.getfixturevalue(model)
    v = Variant(v.id, copy.deepcopy(v.model), copy.deepcopy(v.manifest))
    with torch.no_grad():
        for p in v.model.parameters():
            p[p.abs() < p.abs().flatten().quantile(pruned)] = 0.0
    sizes = {m: _quantized(v, f"quantize:precision=int8,deploy={m}", data, tmp_path / m)[1].size_bytes
             for m in ("full", "mixed", "weights")}
    got = [_quantized(v, "quantize:precision=int8,deploy=smallest", data, tmp_path / f"s{i}")[1] for i in (0, 1)]
    assert got[0].size_bytes == got[1].size_bytes == min(sizes.values())
    assert got[0].path.read_bytes() == got[1].path.read_bytes()
    assert sizes[got[0].info["int8_mode"]] == got[0].size_bytes and got[0].kind.endswith(got[0].info["int8_mode"])
    assert got[0].path.suffix == (".dsonnx" if pruned else ".onnx")
    assert not any(k.startswith("int8_us_") for k in got[0].info)  # nothing timed


def test_qat_fine_tunes_and_ships_its_ranges(mlp: Variant, data: DataSplits, tmp_path: Path) -> None:
    q, art, _ = _quantized(mlp, "quantize:precision=int8,method=qat,epochs=2", data, tmp_path)
    assert q.epochs == 2 and q.log is not None and len(q.log.history) == 2
    assert q.info["quant_calibration"].startswith("qat")
    acc_q = float((_logits(art, data.test_x).argmax(1) == data.test_y.numpy()).mean() * 100)
    assert acc_q >= evaluate(mlp.model, data.test_x, data.test_y) - 2.0
    assert int8_weight_elements(str(art.path)) > 0


def test_qat_keeps_pruned_weights_at_zero(mlp: Variant, data: DataSplits) -> None:
    v = Variant(mlp.id, copy.deepcopy(mlp.model), copy.deepcopy(mlp.manifest))
    with torch.no_grad():
        v.model.fc1.weight[:, ::2] = 0.0
    q = apply(v, parse_step("quantize:method=qat,epochs=1"), StepContext(data=data))
    assert bool((q.model.fc1.weight[:, ::2] == 0).all())


@pytest.mark.parametrize("precision,dtype", [("fp16", onnx.TensorProto.FLOAT16), ("fp64", onnx.TensorProto.DOUBLE)])
def test_float_precisions_ship_in_their_dtype(precision: str, dtype: int, mlp: Variant, data: DataSplits,
                                              tmp_path: Path) -> None:
    _, art, base = _quantized(mlp, f"quantize:precision={precision}", data, tmp_path)
    inits = onnx.load(str(art.path)).graph.initializer
    assert inits and all(t.data_type == dtype for t in inits)
    assert art.input_dtype == (np.float16 if precision == "fp16" else np.float64)
    out = _logits(art, data.test_x, "onnxruntime" if "onnxruntime" in art.runners else "torch")
    assert (out.argmax(1) == _logits(base, data.test_x).argmax(1)).mean() >= 0.98


@pytest.mark.parametrize("bits", [4, 2])
def test_subbyte_qat_packs_exactly(bits: int, mlp: Variant, data: DataSplits, tmp_path: Path) -> None:
    q, art, base = _quantized(mlp, f"quantize:method=qat,bits={bits},epochs=1", data, tmp_path)
    decoded = decode(art.path.read_bytes())
    for name, t in q.model.state_dict().items():
        assert torch.equal(decoded[name], t), name  # the decoder reproduces the weights bit for bit
    assert len(torch.unique(decoded["fc1.weight"][0])) <= 2**bits - 1
    assert art.size_bytes <= base.size_bytes * (bits / 32 + 0.02)
    acc = float((_logits(art, data.test_x).argmax(1) == data.test_y.numpy()).mean() * 100)
    assert acc >= evaluate(mlp.model, data.test_x, data.test_y) - (3.0 if bits == 4 else 15.0)


@pytest.mark.parametrize("step,key", [
    ("quantize:precision=int4", "quantize.precision"), ("quantize:method=dynamic", "quantize.method"),
    ("quantize:bits=9", "quantize.bits"), ("quantize:bits=1", "quantize.bits"),
    ("quantize:method=qat,epochs=0", "quantize.epochs"), ("quantize:calib=0", "quantize.calib"),
    ("quantize:deploy=fast", "quantize.deploy"), ("quantize:precision=fp16,method=qat", "quantize.method"),
])
def test_bad_options_name_the_key(step: str, key: str) -> None:
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        parse_step(step)


def test_already_quantized_input_is_refused(mlp: Variant, data: DataSplits) -> None:
    v = apply(Variant(mlp.id, copy.deepcopy(mlp.model), copy.deepcopy(mlp.manifest)), parse_step("quantize"),
              StepContext(data=data))
    with pytest.raises(UserError, match="already quantized"):
        apply(v, QuantizeConfig(precision="fp16"), StepContext(data=data))


def test_step_syntax_round_trips() -> None:
    cfg = parse_step("quantize:precision=int8,method=qat,epochs=2")
    assert cfg == QuantizeConfig(method="qat", epochs=2)
    assert format_step(cfg) == "quantize:method=qat,epochs=2"


def test_cli_bad_input_exits_2_with_one_line(mlp: Variant, tmp_path: Path) -> None:
    ckpt = save_checkpoint(mlp.model, copy.deepcopy(mlp.manifest), tmp_path / "m")
    res = subprocess.run([sys.executable, "-m", "deepshrink", "compress", str(ckpt), "--step", "quantize:bits=12",
                          "--out", str(tmp_path), "--quiet"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "quantize.bits" in lines[0]


def test_accuracy_vs_bits_plot(tmp_path: Path) -> None:
    rows = [{"series": "mnist lenet-300-100", "bits": b, "accuracy_pct": a} for b, a in ((2, 95.0), (4, 98.0),
                                                                                           (8, 98.3), (32, 98.4))]
    png = plot_accuracy_vs_bits(rows, tmp_path / "bits.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@requires_real_data
def test_real_mnist_int8_ptq_within_a_point(tmp_path: Path) -> None:
    from dataclasses import replace

    from deepshrink.data import load_dataset

    from conftest import real_data_dir

    full = load_dataset("mnist", real_data_dir())
    data = replace(full, train_x=full.train_x[:5000], train_y=full.train_y[:5000], val_x=full.val_x[:1000],
                   val_y=full.val_y[:1000], test_x=full.test_x[:2000], test_y=full.test_y[:2000])
    v = _trained(data, "lenet-300-100")
    _, art, base = _quantized(v, "quantize:precision=int8,method=ptq", data, tmp_path)
    y = data.test_y.numpy()
    acc_fp32 = (_logits(base, data.test_x).argmax(1) == y).mean() * 100
    acc_int8 = (_logits(art, data.test_x).argmax(1) == y).mean() * 100
    assert acc_fp32 > 80 and acc_int8 >= acc_fp32 - 1.0  # a short run: the gap is what is tested
    assert art.size_bytes <= 0.27 * base.size_bytes


def test_pruned_int8_ships_a_dsonnx_that_decodes_to_the_onnx_it_runs(mlp: Variant, data: DataSplits,
                                                                   tmp_path: Path) -> None:
    v = Variant(mlp.id, copy.deepcopy(mlp.model), copy.deepcopy(mlp.manifest))
    with torch.no_grad():  # 80 % of the weights pruned, as a pruning step leaves them
        for layer in (v.model.fc1, v.model.fc2):
            w = layer.weight
            w[w.abs() < w.abs().flatten().quantile(0.8)] = 0.0
    _, art, _ = _quantized(v, "quantize:precision=int8,method=ptq", data, tmp_path)
    onnx_file = art.path.with_suffix(".onnx")
    assert art.path.suffix == ".dsonnx" and art.kind.startswith("dsonnx-")
    assert art.size_bytes < 0.6 * onnx_file.stat().st_size  # the zeros are not stored
    assert dsonnx.decode(art.path.read_bytes()) == onnx_file.read_bytes()  # bit-exact: what ORT loads
    assert int8_weight_elements(str(onnx_file)) > 0
    ref = v.model(data.test_x).detach().numpy()
    assert (_logits(art, data.test_x).argmax(1) == ref.argmax(1)).mean() >= 0.95
    _, dense, _ = _quantized(mlp, "quantize:precision=int8,method=ptq", data, tmp_path / "dense")
    assert dense.path.suffix == ".onnx"  # an unpruned model ships the plain INT8 ONNX
    assert "sparse" not in dense.runners


def test_pruned_int8_weights_run_on_the_sparse_kernels(mlp: Variant, data: DataSplits, tmp_path: Path) -> None:
    v = Variant(mlp.id, copy.deepcopy(mlp.model), copy.deepcopy(mlp.manifest))
    with torch.no_grad():
        for layer in (v.model.fc1, v.model.fc2):
            layer.weight[layer.weight.abs() < layer.weight.abs().flatten().quantile(0.9)] = 0.0
    _, art, _ = _quantized(v, "quantize:precision=int8,method=ptq,deploy=weights", data, tmp_path)
    assert art.precision == "int8-weights" and "sparse" in art.runners
    # The same float model (INT8 weights dequantized) in both runtimes: equal to float tolerance.
    np.testing.assert_allclose(_logits(art, data.test_x, "sparse"), _logits(art, data.test_x), rtol=1e-4, atol=1e-4)
