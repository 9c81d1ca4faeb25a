"""Load-time decode of INT8-stored float-compute weights: the same outputs as the QDQ file run as it is,
no DequantizeLinear of initializers left, integer layers untouched, the shipped file unchanged."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from deepshrink.export.formats import dsonnx
from deepshrink.export.formats.onnx_int8 import build_qdq
from deepshrink.export.runtimes import ort_runner
from deepshrink.export.runtimes.weight_decode import decode_float_weights, loadable
from deepshrink.quant.plan import observe_ranges


def _tiny() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 16),
                         nn.ReLU(), nn.Linear(16, 5)).eval()


def _x(n: int = 16) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 1, 8, 8)).astype(np.float32)


def _qdq(int8_layers: set[str]) -> onnx.ModelProto:
    model = _tiny()
    return build_qdq(model, observe_ranges(model, torch.from_numpy(_x(32))), (1, 8, 8), int8_layers)


def _as_is(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The QDQ file run by ONNX Runtime without any decode: DequantizeLinear computed on each call."""
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0])


def _initializer_dqs(model: onnx.ModelProto) -> list[str]:
    inits = {t.name for t in model.graph.initializer}
    return [n.name or n.output[0] for n in model.graph.node
            if n.op_type == "DequantizeLinear" and all(i in inits for i in n.input if i)]


def test_weights_mode_decodes_every_weight_and_computes_the_same(tmp_path: Path) -> None:
    qdq = _qdq(set())  # "weights" mode: every layer int8-stored, float compute
    assert len(_initializer_dqs(qdq)) == 3
    path = tmp_path / "w.onnx"
    path.write_bytes(qdq.SerializeToString())
    shipped = path.read_bytes()
    decoded = onnx.load_from_string(loadable(path))  # type: ignore[arg-type]
    assert _initializer_dqs(decoded) == []
    assert not any(n.op_type == "DequantizeLinear" for n in decoded.graph.node)
    assert all(t.data_type == onnx.TensorProto.FLOAT for t in decoded.graph.initializer)
    x = _x()
    np.testing.assert_allclose(ort_runner(path)(1, "cpu")(x), _as_is(qdq, x), rtol=1e-6, atol=1e-6)
    assert path.read_bytes() == shipped  # the decode is the runner's, not the file's


def test_integer_layers_keep_their_quantized_weights() -> None:
    qdq = _qdq({"4", "6"})  # "mixed": the conv in float, the Linear layers in int8
    decoded = onnx.ModelProto.FromString(qdq.SerializeToString())
    assert decode_float_weights(decoded) == 1  # only the conv's weight
    assert len(_initializer_dqs(decoded)) == 2  # the Linear layers' weights still feed QGemm
    x = _x()
    np.testing.assert_allclose(_as_is(decoded, x), _as_is(qdq, x), rtol=1e-5, atol=1e-5)
    full = _qdq({"0", "4", "6"})
    assert decode_float_weights(onnx.ModelProto.FromString(full.SerializeToString())) == 0


def test_packed_file_unpacks_to_a_decodable_model(tmp_path: Path) -> None:
    qdq = _qdq(set())
    raw = dsonnx.decode(dsonnx.encode(qdq.SerializeToString()))
    path = tmp_path / "u.onnx"
    path.write_bytes(raw)
    assert _initializer_dqs(onnx.load_from_string(loadable(path))) == []  # type: ignore[arg-type]


def test_per_tensor_and_zero_point_decode_like_the_operator() -> None:
    from onnx import TensorProto, helper, numpy_helper

    q = np.array([[-3, 0, 5], [7, -128, 127]], np.int8)
    inits = [numpy_helper.from_array(q, "q"), numpy_helper.from_array(np.array([0.5, 2.0], np.float32), "s"),
             numpy_helper.from_array(np.array([1, -2], np.int8), "z"),
             numpy_helper.from_array(np.array(0.25, np.float32), "s1")]
    nodes = [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["w"], axis=0),
             helper.make_node("DequantizeLinear", ["q", "s1"], ["w1"]),
             helper.make_node("MatMul", ["x", "w"], ["a"]), helper.make_node("MatMul", ["x", "w1"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = np.random.default_rng(1).standard_normal((4, 2)).astype(np.float32)
    before = _as_is(model, x)
    assert decode_float_weights(model) == 2
    np.testing.assert_array_equal(_as_is(model, x), before)


@pytest.mark.parametrize("blob", [b"not onnx"])
def test_unparsable_file_is_left_to_the_runtime(tmp_path: Path, blob: bytes) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(blob)
    assert loadable(path) == str(path)
