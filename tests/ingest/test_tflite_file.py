"""The TFLite reader: MLPerf Tiny's reference models read as their README lists them, a generated model read
without them, and every malformed file refused with one UserError line naming it (never another exception)."""

from collections import Counter
from dataclasses import replace
from pathlib import Path

import flatbuffers
import numpy as np
import pytest
import tflite
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepshrink.errors import UserError
from deepshrink.ingest.tflite_file import TfModel, TfOperator, TfTensor, read_tflite, read_tflite_file
from deepshrink.ingest.tflite_write import write_tflite

MLPERF = Path(__file__).resolve().parents[2].parent / "shared" / "mlperf-tiny"
# MLPerf Tiny's README table: file -> (input shape, output shape, operator counts).
REFERENCE = {
    "pretrainedResnet_quant.tflite": ((1, 32, 32, 3), (1, 10), {"CONV_2D": 9, "ADD": 3, "AVERAGE_POOL_2D": 1,
                                                                 "RESHAPE": 1, "FULLY_CONNECTED": 1, "SOFTMAX": 1}),
    "kws_ref_model.tflite": ((1, 49, 10, 1), (1, 12), {"CONV_2D": 5, "DEPTHWISE_CONV_2D": 4, "AVERAGE_POOL_2D": 1,
                                                        "RESHAPE": 1, "FULLY_CONNECTED": 1, "SOFTMAX": 1}),
    "vww_96_int8.tflite": ((1, 96, 96, 3), (1, 2), {"CONV_2D": 14, "DEPTHWISE_CONV_2D": 13, "AVERAGE_POOL_2D": 1,
                                                     "RESHAPE": 1, "FULLY_CONNECTED": 1, "SOFTMAX": 1}),
}


def _mlperf(name: str) -> Path:
    path = MLPERF / name
    if not path.is_file():
        pytest.skip(f"{path} absent (MLPerf Tiny's reference models live in ../shared/mlperf-tiny)")
    return path


def _t(index: int, shape: tuple[int, ...], dtype: str = "int8", scale: tuple[float, ...] = (0.05,),
       zero_point: tuple[int, ...] = (0,), dim: int = 0, data: np.ndarray | None = None) -> TfTensor:
    return TfTensor(index, f"t{index}", shape, dtype, np.array(scale, np.float32), np.array(zero_point, np.int64),
                    dim, data)


def tiny_model() -> TfModel:
    """CONV_2D (per-channel int8 weights, int32 bias) -> RESHAPE -> FULLY_CONNECTED (no bias) -> SOFTMAX."""
    rng = np.random.default_rng(0)
    tensors = (
        _t(0, (1, 4, 4, 1), scale=(0.5,), zero_point=(-1,)),
        _t(1, (2, 3, 3, 1), scale=(0.01, 0.02), zero_point=(0, 0), data=rng.integers(-127, 127, (2, 3, 3, 1), np.int8)),
        _t(2, (2,), "int32", scale=(0.005, 0.01), zero_point=(0, 0), data=np.array([7, -3], np.int32)),
        _t(3, (1, 4, 4, 2), scale=(0.1,)),
        _t(4, (2,), "int32", scale=(), zero_point=(), data=np.array([1, 32], np.int32)),
        _t(5, (1, 32), scale=(0.1,)),
        _t(6, (3, 32), data=rng.integers(-127, 127, (3, 32), np.int8)),
        _t(7, (1, 3), scale=(0.2,), zero_point=(5,)),
        _t(8, (1, 3), scale=(1 / 256,), zero_point=(-128,)),
    )
    conv = {"padding": "SAME", "stride_w": 1, "stride_h": 1, "fused_activation_function": "RELU",
            "dilation_w_factor": 1, "dilation_h_factor": 1, "quantized_bias_type": "FLOAT32"}
    fc = {"fused_activation_function": "NONE", "weights_format": "DEFAULT", "keep_num_dims": False,
          "asymmetric_quantize_inputs": False, "quantized_bias_type": "FLOAT32"}
    ops = (TfOperator(0, "CONV_2D", 3, (0, 1, 2), (3,), conv),
           TfOperator(1, "RESHAPE", 1, (3, 4), (5,), {"new_shape": (1, 32)}),
           TfOperator(2, "FULLY_CONNECTED", 4, (5, 6, -1), (7,), fc),
           TfOperator(3, "SOFTMAX", 2, (7,), (8,), {"beta": 1.0}))
    return TfModel("tiny.tflite", 3, "deepshrink test", tensors, ops, (0,), (8,))


def _refused(data: bytes, source: str = "bad.tflite") -> str:
    with pytest.raises(UserError) as e:
        read_tflite(data, source)
    message = str(e.value)
    assert message.startswith(source) and "\n" not in message
    return message


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_mlperf_models_read_as_their_readme_lists_them(name: str) -> None:
    model = read_tflite_file(_mlperf(name))
    shape_in, shape_out, counts = REFERENCE[name]
    assert model.version == 3 and len(model.inputs) == len(model.outputs) == 1
    x, y = model.tensors[model.inputs[0]], model.tensors[model.outputs[0]]
    assert (x.shape, x.dtype, y.shape, y.dtype) == (shape_in, "int8", shape_out, "int8")
    assert Counter(op.op for op in model.operators) == counts
    assert [op.op for op in model.operators][-4:] == ["AVERAGE_POOL_2D", "RESHAPE", "FULLY_CONNECTED", "SOFTMAX"]
    assert model.operators[0].op == "CONV_2D" and model.operators[0].inputs[0] == model.inputs[0]
    for op in model.operators:
        if op.op in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            _check_conv(model, op)


def _check_conv(model: TfModel, op: TfOperator) -> None:
    """Per-channel int8 weights (the output channel: dimension 0 for CONV_2D, 3 for DEPTHWISE_CONV_2D), int32
    biases with one scale per channel, SAME/VALID padding and a fused activation by name."""
    w, b = model.tensors[op.inputs[1]], model.tensors[op.inputs[2]]
    dim = 0 if op.op == "CONV_2D" else 3
    channels = w.shape[dim]
    assert w.dtype == "int8" and w.data is not None and w.data.shape == w.shape and w.data.dtype == np.int8
    assert w.quantized_dimension == dim and w.scale.shape == w.zero_point.shape == (channels,)
    assert w.scale.dtype == np.float32 and w.zero_point.dtype == np.int64 and not w.zero_point.any()
    assert b.dtype == "int32" and b.data is not None and b.data.shape == (channels,) and b.data.dtype == np.int32
    assert b.scale.shape == (channels,)
    assert op.options["padding"] in ("SAME", "VALID") and op.options["fused_activation_function"] in ("NONE", "RELU")
    assert op.options["stride_h"] >= 1 and op.options["dilation_w_factor"] == 1
    if op.op == "DEPTHWISE_CONV_2D":
        assert op.options["depth_multiplier"] == 1


def test_mlperf_float_model_has_no_quantization() -> None:
    model = read_tflite_file(_mlperf("pretrainedResnet.tflite"))
    assert model.tensors[model.inputs[0]].dtype == "float32"
    assert all(t.scale.size == 0 and t.zero_point.size == 0 for t in model.tensors if t.dtype == "float32")
    assert Counter(op.op for op in model.operators) == REFERENCE["pretrainedResnet_quant.tflite"][2]


def test_kws_pool_and_softmax_options() -> None:
    ops = read_tflite_file(_mlperf("kws_ref_model.tflite")).operators
    assert ops[-4].options == {"padding": "VALID", "stride_w": 5, "stride_h": 25, "filter_width": 5,
                               "filter_height": 25, "fused_activation_function": "NONE"}
    assert ops[-1].options == {"beta": 1.0}
    assert ops[-2].options["weights_format"] == "DEFAULT" and ops[-2].options["keep_num_dims"] is False


@pytest.mark.parametrize("name", [*sorted(REFERENCE), "pretrainedResnet.tflite"])
def test_mlperf_models_survive_a_round_trip_through_the_writer(name: str) -> None:
    model = read_tflite_file(_mlperf(name))
    _assert_same(read_tflite(write_tflite(model), model.source), model)


def _assert_same(got: TfModel, want: TfModel) -> None:
    assert (got.operators, got.inputs, got.outputs, got.description) == \
        (want.operators, want.inputs, want.outputs, want.description)
    assert len(got.tensors) == len(want.tensors)
    for a, b in zip(got.tensors, want.tensors, strict=True):
        assert (a.index, a.name, a.shape, a.dtype, a.quantized_dimension) == \
            (b.index, b.name, b.shape, b.dtype, b.quantized_dimension)
        assert np.array_equal(a.scale, b.scale) and np.array_equal(a.zero_point, b.zero_point)
        assert a.scale.dtype == np.float32 and a.zero_point.dtype == np.int64
        assert (a.data is None) == (b.data is None)
        if a.data is not None:
            assert a.data.dtype == np.dtype(a.dtype) and np.array_equal(a.data, b.data)


def test_a_generated_model_reads_back_without_shared_files() -> None:
    model = tiny_model()
    got = read_tflite(write_tflite(model), "tiny.tflite")
    _assert_same(got, model)
    assert got.operators[2].inputs == (5, 6, -1)  # the omitted bias
    assert got.tensors[3].data is None and not got.tensors[0].data  # activations
    assert got.tensors[4].scale.size == 0


def test_a_generated_model_runs_in_tflite_micro() -> None:
    """The writer's files are real TFLite: TFLM's own interpreter loads and runs the tiny model."""
    runtime = pytest.importorskip("tflite_micro.python.tflite_micro.runtime")
    interpreter = runtime.Interpreter.from_bytes(write_tflite(tiny_model()))
    interpreter.set_input(np.ones((1, 4, 4, 1), np.int8), 0)
    interpreter.invoke()
    assert interpreter.get_output(0).shape == (1, 3)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="nope.tflite"):
        read_tflite_file(tmp_path / "nope.tflite")
    with pytest.raises(UserError, match="folder.tflite"):
        read_tflite_file((tmp_path / "folder.tflite").mkdir() or tmp_path / "folder.tflite")
    path = tmp_path / "m.tflite"
    path.write_bytes(write_tflite(tiny_model()))
    assert read_tflite_file(path).source == str(path)
    path.write_bytes(b"TFL3" * 3)
    with pytest.raises(UserError, match=str(path)):
        read_tflite_file(path)


def test_wrong_identifier_and_truncated_files() -> None:
    data = write_tflite(tiny_model())
    assert "not a TFLite file" in _refused(data[:4] + b"TFL2" + data[8:])
    assert "not a TFLite file" in _refused(b"")
    for cut in (8, 12, 40, len(data) // 3, len(data) // 2, len(data) - 200, len(data) - 1):
        _refused(data[:cut])


def test_out_of_range_offsets() -> None:
    data = write_tflite(tiny_model())
    assert "corrupt" in _refused((len(data) + 8).to_bytes(4, "little") + data[4:])  # the root offset
    assert "corrupt" in _refused((0xFFFFFFFC).to_bytes(4, "little") + data[4:])
    root = int.from_bytes(data[:4], "little")
    vtable = root - int.from_bytes(data[root : root + 4], "little", signed=True)
    for slot in range(4, int.from_bytes(data[vtable : vtable + 2], "little"), 2):  # each field of the model
        field = int.from_bytes(data[vtable + slot : vtable + slot + 2], "little")
        if field and slot != 4:  # every field but the version is an offset: point it past the end
            bad = bytearray(data)
            bad[root + field : root + field + 4] = (len(data) * 4).to_bytes(4, "little")
            _refused(bytes(bad))


def test_semantic_checks_name_the_tensor_or_operator() -> None:
    model = tiny_model()

    def refused(m: TfModel) -> str:
        return _refused(write_tflite(m))

    def tensor(i: int, **changes: object) -> TfModel:
        return replace(model, tensors=tuple(replace(t, **changes) if t.index == i else t for t in model.tensors))

    short = model.tensors[1].data.reshape(-1)[:-1]  # type: ignore[union-attr]
    assert "tensor 1 ('t1') holds 17 bytes" in refused(tensor(1, data=short))
    assert "holds 36 bytes" in refused(tensor(1, data=np.zeros(36, np.int8)))
    assert "negative dimension" in refused(tensor(3, shape=(1, -4, 4, 2)))
    assert "byte limit" in refused(tensor(3, shape=(1 << 20, 1 << 20)))
    assert "zero points" in refused(tensor(1, zero_point=np.zeros(1, np.int64)))
    assert "scales for dimension 3" in refused(tensor(1, quantized_dimension=3))
    bad_op = replace(model.operators[0], inputs=(0, 1, 99))
    assert "operator 0 (CONV_2D): its inputs name tensor 99" in refused(replace(model, operators=(bad_op,)))
    assert "subgraph's outputs name tensor 9" in refused(replace(model, outputs=(9,)))


def _handmade(subgraphs: int = 1, version: int = 3, tensor_type: int = tflite.TensorType.INT8,
              offset: int = 0, size: int = 0) -> bytes:
    """A model of one int8 tensor (shape (4,), buffer 1) built field by field, for what the writer never writes:
    other subgraph counts and versions, other tensor types, data outside the flatbuffer (offset, size)."""
    b = flatbuffers.Builder(256)
    shape = b.CreateNumpyVector(np.array([4], np.int32))
    tflite.TensorStart(b)
    tflite.TensorAddShape(b, shape)
    tflite.TensorAddType(b, tensor_type)
    tflite.TensorAddBuffer(b, 1)
    tensor = tflite.TensorEnd(b)
    b.StartVector(4, 1, 4)
    b.PrependUOffsetTRelative(tensor)
    tensors = b.EndVector()
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tensors)
    graph = tflite.SubGraphEnd(b)
    buffers = []
    for i in range(2):
        tflite.BufferStart(b)
        if i:
            tflite.BufferAddOffset(b, offset)
            tflite.BufferAddSize(b, size)
        buffers.append(tflite.BufferEnd(b))
    vectors = []
    for items in ([graph] * subgraphs, buffers):
        b.StartVector(4, len(items), 4)
        for item in reversed(items):
            b.PrependUOffsetTRelative(item)
        vectors.append(b.EndVector())
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, version)
    tflite.ModelAddSubgraphs(b, vectors[0])
    tflite.ModelAddBuffers(b, vectors[1])
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def test_handmade_files() -> None:
    assert read_tflite(_handmade(), "ok.tflite").tensors[0].data is None
    assert "2 subgraphs; the microcontroller target takes one" in _refused(_handmade(subgraphs=2))
    assert "0 subgraphs" in _refused(_handmade(subgraphs=0))
    assert "schema version 2" in _refused(_handmade(version=2))
    assert "has type STRING" in _refused(_handmade(tensor_type=tflite.TensorType.STRING))
    assert "type unknown (99)" in _refused(_handmade(tensor_type=99))
    assert "outside the file" in _refused(_handmade(offset=10_000, size=4))


def test_data_stored_after_the_flatbuffer_is_read_when_inside_the_file() -> None:
    end = len(_handmade(offset=2, size=4))  # the fields' values do not change the flatbuffer's length
    data = _handmade(offset=end, size=4) + bytes([1, 2, 0xFF, 4])
    assert read_tflite(data, "big.tflite").tensors[0].data.tolist() == [1, 2, -1, 4]  # type: ignore[union-attr]
    assert "holds 3 bytes" in _refused(_handmade(offset=end, size=3) + bytes(4))


def test_aliased_tables_cannot_blow_a_small_file_up() -> None:
    """5,000 tensors sharing one table with a 10 kB name: 50 MB of names from a 30 kB file is refused, fast."""
    b = flatbuffers.Builder(1024)
    name = b.CreateString("x" * 10_000)
    tflite.TensorStart(b)
    tflite.TensorAddName(b, name)
    tensor = tflite.TensorEnd(b)
    b.StartVector(4, 5000, 4)
    for _ in range(5000):
        b.PrependUOffsetTRelative(tensor)
    tensors = b.EndVector()
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tensors)
    graph = tflite.SubGraphEnd(b)
    tflite.BufferStart(b)
    buffer = tflite.BufferEnd(b)
    vectors = []
    for item in (graph, buffer):
        b.StartVector(4, 1, 4)
        b.PrependUOffsetTRelative(item)
        vectors.append(b.EndVector())
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddSubgraphs(b, vectors[0])
    tflite.ModelAddBuffers(b, vectors[1])
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    data = bytes(b.Output())
    assert len(data) < 40_000 and "overlap" in _refused(data)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_random_bytes_and_mutations_never_crash(data: st.DataObject) -> None:
    seed = _TINY
    if data.draw(st.booleans()):
        blob = data.draw(st.binary(max_size=200))
        blob = blob[:4] + b"TFL3" + blob[8:] if data.draw(st.booleans()) else blob
    else:
        blob = bytearray(seed)
        for _ in range(data.draw(st.integers(1, 6))):
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] = data.draw(st.integers(0, 255))
        blob = bytes(blob[: data.draw(st.integers(0, len(blob)))])
    try:
        read_tflite(bytes(blob), "fuzz.tflite")
    except UserError as e:
        assert str(e).startswith("fuzz.tflite") and "\n" not in str(e)


_TINY = write_tflite(tiny_model())
