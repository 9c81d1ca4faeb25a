"""The float TFLite converter: small seeded nets written without TensorFlow (ingest/tflite_write.py) compute what
TensorFlow Lite's own interpreter computes, and so does their ONNX export (an uneven SAME pad folded into the
Conv); MLPerf Tiny's float ResNet where ../shared has it; every refusal one UserError line naming the file and
the operator, through `convert_tflite` and through `deepshrink compress`."""

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from deepshrink.errors import UserError
from deepshrink.export.formats.onnx_float import export_onnx
from deepshrink.ingest.tflite_file import TfModel, TfOperator, TfTensor, read_tflite
from deepshrink.ingest.tflite_to_torch import TfPad, convert_tflite, from_tflite
from deepshrink.ingest.tflite_write import write_tflite

from conftest import cli_error

MLPERF = Path(__file__).resolve().parents[2].parent / "shared" / "mlperf-tiny"
_NONE_F, _NONE_I = np.zeros(0, np.float32), np.zeros(0, np.int64)


@dataclass
class Net:
    """A float network being written: tensors, operators; each layer returns its output tensor's index."""

    rng: np.random.Generator
    tensors: list[TfTensor] = field(default_factory=list)
    ops: list[TfOperator] = field(default_factory=list)

    def tensor(self, shape: tuple[int, ...], data: np.ndarray | None = None, dtype: str = "float32") -> int:
        self.tensors.append(TfTensor(len(self.tensors), f"t{len(self.tensors)}", shape, dtype, _NONE_F, _NONE_I, 0,
                                     data))
        return len(self.tensors) - 1

    def weights(self, shape: tuple[int, ...], fan_in: int) -> int:
        """Random weights keeping activations near unit scale, so 1e-4 is a tight tolerance."""
        return self.tensor(shape, (self.rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32))

    def op(self, name: str, inputs: tuple[int, ...], shape: tuple[int, ...], options: dict[str, object]) -> int:
        out = self.tensor(shape)
        self.ops.append(TfOperator(len(self.ops), name, 1, inputs, (out,), options))
        return out

    def shape(self, i: int) -> tuple[int, ...]:
        return self.tensors[i].shape

    def model(self, name: str, inp: int, out: int) -> TfModel:
        return TfModel(f"{name}.tflite", 3, "deepshrink float test net", tuple(self.tensors), tuple(self.ops), (inp,),
                       (out,))


def _out_size(n: int, k: int, s: int, same: bool, d: int = 1) -> int:
    return -(-n // s) if same else (n - (k - 1) * d - 1) // s + 1


def conv(n: Net, x: int, out_c: int, k: int | tuple[int, int] = 3, stride: int = 1, same: bool = True,
         act: str = "NONE", mult: int = 0, dilation: int = 1) -> int:
    """CONV_2D, or DEPTHWISE_CONV_2D with channel multiplier `mult` (out_c is then ignored); TFLite's float
    kernels require the bias."""
    _, h, w, c = n.shape(x)
    kh, kw = (k, k) if isinstance(k, int) else k
    out_c = c * mult if mult else out_c
    wt = n.weights((1, kh, kw, out_c) if mult else (out_c, kh, kw, c), kh * kw * (1 if mult else c))
    b = n.tensor((out_c,), n.rng.standard_normal(out_c).astype(np.float32))
    shape = (1, _out_size(h, kh, stride, same, dilation), _out_size(w, kw, stride, same, dilation), out_c)
    opts = {"padding": "SAME" if same else "VALID", "stride_h": stride, "stride_w": stride,
            "dilation_h_factor": dilation, "dilation_w_factor": dilation, "fused_activation_function": act,
            **({"depth_multiplier": mult} if mult else {})}
    return n.op("DEPTHWISE_CONV_2D" if mult else "CONV_2D", (x, wt, b), shape, opts)


def pool(n: Net, x: int, kind: str, k: int, stride: int, same: bool = False) -> int:
    _, h, w, c = n.shape(x)
    opts = {"padding": "SAME" if same else "VALID", "stride_h": stride, "stride_w": stride, "filter_height": k,
            "filter_width": k, "fused_activation_function": "NONE"}
    shape = (1, _out_size(h, k, stride, same), _out_size(w, k, stride, same), c)
    return n.op("MAX_POOL_2D" if kind == "max" else "AVERAGE_POOL_2D", (x,), shape, opts)


def add(n: Net, a: int, b: int, act: str = "NONE") -> int:
    return n.op("ADD", (a, b), n.shape(a), {"fused_activation_function": act})


def flatten(n: Net, x: int) -> int:
    size = int(np.prod(n.shape(x)))
    return n.op("RESHAPE", (x, n.tensor((2,), np.array([1, size], np.int32), "int32")), (1, size), {})


def fc(n: Net, x: int, units: int, act: str = "NONE", bias: bool = True) -> int:
    """FULLY_CONNECTED on a (1, features) tensor or straight on a 4-D map (TFLite flattens it H x W x C)."""
    features = int(np.prod(n.shape(x)))
    b = n.tensor((units,), n.rng.standard_normal(units).astype(np.float32)) if bias else -1
    return n.op("FULLY_CONNECTED", (x, n.weights((units, features), features), b), (1, units),
                {"fused_activation_function": act, "keep_num_dims": False})


def softmax(n: Net, x: int) -> int:
    return n.op("SOFTMAX", (x,), n.shape(x), {"beta": 1.0})


# Each net: its input (N, H, W, C) and its layers; together they cover every operator, option and padding case.
NETS: dict[str, tuple[tuple[int, int, int, int], Callable[[Net, int], int]]] = {
    "conv-same-s1": ((1, 7, 6, 3), lambda n, x: conv(n, conv(n, x, 5, act="RELU"), 4, k=1)),
    # SAME with stride 2 on even sizes, and a 2x2 kernel at stride 1: the odd padding pixel goes bottom/right
    "conv-same-uneven": ((1, 8, 8, 2), lambda n, x: conv(n, conv(n, conv(n, x, 4, stride=2, act="RELU6"), 3, k=2),
                                                         3, k=(3, 2), stride=2)),
    "conv-valid": ((1, 9, 7, 2), lambda n, x: conv(n, conv(n, x, 4, k=(5, 3), stride=2, same=False,
                                                           act="RELU_N1_TO_1"), 3, k=2, same=False)),
    "conv-dilated": ((1, 9, 8, 2), lambda n, x: conv(n, conv(n, x, 3, dilation=2), 2, same=False, dilation=2)),
    "depthwise-m1": ((1, 8, 8, 3), lambda n, x: conv(n, conv(n, x, 0, mult=1, act="RELU6"), 0, mult=1, stride=2)),
    "depthwise-m2": ((1, 7, 7, 2), lambda n, x: conv(n, conv(n, x, 0, mult=2, same=False, act="RELU"), 3, k=1)),
    "pools": ((1, 8, 8, 3), lambda n, x: pool(n, pool(n, pool(n, pool(n, conv(n, x, 4, act="RELU"), "max", 2, 2),
                                                           "avg", 3, 1, same=True), "max", 3, 1, same=True),
                                               "avg", 2, 2)),
    "residual-add": ((1, 6, 6, 4), lambda n, x: add(n, x, add(n, conv(n, x, 4), conv(n, x, 4, k=1), "RELU"),
                                                    "RELU6")),
    # RESHAPE of a 5 x 4 x 3 map then FULLY_CONNECTED: the weights' columns must be permuted to C x H x W
    "flatten-fc": ((1, 5, 4, 2), lambda n, x: softmax(n, fc(n, fc(n, flatten(n, conv(n, x, 3, act="RELU")), 8,
                                                                  act="RELU"), 4))),
    "fc-on-map": ((1, 3, 4, 2), lambda n, x: softmax(n, fc(n, conv(n, x, 3, stride=2), 5, bias=False))),
    # a RESHAPE of the flattened map: the fully connected layer after it still needs the permutation
    "flatten-twice": ((1, 3, 3, 2), lambda n, x: fc(n, n.op("RESHAPE", (flatten(n, conv(n, x, 2)),), (1, 18),
                                                                        {"new_shape": (1, 18)}), 3)),
    "fc-on-pixel": ((1, 4, 4, 3), lambda n, x: fc(n, pool(n, conv(n, x, 6), "avg", 4, 1), 3, act="RELU_N1_TO_1")),
}


def random_net(seed: int) -> TfModel:
    """A random chain of the converter's layers on a random input, ending flatten -> fc -> softmax."""
    n = Net(np.random.default_rng(seed))
    x = inp = n.tensor((1, int(n.rng.integers(5, 10)), int(n.rng.integers(5, 10)), int(n.rng.integers(1, 4))))
    for _ in range(int(n.rng.integers(2, 5))):
        pick, k = str(n.rng.choice(["conv", "dw", "max", "avg", "add"])), int(n.rng.choice([1, 2, 3]))
        same = bool(n.rng.integers(2)) or k > min(n.shape(x)[1:3])
        s = int(n.rng.choice([1, 2]))
        act = str(n.rng.choice(["NONE", "RELU", "RELU6", "RELU_N1_TO_1"]))
        if pick in ("max", "avg") and k > 1 and min(n.shape(x)[1:3]) >= k:
            # SAME only where a pool's pads are even: the converter refuses uneven ones
            x = pool(n, x, pick, k, s, same=same and k % 2 == 1 and s == 1)
        elif pick == "add":
            x = add(n, x, conv(n, x, n.shape(x)[3], k=3), act)
        else:
            x = conv(n, x, int(n.rng.integers(2, 6)), k=k, stride=s, same=same, act=act,
                     mult=int(n.rng.integers(1, 3)) if pick == "dw" else 0)
    return n.model(f"random{seed}", inp, softmax(n, fc(n, flatten(n, x), int(n.rng.integers(2, 6)))))


def net(name: str, seed: int = 0) -> TfModel:
    if name.startswith("random"):
        return random_net(int(name.removeprefix("random")))
    shape, layers = NETS[name]
    n = Net(np.random.default_rng(seed))
    inp = n.tensor(shape)
    return n.model(name, inp, layers(n, inp))


def litert(data: bytes, images: np.ndarray, tensor: int | None = None) -> np.ndarray:
    """TFLite's interpreter on each N x H x W x C image: its output, or the tensor `tensor` (all are kept)."""
    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # preserving every tensor is "for debugging": that is what it is for here
        interp = Interpreter(model_content=data, experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    outs = []
    for image in images:
        interp.set_tensor(interp.get_input_details()[0]["index"], image[None])
        interp.invoke()
        outs.append(interp.get_tensor(interp.get_output_details()[0]["index"] if tensor is None else tensor))
    return np.concatenate(outs)


def ours(module: nn.Module, images: np.ndarray) -> np.ndarray:
    """The converted module on the N x H x W x C images, its output in TFLite's layout."""
    with torch.no_grad():
        y = module(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    return y.transpose(0, 2, 3, 1) if y.ndim == 4 else y


def check_against_litert(model: TfModel, data: bytes, module: nn.Module, images: np.ndarray) -> np.ndarray:
    """The module's logits against TFLite's (the tensor its last SOFTMAX reads) and softmax(logits) against its
    output; the logits."""
    got = ours(module, images)
    last = model.operators[-1]
    if last.op == "SOFTMAX":
        np.testing.assert_allclose(got, litert(data, images, last.inputs[0]), rtol=0, atol=1e-4)
        got = torch.softmax(torch.from_numpy(got), -1).numpy()
    np.testing.assert_allclose(got, litert(data, images), rtol=0, atol=1e-4)
    return got


def check_onnx(module: nn.Module, images: np.ndarray, path: Path) -> onnx.ModelProto:
    """The module's ONNX export computes what it does, with no Pad left before a Conv."""
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    export_onnx(module, path, x[:1])
    graph = onnx.load(str(path))
    readers = {i: node.op_type for node in graph.graph.node for i in node.input}
    assert not [p.name for p in graph.graph.node if p.op_type == "Pad" and readers.get(p.output[0]) == "Conv"]
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, module(x).numpy(), rtol=1e-4, atol=1e-5)
    return graph


@pytest.mark.parametrize("name", [*NETS, "random1", "random2", "random3", "random4"])
def test_converted_net_computes_what_tflite_does(name: str, tmp_path: Path) -> None:
    pytest.importorskip("ai_edge_litert.interpreter")
    model = net(name)
    data = write_tflite(model)
    module = convert_tflite(read_tflite(data, model.source))
    images = np.random.default_rng(1).standard_normal((3, *model.tensors[model.inputs[0]].shape[1:]),
                                                       dtype=np.float32)
    check_against_litert(model, data, module, images)
    check_onnx(module, images, tmp_path / "net.onnx")


def test_the_nets_exercise_what_they_claim() -> None:
    """The cases the nets exist for: uneven SAME pads (a TfPad, folded away in ONNX), channel multiplier 2, a
    flattened multi-pixel map read by a fully connected layer."""
    layers = {name: list(convert_tflite(net(name)).modules()) for name in NETS}
    pads = [m.padding for m in layers["conv-same-uneven"] if isinstance(m, TfPad)]
    assert pads == [(0, 1, 0, 1), (0, 1, 0, 1), (0, 0, 0, 1)]  # (left, right, top, bottom): the odd pixel after
    dw = next(m for m in layers["depthwise-m2"] if isinstance(m, nn.Conv2d))
    assert dw.groups == 2 and dw.out_channels == 4
    assert next(m.in_features for m in layers["flatten-fc"] if isinstance(m, nn.Linear)) == 5 * 4 * 3
    assert not any(isinstance(m, TfPad) for m in layers["conv-same-s1"])  # even SAME pads stay the Conv's own


def test_mlperf_float_resnet_computes_what_tflite_does(tmp_path: Path) -> None:
    pytest.importorskip("ai_edge_litert.interpreter")
    path = MLPERF / "pretrainedResnet.tflite"
    if not path.is_file():
        pytest.skip(f"{path} absent (MLPerf Tiny's reference models live in ../shared/mlperf-tiny)")
    model = read_tflite(path.read_bytes(), str(path))
    module = from_tflite(str(path))
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype(np.float32)
    logits = ours(module, images)
    assert np.ptp(logits) > 1.0  # 0-255 pixels reach the classifier: not a constant output
    check_against_litert(model, path.read_bytes(), module, images)
    check_onnx(module, images[:2], tmp_path / "resnet.onnx")


def test_the_file_s_shapes_of_computed_tensors_are_not_trusted() -> None:
    """TFLite's interpreter computes each operator's output shape from its input's: so does the converter (a wrong
    shape stated for a convolution's output would misplace the next convolution's pads)."""
    pytest.importorskip("ai_edge_litert.interpreter")
    model = net("conv-same-uneven")
    second = model.operators[1].outputs[0]  # 4 x 4 x 3, read by a stride-2 convolution: pads (0, 1) if so
    tensors = [replace(t, shape=(1, 5, 5, 3)) if t.index == second else t for t in model.tensors]
    data = write_tflite(replace(model, tensors=tuple(tensors)))
    images = np.random.default_rng(2).standard_normal((2, 8, 8, 2), dtype=np.float32)
    check_against_litert(model, data, convert_tflite(read_tflite(data, model.source)), images)


def _spoil(model: TfModel, what: str) -> TfModel:
    """`model` (flatten-fc: CONV_2D, RESHAPE, FULLY_CONNECTED, FULLY_CONNECTED, SOFTMAX) broken as `what` says."""
    ops, tensors = list(model.operators), list(model.tensors)
    if what == "stride":
        ops[0] = replace(ops[0], options={**ops[0].options, "stride_w": 0})
    elif what == "weights":
        w = ops[2].inputs[1]
        tensors[w] = replace(tensors[w], shape=(8, 7), data=np.ones((8, 7), np.float32))
    elif what == "order":  # the first FULLY_CONNECTED reads what the second computes
        ops[2] = replace(ops[2], inputs=(ops[3].outputs[0], *ops[2].inputs[1:]))
    elif what == "constant":
        ops[0] = replace(ops[0], inputs=(ops[0].inputs[1], *ops[0].inputs[1:]))
    elif what == "output":
        return replace(model, operators=tuple(ops[:-1]), outputs=(ops[2].inputs[1],))
    elif what == "beta":
        ops[4] = replace(ops[4], options={"beta": -1.0})
    return replace(model, operators=tuple(ops), tensors=tuple(tensors))


@pytest.mark.parametrize(("what", "needle"), [
    ("stride", "CONV_2D (operator 0): strides (1, 0)"), ("weights", "FULLY_CONNECTED (operator 2): weights of shape"),
    ("order", "FULLY_CONNECTED (operator 2): input 0 is tensor"), ("constant", "CONV_2D (operator 0): input 0 is"),
    ("output", "is not computed by any operator"), ("beta", "SOFTMAX (operator 4): beta -1.0"),
    ("add", "ADD (operator 2): only of two computed tensors")])
def test_an_inconsistent_file_is_refused(what: str, needle: str, tmp_path: Path) -> None:
    if what == "add":  # a flattened map's features are in another order here than in TFLite
        n = Net(np.random.default_rng(0))
        x = n.tensor((1, 3, 3, 2))
        flat = flatten(n, conv(n, x, 2))
        model = n.model("flat-add", x, fc(n, add(n, flat, flat), 3))
    else:
        model = _spoil(net("flatten-fc"), what)
    assert needle in _refused(tmp_path / "spoilt.tflite", write_tflite(model))


def _refused(path: Path, data: bytes) -> str:
    """The one-line UserError `from_tflite` gives for `data` written at `path`, starting with the path."""
    path.write_bytes(data)
    with pytest.raises(UserError) as e:
        from_tflite(str(path))
    message = str(e.value)
    assert message.startswith(str(path)) and "\n" not in message, message
    return message


def refused_net(op: str) -> TfModel:
    """A 6 x 6 x 3 classifier with `op` inside: MUL and CONCATENATION (not converted), SOFTMAX before the end."""
    n = Net(np.random.default_rng(0))
    x = inp = n.tensor((1, 6, 6, 3))
    y = conv(n, x, 3, act="RELU")
    if op == "SOFTMAX":
        return n.model("mid-softmax", inp, fc(n, softmax(n, flatten(n, y)), 3))
    if op == "MUL":
        y = n.op("MUL", (y, x), n.shape(y), {"fused_activation_function": "NONE"})
    else:
        y = n.op("CONCATENATION", (y, x), (1, 6, 6, 6), {"axis": 3, "fused_activation_function": "NONE"})
    return n.model(op.lower(), inp, softmax(n, fc(n, flatten(n, y), 3)))


@pytest.mark.parametrize(("op", "why"), [("MUL", "not supported"), ("CONCATENATION", "not supported"),
                                         ("SOFTMAX", "only as the last operator")])
def test_an_operator_it_cannot_convert_is_named(op: str, why: str, tmp_path: Path) -> None:
    message = _refused(tmp_path / "bad.tflite", write_tflite(refused_net(op)))
    assert f"cannot convert TFLite operator {op} (operator " in message and why in message


def test_a_truncated_file_is_refused(tmp_path: Path) -> None:
    data = write_tflite(net("flatten-fc"))
    for cut in (len(data) // 2, len(data) - 16, 40, 6):
        assert "TFLite file" in _refused(tmp_path / "cut.tflite", data[:cut])


def test_an_integer_model_is_refused(tmp_path: Path) -> None:
    model = net("conv-same-s1")
    int8 = replace(model.tensors[0], dtype="int8", scale=np.array([0.1], np.float32), zero_point=np.array([0]))
    written = write_tflite(replace(model, tensors=(int8, *model.tensors[1:])))
    assert "int8" in _refused(tmp_path / "int8.tflite", written) and "deepshrink mcu" in _refused(
        tmp_path / "int8.tflite", written)
    quant = MLPERF / "pretrainedResnet_quant.tflite"
    if quant.is_file():  # MLPerf Tiny's own int8 ResNet: its float twin above converts
        assert "int8" in _refused(tmp_path / "quant.tflite", quant.read_bytes())
    with pytest.raises(UserError, match=r"missing\.tflite: TFLite model not found"):
        from_tflite(str(tmp_path / "missing.tflite"))


def test_cli_compress_names_the_file_it_cannot_convert(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """`deepshrink compress BAD.tflite`: exit code 2 and one stderr line naming the file (and the operator)."""
    rng = np.random.default_rng(0)
    npz = tmp_path / "data.npz"
    np.savez(npz, x_train=rng.integers(0, 256, (40, 6, 6, 3), dtype=np.uint8), y_train=np.arange(40) % 3,
             x_test=rng.integers(0, 256, (12, 6, 6, 3), dtype=np.uint8), y_test=np.arange(12) % 3)
    unsupported, truncated = tmp_path / "mul.tflite", tmp_path / "cut.tflite"
    unsupported.write_bytes(write_tflite(refused_net("MUL")))
    truncated.write_bytes(write_tflite(refused_net("MUL"))[:300])
    for path, needle in ((unsupported, "MUL"), (truncated, "corrupt TFLite file")):
        line = cli_error(monkeypatch, capsys, "compress", str(path), "--dataset", f"npz:{npz}", "--normalize", "raw",
                         "--step", "quantize:precision=int8,method=ptq", "--out", str(tmp_path / "run"),
                         "--device", "cpu")
        assert str(path) in line and needle in line, line
