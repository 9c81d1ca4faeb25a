"""A .tflite file's own preprocessing (TFLite Support's metadata, NormalizationOptions of its first input):
read as TFLite states it, turned into deepshrink's mean and std (raw exactly for mean 0, std 1), used by
compress where --normalize is not given, and any malformed metadata one UserError naming the file."""

from pathlib import Path

import flatbuffers
import numpy as np
import pytest
import tflite
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepshrink.data.normalize import RAW_STD
from deepshrink.errors import UserError
from deepshrink.ingest.tflite_file import IDENTIFIER, TfModel, TfOperator, TfTensor, read_tflite
from deepshrink.ingest.tflite_metadata import METADATA_NAME, input_normalization, stated_normalization
from deepshrink.ingest.tflite_write import write_tflite
from deepshrink.study.trained import BroughtModel, brought_variant

from conftest import make_splits

FC = {"fused_activation_function": "NONE", "weights_format": "DEFAULT", "keep_num_dims": False}


def float_model(channels: int = 1) -> bytes:
    """A float classifier of (1, 4, 4, channels) images: one FULLY_CONNECTED to 10 logits."""
    rng = np.random.default_rng(0)
    none, no_zp = np.zeros(0, np.float32), np.zeros(0, np.int64)
    tensors = (TfTensor(0, "image", (1, 4, 4, channels), "float32", none, no_zp, 0, None),
               TfTensor(1, "w", (10, 16 * channels), "float32", none, no_zp, 0,
                        rng.normal(0, 0.1, (10, 16 * channels)).astype(np.float32)),
               TfTensor(2, "logits", (1, 10), "float32", none, no_zp, 0, None))
    op = TfOperator(0, "FULLY_CONNECTED", 1, (0, 1, -1), (2,), FC)
    return write_tflite(TfModel("float.tflite", 3, "deepshrink test", tensors, (op,), (0,), (2,)))


def _vector(b: flatbuffers.Builder, offsets: list[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return int(b.EndVector())


def model_metadata(mean: list[float] | None, std: list[float] | None = None, kind: int = 1,
                   first_unit: int | None = None) -> bytes:
    """A ModelMetadata flatbuffer (metadata_schema.fbs) whose first input tensor's process units are
    `first_unit` (an options-less unit of that union type, when given) then NormalizationOptions(mean,
    std) as union type `kind` (no process unit when `mean` is None). Fields by index, as flatc numbers
    them: a union takes two (its type, then its table)."""
    b = flatbuffers.Builder(256)
    units = []
    if first_unit is not None:
        b.StartObject(2)
        b.PrependUint8Slot(0, first_unit, 0)
        units.append(b.EndObject())
    if mean is not None:
        m = b.CreateNumpyVector(np.asarray(mean, np.float32))
        s = b.CreateNumpyVector(np.asarray(std or [], np.float32))
        b.StartObject(2)  # NormalizationOptions: mean, std
        b.PrependUOffsetTRelativeSlot(0, m, 0)
        b.PrependUOffsetTRelativeSlot(1, s, 0)
        options = b.EndObject()
        b.StartObject(2)  # ProcessUnit: options_type, options
        b.PrependUint8Slot(0, kind, 0)
        b.PrependUOffsetTRelativeSlot(1, options, 0)
        units.append(b.EndObject())
    unit_vec = _vector(b, units)
    name = b.CreateString("image")
    b.StartObject(7)  # TensorMetadata: name, description, dimension_names, content, process_units, ...
    b.PrependUOffsetTRelativeSlot(0, name, 0)
    b.PrependUOffsetTRelativeSlot(4, unit_vec, 0)
    inputs = _vector(b, [b.EndObject()])
    b.StartObject(10)  # SubGraphMetadata: name, description, input_tensor_metadata, ...
    b.PrependUOffsetTRelativeSlot(2, inputs, 0)
    subgraphs = _vector(b, [b.EndObject()])
    title = b.CreateString("test classifier")
    b.StartObject(8)  # ModelMetadata: name, description, version, subgraph_metadata, ...
    b.PrependUOffsetTRelativeSlot(0, title, 0)
    b.PrependUOffsetTRelativeSlot(3, subgraphs, 0)
    b.Finish(b.EndObject(), file_identifier=b"M001")
    return bytes(b.Output())


def with_metadata(data: bytes, meta: bytes, name: str = METADATA_NAME, buffer: int | None = None) -> bytes:
    """`data` (a .tflite) with one metadata entry `name` -> a new buffer holding `meta` (or -> buffer index
    `buffer`): a new root Model is built in front of the old bytes, reusing their tables, which stay valid
    because every flatbuffer offset points forward."""
    old = tflite.Model.GetRootAs(data, 0)
    b = flatbuffers.Builder(len(data))
    b.Bytes[:], b.head, b.minalign = bytearray(data), 0, 8  # the old file is the builder's tail

    def at(pos: int) -> int:  # a builder offset (from the end) of a position in the old file
        return len(data) - pos

    raw = b.CreateNumpyVector(np.frombuffer(meta, np.uint8))
    tflite.BufferStart(b)
    tflite.BufferAddData(b, raw)
    buffers = [at(old.Buffers(k)._tab.Pos) for k in range(old.BuffersLength())] + [tflite.BufferEnd(b)]
    entry_name = b.CreateString(name)
    tflite.MetadataStart(b)
    tflite.MetadataAddName(b, entry_name)
    tflite.MetadataAddBuffer(b, len(buffers) - 1 if buffer is None else buffer)
    entries = _vector(b, [tflite.MetadataEnd(b)])
    codes = _vector(b, [at(old.OperatorCodes(k)._tab.Pos) for k in range(old.OperatorCodesLength())])
    graphs, buffer_vec = _vector(b, [at(old.Subgraphs(0)._tab.Pos)]), _vector(b, buffers)
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, old.Version())
    tflite.ModelAddOperatorCodes(b, codes)
    tflite.ModelAddSubgraphs(b, graphs)
    tflite.ModelAddBuffers(b, buffer_vec)
    tflite.ModelAddMetadata(b, entries)
    b.Finish(tflite.ModelEnd(b), file_identifier=IDENTIFIER)
    return bytes(b.Output())


def _refused(data: bytes, source: str = "meta.tflite") -> str:
    with pytest.raises(UserError) as e:
        input_normalization(read_tflite(data, source))
    message = str(e.value)
    assert message.startswith(source) and "\n" not in message
    return message


@pytest.mark.parametrize(("mean", "std", "tflite_norm", "ours"), [
    ([127.5], [127.5], ([127.5], [127.5]), ([0.5], [0.5])),
    ([0.0], [1.0], ([0.0], [1.0]), ([0.0], [RAW_STD])),
    ([0.0], [255.0], ([0.0], [255.0]), ([0.0], [1.0])),
    ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0], ([0.0] * 3, [1.0] * 3), ([0.0], [RAW_STD])),
    ([51.0, 127.5, 204.0], [25.5], ([51.0, 127.5, 204.0], [25.5]), ([0.2, 0.5, 0.8], [0.1])),
])
def test_normalization_is_read_and_converted(mean: list[float], std: list[float],
                                             tflite_norm: tuple[list[float], list[float]],
                                             ours: tuple[list[float], list[float]]) -> None:
    model = read_tflite(with_metadata(float_model(), model_metadata(mean, std)), "meta.tflite")
    assert model.metadata[METADATA_NAME] == model_metadata(mean, std)
    assert input_normalization(model) == tflite_norm
    got = stated_normalization(model)
    assert got is not None and got[0] == ours[0] and np.allclose(got[1], ours[1], rtol=1e-15, atol=0)
    assert tflite_norm != ([0.0], [1.0]) or got == ([0.0], [RAW_STD])  # raw exactly: pixels pass bit for bit


def test_no_metadata_no_unit_or_another_unit_states_nothing() -> None:
    assert read_tflite(float_model(), "plain.tflite").metadata == {}
    assert input_normalization(read_tflite(float_model(), "plain.tflite")) is None
    for meta in (model_metadata(None), model_metadata(None, first_unit=3)):  # 3: ScoreThresholdingOptions
        assert input_normalization(read_tflite(with_metadata(float_model(), meta), "m.tflite")) is None
    other = with_metadata(float_model(), model_metadata([127.5], [127.5]), name="min_runtime_version")
    assert input_normalization(read_tflite(other, "m.tflite")) is None
    # the normalization need not be the first process unit
    later = with_metadata(float_model(), model_metadata([127.5], [127.5], first_unit=3))
    assert input_normalization(read_tflite(later, "m.tflite")) == ([127.5], [127.5])


def test_malformed_metadata_is_one_user_error_naming_the_file() -> None:
    good = model_metadata([127.5], [127.5])
    assert "not a ModelMetadata" in _refused(with_metadata(float_model(), good[:4] + b"XXXX" + good[8:]))
    assert "corrupt TFLite file" in _refused(with_metadata(float_model(), good[:6]))
    assert "corrupt TFLite file" in _refused(with_metadata(float_model(), b"\xf0\xff\xff\x7fM001" + good[8:]))
    assert "holds no options" in _refused(with_metadata(float_model(), model_metadata(None, first_unit=1)))
    assert "missing values" in _refused(with_metadata(float_model(), model_metadata([127.5], [])))
    assert "positive std" in _refused(with_metadata(float_model(), model_metadata([0.0], [0.0])))
    assert "positive std" in _refused(with_metadata(float_model(), model_metadata([float("nan")], [1.0])))
    with pytest.raises(UserError, match=r"^bad.tflite: metadata 0 .* names buffer 99, outside"):
        read_tflite(with_metadata(float_model(), good, buffer=99), "bad.tflite")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_damaged_metadata_reads_or_is_one_user_error(data: st.DataObject) -> None:
    meta = bytearray(model_metadata([120.0, 110.0, 100.0], [60.0], first_unit=3))
    for _ in range(data.draw(st.integers(1, 4))):
        meta[data.draw(st.integers(0, len(meta) - 1))] = data.draw(st.integers(0, 255))
    model = read_tflite(with_metadata(float_model(), bytes(meta)), "fuzz.tflite")
    try:
        found = input_normalization(model)
    except UserError as e:
        assert str(e).startswith("fuzz.tflite: ") and "\n" not in str(e)
    else:
        assert found is None or all(isinstance(v, float) for v in found[0] + found[1])


def _write(tmp_path: Path, data: bytes, name: str = "net.tflite") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_compress_takes_the_files_normalization(tmp_path: Path) -> None:
    splits = make_splits(n_train=16, n_val=8, n_test=8, shape=(1, 4, 4))
    raw = _write(tmp_path, with_metadata(float_model(), model_metadata([0.0], [1.0])))
    v, data = brought_variant(BroughtModel(path=raw, dataset="mnist"), data=splits)
    assert (v.manifest.mean, v.manifest.std) == ([0.0], [RAW_STD]) and "metadata" in v.manifest.train["normalize"]
    pixels = data.test_x.numpy()
    assert np.array_equal(pixels, np.rint(pixels)) and pixels.max() > 200  # the 0-255 values themselves

    half = _write(tmp_path, with_metadata(float_model(), model_metadata([127.5], [127.5])), "half.tflite")
    v, data = brought_variant(BroughtModel(path=half, dataset="mnist"), data=splits)
    assert (v.manifest.mean, v.manifest.std) == ([0.5], [0.5])
    assert np.allclose(data.test_x.numpy(), (pixels - 127.5) / 127.5, atol=1e-6)

    # --normalize wins over the file's metadata (and then the metadata is not even read)
    v, _ = brought_variant(BroughtModel(path=half, dataset="mnist", normalize="none"), data=splits)
    assert (v.manifest.mean, v.manifest.std) == ([0.0], [1.0]) and "normalize" not in v.manifest.train
    bad = _write(tmp_path, with_metadata(float_model(), b"garbage!" * 4), "bad.tflite")
    v, _ = brought_variant(BroughtModel(path=bad, dataset="mnist", normalize="raw"), data=splits)
    assert (v.manifest.mean, v.manifest.std) == ([0.0], [RAW_STD])
    with pytest.raises(UserError, match=r"bad.tflite: corrupt TFLite file: its TFLITE_METADATA"):
        brought_variant(BroughtModel(path=bad, dataset="mnist"), data=splits)


def test_per_channel_metadata_and_the_refusal_without_either(tmp_path: Path) -> None:
    rgb = make_splits(n_train=16, n_val=8, n_test=8, shape=(3, 4, 4), name="cifar10")
    per_channel = with_metadata(float_model(3), model_metadata([51.0, 127.5, 204.0], [25.5]))
    v, _ = brought_variant(BroughtModel(path=_write(tmp_path, per_channel), dataset="cifar10"), data=rgb)
    assert v.manifest.mean == [0.2, 0.5, 0.8] and np.allclose(v.manifest.std, [0.1] * 3)

    two = _write(tmp_path, with_metadata(float_model(3), model_metadata([1.0, 2.0], [1.0])), "two.tflite")
    with pytest.raises(UserError, match=r"two.tflite: its metadata's input normalization: mean has 2 values"):
        brought_variant(BroughtModel(path=two, dataset="cifar10"), data=rgb)

    plain = _write(tmp_path, float_model(3), "plain.tflite")
    with pytest.raises(UserError, match=r"plain.tflite: the file does not say how its input is normalized"):
        brought_variant(BroughtModel(path=plain, dataset="cifar10"), data=rgb)
    v, _ = brought_variant(BroughtModel(path=plain, dataset="cifar10", normalize="raw"), data=rgb)
    assert (v.manifest.mean, v.manifest.std) == ([0.0] * 3, [RAW_STD] * 3)
