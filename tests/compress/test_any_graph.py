"""Every technique on user models that are not nn.Sequentials (examples/models.py: a ResNet with batch
norm and residual additions, a depthwise-separable net with global average pooling), through the Python
API on tiny CIFAR-shaped data; a structurally pruned user model reloads in a fresh process."""

import importlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import deepshrink as ds
from deepshrink.checkpoint import load_checkpoint
from deepshrink.config import default_train
from deepshrink.export.formats.dsq import decode
from deepshrink.export.formats.onnx_int8 import int8_weight_elements
from deepshrink.measure.latency import LatencyConfig

from conftest import make_splits

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "models.py"
RESNET, DWNET = f"{EXAMPLES}:resnet8", f"{EXAMPLES}:dwnet"


@pytest.fixture(scope="module", autouse=True)
def fast_latency() -> object:
    """Every result is timed; a few calls are enough here (the timing loop has its own tests)."""
    run = importlib.import_module("deepshrink.study.run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run, "_latency", lambda device, latency: LatencyConfig(
            runtimes=("onnxruntime",), threads=(1,), batch=64, repeats=1, single_calls=3))
        yield


@pytest.fixture(scope="module")
def data() -> ds.Data:
    return make_splits(n_train=256, n_val=64, n_test=128, shape=(3, 32, 32), name="cifar10")  # half tiny_cifar


@pytest.fixture(scope="module")
def bases(data: ds.Data, tmp_path_factory: pytest.TempPathFactory) -> dict[str, ds.Result]:
    """One-epoch baselines: the ResNet by reference with a model argument, the depthwise net as a module."""
    out = tmp_path_factory.mktemp("any-graph")
    resnet = ds.train(RESNET, data, epochs=1, out=out, device="cpu", model_args={"width": 8})
    dwnet = ds.train(ds.create_model(DWNET, data, width=8), data, epochs=1, out=out, device="cpu")
    return {"resnet8": resnet, "dwnet": dwnet}


def _onnx_logits(path: Path, x: torch.Tensor) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert isinstance(out, np.ndarray)
    return out


def _artifact(r: ds.Result) -> Path:
    return r.out / r.row["artifact"]


def test_a_module_from_create_model_records_how_to_rebuild_it(bases: dict[str, ds.Result]) -> None:
    """`ds.train(ds.create_model(REF, data, width=8), ...)`: the checkpoint names the factory and its
    arguments, so it reloads at width 8 (the class's default width is 32)."""
    model, manifest = load_checkpoint(bases["dwnet"].out / bases["dwnet"].row["checkpoint"])
    assert manifest.model == DWNET and manifest.model_args == {"width": 8}
    assert model.fc.in_features == 32


@pytest.mark.parametrize("name", ["resnet8", "dwnet"])
def test_structured_prune_ships_a_smaller_net_that_reloads_in_a_fresh_process(
        name: str, bases: dict[str, ds.Result], data: ds.Data, tmp_path: Path) -> None:
    base = bases[name]
    r = ds.compress(base, ["prune.structured:ratio=0.5,epochs=1"], data, out=tmp_path, device="cpu")
    assert r.row["status"] == "ok" and r.row["params_total"] < 0.6 * base.row["params_total"]
    assert r.row["size_bytes"] < base.row["size_bytes"]
    assert _artifact(r).suffix == ".onnx"
    x = data.test_x[:8]
    with torch.no_grad():
        want = r.model.eval()(x).numpy()
    np.testing.assert_allclose(_onnx_logits(_artifact(r), x), want, atol=1e-4, rtol=1e-4)

    params = sum(p.numel() for p in r.model.parameters())
    assert params == r.row["params_total"]
    code = ("import torch; from deepshrink.checkpoint import load_checkpoint; "
            f"m, man = load_checkpoint({str(r.out / r.row['checkpoint'])!r}); "
            "print(sum(p.numel() for p in m.parameters())); "
            f"print(repr(float(m(torch.ones(1, 3, 32, 32)).sum())))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    n, total = proc.stdout.split()
    assert int(n) == params
    with torch.no_grad():
        assert float(total) == pytest.approx(float(r.model(torch.ones(1, 3, 32, 32)).sum()), abs=1e-4)


def test_inner_structured_pruning_keeps_the_residual_stream_and_rounds_channels(
        bases: dict[str, ds.Result], data: ds.Data, tmp_path: Path) -> None:
    """`layers=inner`: only a residual block's inner convolutions lose channels (the stream the additions tie
    keeps its width); `round_to=8` keeps a multiple of 8 of each (width-8 resnet8: 8/16/32 -> 8/8/16 inside)."""
    from deepshrink.compress.prune.units import untied_layers

    base = bases["resnet8"]
    assert untied_layers(base.model, data.train_x[:1]) == ["layer1.conv1.0", "layer2.conv1.0", "layer3.conv1.0"]
    r = ds.compress(base, ["prune.structured:ratio=0.6,layers=inner,round_to=8,epochs=1"], data, out=tmp_path,
                    device="cpu")
    widths = dict(kv.split("=") for kv in str(r.row["pruned_widths"]).split(","))
    assert widths["layer1.conv1.0"] == "8" and widths["layer2.conv1.0"] == "8" and widths["layer3.conv1.0"] == "16"
    assert widths["stem.0"] == "8" and widths["layer2.conv2"] == "16" and widths["layer3.conv2"] == "32"
    x = data.test_x[:8]
    with torch.no_grad():
        want = r.model.eval()(x).numpy()
    np.testing.assert_allclose(_onnx_logits(_artifact(r), x), want, atol=1e-4, rtol=1e-4)
    reloaded, _ = load_checkpoint(r.out / r.row["checkpoint"])
    with torch.no_grad():
        np.testing.assert_allclose(reloaded.eval()(x).numpy(), want, atol=1e-5)


def test_structured_retrain_can_distill_from_the_unpruned_model(bases: dict[str, ds.Result], data: ds.Data,
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """alpha > 0: the retraining objective is Hinton's loss against the model from before pruning."""
    structured = importlib.import_module("deepshrink.compress.prune.structured")
    widths: list[int] = []
    real = structured.distill_objective

    def spy(teacher, temperature: float, alpha: float):  # type: ignore[no-untyped-def]
        widths.append(int(teacher(data.test_x[:2]).shape[1]))
        assert (temperature, alpha) == (3.0, 0.7)
        return real(teacher, temperature, alpha)

    monkeypatch.setattr(structured, "distill_objective", spy)
    base = bases["resnet8"]
    r = ds.compress(base, ["prune.structured:ratio=0.5,epochs=1,alpha=0.7,temperature=3"], data, out=tmp_path,
                    device="cpu")
    assert widths == [10] and r.row["status"] == "ok" and r.row["params_total"] < 0.6 * base.row["params_total"]
    with pytest.raises(ds.UserError, match="prune.structured.alpha"):
        ds.steps.PruneStructured(alpha=1.5)


def test_structured_retraining_defaults_follow_the_graph(bases: dict[str, ds.Result]) -> None:
    """Unset epochs/lr/alpha: a coupled graph gets the long full-LR retrain with the unpruned model as
    teacher (what held ResNet-8 within 2 points), a plain stack the short low-LR one; set keys win."""
    structured = importlib.import_module("deepshrink.compress.prune.structured")
    v = bases["resnet8"].variant
    tuned = default_train(v.manifest.dataset, v.manifest.model).lr
    run, alpha = structured.retraining(ds.steps.PruneStructured(), True, v, 0)
    assert (run.epochs, run.lr, alpha) == (40, tuned, 0.5)
    run, alpha = structured.retraining(ds.steps.PruneStructured(), False, v, 0)
    assert (run.epochs, run.lr, alpha) == (10, pytest.approx(0.2 * tuned), 0.0)
    run, alpha = structured.retraining(ds.steps.PruneStructured(epochs=3, lr=0.01, alpha=0.0), True, v, 0)
    assert (run.epochs, run.lr, alpha) == (3, 0.01, 0.0)


# A graph's INT8 ships all-INT8 ("full") or its weights alone in INT8 ("weights", float compute), whichever
# timing picks (export/exporters/int8.py `_graph`); both store the same INT8 weights.
_INT8 = {"full": "int8", "weights": "int8-weights"}


@pytest.mark.parametrize("method", ["ptq", "qat"])
def test_int8_of_a_residual_graph_ships_int8_weights(method: str, bases: dict[str, ds.Result], data: ds.Data,
                                                     tmp_path: Path) -> None:
    base = bases["resnet8"]
    r = ds.compress(base, [ds.steps.Quantize(precision="int8", method=method, epochs=1)], data, out=tmp_path,
                    device="cpu")
    assert r.row["precision"] == _INT8[r.row["int8_mode"]] and r.row["status"] == "ok"
    assert int8_weight_elements(str(_artifact(r))) > 0.9 * base.row["params_total"] - 1000  # conv/fc weights
    assert r.row["size_bytes"] < 0.35 * base.row["size_bytes"]
    assert _onnx_logits(_artifact(r), data.test_x[:4]).shape == (4, 10)
    assert 0 <= r.row["accuracy_pct"] <= 100


def test_int8_ptq_of_a_depthwise_graph(bases: dict[str, ds.Result], data: ds.Data, tmp_path: Path) -> None:
    base = bases["dwnet"]
    r = ds.compress(base, ["quantize:precision=int8,method=ptq"], data, out=tmp_path, device="cpu")
    assert r.row["precision"] == _INT8[r.row["int8_mode"]] and int8_weight_elements(str(_artifact(r))) > 0
    assert r.row["size_bytes"] < base.row["size_bytes"]


def test_int8_of_a_graph_can_ship_its_smallest_file(bases: dict[str, ds.Result], data: ds.Data,
                                                    tmp_path: Path) -> None:
    """deploy=smallest through ONNX Runtime's quantizer: the smaller of the all-INT8 and weights-only
    graphs, by the bytes each would ship, with nothing timed."""
    r = ds.compress(bases["dwnet"], ["quantize:precision=int8,method=ptq,deploy=smallest"], data, out=tmp_path,
                    device="cpu")
    mode = r.row["int8_mode"]
    assert r.row["precision"] == _INT8[mode] and "the smallest file" in r.row["notes"]
    sizes = {m: int(n) for m, n in re.findall(r"(full|weights) (\d+) B", r.row["notes"])}
    assert set(sizes) == {"full", "weights"} and r.row["size_bytes"] == sizes[mode] == min(sizes.values())


def test_unstructured_prune(bases: dict[str, ds.Result], data: ds.Data, tmp_path: Path) -> None:
    base = bases["resnet8"]
    r = ds.compress(base, ["prune.unstructured:sparsity=0.8,epochs=1"], data, out=tmp_path, device="cpu")
    assert r.row["pruned_weight_sparsity"] == pytest.approx(0.8, abs=0.01)  # of the pruned conv/fc layers
    assert r.row["params_total"] == base.row["params_total"]
    assert r.row["params_nonzero"] < 0.35 * base.row["params_nonzero"] and r.row["sparsity"] > 0.7
    assert r.row["size_bytes"] < base.row["size_bytes"]


def test_fp16_and_4_bit_weights(bases: dict[str, ds.Result], data: ds.Data, tmp_path: Path) -> None:
    base = bases["resnet8"]
    half = ds.compress(base, ["quantize:precision=fp16"], data, out=tmp_path, device="cpu")
    assert half.row["precision"] == "fp16" and half.row["size_bytes"] < 0.6 * base.row["size_bytes"]
    types = {t.data_type for t in onnx.load(str(_artifact(half))).graph.initializer if len(t.dims) >= 2}
    assert types == {onnx.TensorProto.FLOAT16}
    int4 = ds.compress(base, [ds.steps.Quantize(precision="int8", bits=4, method="ptq")], data, out=tmp_path,
                       device="cpu")
    assert int4.row["precision"] == "int4-weights" and int4.row["status"] == "ok"
    assert int4.row["size_bytes"] < 0.35 * base.row["size_bytes"]


def test_prune_then_quantize_chain(bases: dict[str, ds.Result], data: ds.Data, tmp_path: Path) -> None:
    base = bases["resnet8"]
    r = ds.compress(base, ["prune.structured:ratio=0.5,epochs=1", ds.steps.Quantize(method="ptq")], data,
                    out=tmp_path, device="cpu")
    assert r.row["precision"] == _INT8[r.row["int8_mode"]] and r.row["params_total"] < 0.6 * base.row["params_total"]
    assert int8_weight_elements(str(_artifact(r))) > 0
    assert r.row["size_bytes"] < 0.35 * base.row["size_bytes"]


def test_distill_into_the_depthwise_reference_with_control(bases: dict[str, ds.Result], data: ds.Data,
                                                           tmp_path: Path) -> None:
    base = bases["resnet8"]
    r = ds.compress(base, [f"distill:student={DWNET},student_args=width=4,epochs=1"], data, out=tmp_path,
                    device="cpu")
    assert r.row["model"] == DWNET and r.row["distill_role"] == "distilled"
    assert r.model.fc.in_features == 16  # width=4 reached the constructor: 4 * width features
    assert r.control is not None and r.control.model.fc.in_features == 16  # the control: the same student
    reloaded, manifest = load_checkpoint(r.out / r.row["checkpoint"])  # rebuilt from the recorded arguments
    assert manifest.model_args == {"width": 4} and reloaded.fc.in_features == 16
    assert r.control is not None and r.control.row["distill_role"] == "scratch"
    assert r.control.row["model"] == DWNET and r.control.row["epochs"] == r.row["epochs"]
    assert r.control.row["variant"] != r.row["variant"]
    assert type(r.model).__name__ == "DWNet" and r.row["status"] == "ok"


def test_sub_byte_qat_of_a_graph_ships_the_trained_grid(bases: dict[str, ds.Result], data: ds.Data,
                                                       tmp_path: Path) -> None:
    """4-bit QAT on a residual graph: weights trained on fixed per-channel steps, bit-packed; the packed
    file decodes to exactly the checkpoint's weights."""
    r = ds.compress(bases["resnet8"], ["quantize:precision=int8,bits=4,method=qat,epochs=1"], data, out=tmp_path,
                    device="cpu")
    assert r.row["precision"] == "int4-weights" and r.row["deployment"] == "dsq-int4-weights"
    decoded = decode(_artifact(r).read_bytes(), "m.dsq")
    state = r.model.state_dict()
    assert all(torch.equal(decoded[k], state[k].float()) for k in decoded if k.endswith(".weight"))
