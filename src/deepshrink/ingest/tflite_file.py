"""Reading a TensorFlow Lite flatbuffer (.tflite, SPEC §12.1) a user hands us: the one subgraph's tensors
(shape, dtype, quantization, constant contents) and operators (builtin name, decoded options), with any
malformation turned into one UserError naming the file.

The `tflite` package's generated classes know TFLite's schema (slots, types, defaults), but flatbuffers'
Python runtime follows every offset blindly: past the end (struct.error), at a negative position (which
Python reads from the end), or into garbage. So every table read here sits on `_Checked`, a Table whose
each read checks the bytes it touches against the file; whatever else still goes wrong in the runtime is
caught once, at the top, and reported as a corrupt file."""

import inspect
import re
import struct
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import tflite
from flatbuffers import number_types as N
from flatbuffers.table import Table

from deepshrink.errors import UserError

IDENTIFIER = b"TFL3"
SCHEMA_VERSION = 3  # the only version TFLite's own interpreter loads
MAX_ITEMS = 100_000  # tensors, operators, buffers, operator codes: far past any microcontroller model
MAX_TENSOR_BYTES = 2**31  # one tensor's contents; larger is a hostile shape, not a model

# numpy's names for the types a tensor's contents can be viewed as; the rest (STRING, INT4, BFLOAT16,
# RESOURCE, VARIANT) have no numpy dtype, so a model holding them is refused.
_DTYPES = {
    tflite.TensorType.FLOAT32: "float32", tflite.TensorType.FLOAT16: "float16",
    tflite.TensorType.FLOAT64: "float64", tflite.TensorType.INT8: "int8", tflite.TensorType.UINT8: "uint8",
    tflite.TensorType.INT16: "int16", tflite.TensorType.UINT16: "uint16", tflite.TensorType.INT32: "int32",
    tflite.TensorType.UINT32: "uint32", tflite.TensorType.INT64: "int64", tflite.TensorType.UINT64: "uint64",
    tflite.TensorType.BOOL: "bool", tflite.TensorType.COMPLEX64: "complex64",
    tflite.TensorType.COMPLEX128: "complex128",
}
# Option fields whose integers are schema enums, reported by their names.
_ENUM_FIELDS: dict[str, type] = {
    "Padding": tflite.Padding, "FusedActivationFunction": tflite.ActivationFunctionType,
    "WeightsFormat": tflite.FullyConnectedOptionsWeightsFormat, "KernelType": tflite.LSTMKernelType,
    "Combiner": tflite.CombinerType, "Mode": tflite.MirrorPadMode, "Type": tflite.LSHProjectionType,
    "Algorithm": tflite.RngAlgorithm, "CompositeAttributesFormat": tflite.CustomOptionsFormat,
    **{f: tflite.TensorType for f in ("QuantizedBiasType", "IdxOutType", "InDataType", "OutDataType", "OutType",
                                      "OutputType", "KeyDtype", "ValueDtype")},
}
_NOT_GETTER = re.compile(r"^(Init|GetRootAs.*|.*BufferHasIdentifier)$|(AsNumpy|Length|IsNone)$")
_NO_FLOATS = np.zeros(0, np.float32)
_NO_INTS = np.zeros(0, np.int64)
_NO_FLOATS.flags.writeable = _NO_INTS.flags.writeable = False  # shared by every unquantized tensor


@dataclass(frozen=True)
class TfTensor:
    index: int
    name: str
    shape: tuple[int, ...]  # () for a scalar
    dtype: str  # numpy's name: "int8", "int32", "float32", ...
    scale: np.ndarray  # float32 (n,), empty when not quantized
    zero_point: np.ndarray  # int64 (n,), empty when not quantized
    quantized_dimension: int
    data: np.ndarray | None  # a constant's contents (read-only, `dtype`, `shape`); None for an activation


@dataclass(frozen=True)
class TfOperator:
    index: int
    op: str  # the schema's builtin name ("CONV_2D", ...), or "CUSTOM:<custom_code>"
    version: int
    inputs: tuple[int, ...]  # tensor indices; -1 for an omitted optional input
    outputs: tuple[int, ...]
    options: dict[str, Any]  # the options table, snake_case keys, enums by their schema names


@dataclass(frozen=True)
class TfModel:
    source: str  # the file name, for messages
    version: int  # schema version
    description: str
    tensors: tuple[TfTensor, ...]  # of the (only) subgraph
    operators: tuple[TfOperator, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    # Model.metadata: each entry's name and its buffer's bytes (TFLITE_METADATA, min_runtime_version, ...);
    # last and defaulted so that models built in code need not name it.
    metadata: dict[str, bytes] = field(default_factory=dict)


def same_pads(size: tuple[int, int], kernel: tuple[int, int], strides: tuple[int, int], same: bool,
              dilation: tuple[int, int] = (1, 1)) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """ONNX-order pads (top, left, bottom, right) and the output size, as TFLite's ComputePaddingHeightWidth."""
    out, pads = [], []
    for n, k, s, d in zip(size, kernel, strides, dilation, strict=True):
        k = (k - 1) * d + 1
        o = -(-n // s) if same else (n - k + s) // s
        total = max((o - 1) * s + k - n, 0) if same else 0
        out.append(o)
        pads.append((total // 2, total - total // 2))
    return (pads[0][0], pads[1][0], pads[0][1], pads[1][1]), (out[0], out[1])


class _Corrupt(Exception):
    """An offset or length pointing outside the file: reported as a corrupt file with what it was."""


def _need(buf: bytes, pos: int, size: int, what: str) -> None:
    """Every read goes through here first: `size` bytes at `pos` must lie inside the file."""
    if pos < 0 or size < 0 or pos + size > len(buf):
        raise _Corrupt(f"{what} at {pos} (+{size} bytes) lies outside the file's {len(buf)} bytes")


class _Checked(Table):
    """A flatbuffers Table that checks its vtable on creation and each offset and length it follows."""

    __slots__ = ("_size", "_vt", "_vt_size")

    def __init__(self, buf: bytes, pos: int) -> None:
        _need(buf, pos, 4, "table")
        vt = pos - struct.unpack_from("<i", buf, pos)[0]
        _need(buf, vt, 4, "vtable")
        vt_size, size = struct.unpack_from("<HH", buf, vt)
        if vt_size < 4 or vt_size % 2 or size < 4:
            raise _Corrupt(f"vtable at {vt} declares {vt_size} bytes for a table of {size}")
        _need(buf, vt, vt_size, "vtable")
        _need(buf, pos, size, "table")
        super().__init__(buf, pos)
        self._vt, self._vt_size, self._size = vt, vt_size, size

    def Offset(self, vtableOffset: int) -> int:
        if vtableOffset + 2 > self._vt_size:  # a field newer than the writer: absent, its default applies
            return 0
        field = int(struct.unpack_from("<H", self.Bytes, self._vt + vtableOffset)[0])
        if field >= self._size:
            raise _Corrupt(f"field at {field} past the end of its {self._size}-byte table at {self.Pos}")
        return field

    def Get(self, flags: Any, off: int) -> Any:
        _need(self.Bytes, off, flags.bytewidth, "value")
        return super().Get(flags, off)

    def Indirect(self, off: int) -> int:
        target = off + int(self.Get(N.UOffsetTFlags, off))
        _need(self.Bytes, target, 4, "offset target")  # a table's soffset, a vector's or string's length
        return target

    def String(self, off: int) -> bytes:
        start = self.Indirect(off)
        length = int(self.Get(N.UOffsetTFlags, start))
        _need(self.Bytes, start + 4, length, "string")
        return bytes(self.Bytes[start + 4 : start + 4 + length])

    def Vector(self, off: int) -> int:
        return self.Indirect(self.Pos + off) + 4

    def VectorLen(self, off: int) -> int:
        return int(self.Get(N.UOffsetTFlags, self.Vector(off) - 4))

    def GetVectorAsNumpy(self, flags: Any, off: int) -> np.ndarray:
        start, count = self.Vector(off), self.VectorLen(off)
        _need(self.Bytes, start, count * flags.bytewidth, "vector")
        dtype = np.dtype(N.to_numpy_type(flags)).newbyteorder("<")  # flatbuffers are little-endian
        return np.frombuffer(self.Bytes, dtype, count, start)


@dataclass
class _File:
    """One read: the bytes, the name for messages, and how many more vector elements and string bytes may be
    decoded. Without overlap a file holds fewer than its size; tables and vectors that alias one another
    could otherwise make a small file decode into gigabytes."""

    data: bytes
    source: str
    left: int

    def spend(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise _Corrupt(f"its vectors and strings overlap: more than {2 * len(self.data)} items decoded")

    def text(self, raw: bytes | None) -> str:
        self.spend(len(raw or b""))
        return raw.decode("utf-8", "replace") if raw else ""

    def ints(self, value: Any) -> tuple[int, ...]:
        """An int32 vector (a generated *AsNumpy() result) as Python ints."""
        array = _array(value, "int64")
        self.spend(len(array))
        return tuple(array.tolist())


def _checked(obj: Any) -> Any:
    """A generated object (made by its parent's getter on a plain Table) put on a checked Table, or None."""
    if obj is None:
        return None
    tab = obj._tab
    obj._tab = _Checked(tab.Bytes, tab.Pos)
    return obj


def _items(owner: Any, name: str, f: _File, what: str) -> list[Any]:
    """The tables of a vector field (`name`, e.g. "Tensors"), each checked; too many is refused early."""
    count = getattr(owner, f"{name}Length")()
    if count > MAX_ITEMS:
        raise UserError(f"{f.source}: {count} {what}; deepshrink reads at most {MAX_ITEMS}")
    f.spend(count)
    get = getattr(owner, name)
    return [_checked(get(j)) for j in range(count)]


def _array(value: Any, dtype: str) -> np.ndarray:
    """A generated *AsNumpy() result (the int 0 when the field is absent) as an array of `dtype`; a view
    into the file (read-only) where the dtype is the file's."""
    if not isinstance(value, np.ndarray):
        return _NO_FLOATS if dtype == "float32" else _NO_INTS if dtype == "int64" else np.zeros(0, dtype)
    return value.astype(dtype, copy=False)


@cache
def _names(enum: type) -> dict[int, str]:
    return {v: k for k, v in vars(enum).items() if not k.startswith("_") and isinstance(v, int)}


def read_tflite_file(path: Path) -> TfModel:
    """The model in the .tflite file at `path`; a missing, unreadable or malformed file is one UserError."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read the TFLite file ({e.strerror or type(e).__name__})") from None
    return read_tflite(data, str(path))


def read_tflite(data: bytes, source: str) -> TfModel:
    """The model `data` holds, every offset checked against its size; any malformation is one UserError
    starting with `source`."""
    data = bytes(data)  # constants are views into it: it must not change under them
    if len(data) < 8 or data[4:8] != IDENTIFIER:
        found = repr(data[4:8]) if len(data) >= 8 else f"{len(data)} bytes"
        raise UserError(f"{source}: not a TFLite file (expected identifier {IDENTIFIER!r} at byte 4, found {found})")
    try:
        return _model(_File(data, source, 2 * len(data)))
    except UserError:
        raise
    except _Corrupt as e:
        raise UserError(f"{source}: corrupt TFLite file: {e}") from None
    except Exception as e:  # the flatbuffers runtime's struct.error, TypeError, ... on what the checks let by
        raise UserError(f"{source}: corrupt TFLite file: {type(e).__name__}: {str(e)[:120]}") from None


def _model(f: _File) -> TfModel:
    model = tflite.Model()
    model.Init(f.data, int(struct.unpack_from("<I", f.data, 0)[0]))
    _checked(model)
    if model.Version() != SCHEMA_VERSION:
        raise UserError(f"{f.source}: TFLite schema version {model.Version()}; deepshrink reads {SCHEMA_VERSION}")
    if model.SubgraphsLength() != 1:
        raise UserError(f"{f.source}: {model.SubgraphsLength()} subgraphs; the microcontroller target takes one")
    graph = _checked(model.Subgraphs(0))
    buffers = _items(model, "Buffers", f, "buffers")
    tensors = tuple(_tensor(t, i, buffers, f) for i, t in enumerate(_items(graph, "Tensors", f, "tensors")))
    codes = [_opcode(c, k, f) for k, c in enumerate(_items(model, "OperatorCodes", f, "operator codes"))]
    ops = tuple(_operator(op, i, codes, len(tensors), f)
                for i, op in enumerate(_items(graph, "Operators", f, "operators")))
    inputs = _indices(f.ints(graph.InputsAsNumpy()), len(tensors), f"{f.source}: the subgraph's inputs")
    outputs = _indices(f.ints(graph.OutputsAsNumpy()), len(tensors), f"{f.source}: the subgraph's outputs")
    return TfModel(f.source, SCHEMA_VERSION, f.text(model.Description()), tensors, ops, inputs, outputs,
                   _metadata(model, buffers, f))


def _metadata(model: Any, buffers: list[Any], f: _File) -> dict[str, bytes]:
    """The model's metadata entries, name -> a copy of its buffer's bytes (small tables read later by name);
    of two entries of one name the first is kept, so that a file reads one way."""
    out: dict[str, bytes] = {}
    for k, entry in enumerate(_items(model, "Metadata", f, "metadata entries")):
        name, index = f.text(entry.Name()), int(entry.Buffer())
        if index >= len(buffers):
            raise UserError(f"{f.source}: metadata {k} ({name[:60]!r}) names buffer {index}, outside the file's "
                            f"{len(buffers)} buffers")
        span = _buffer_span(buffers[index], f, f"{f.source}: buffer {index}")
        if span is not None:
            f.spend(span[1])  # a copy: entries sharing one large buffer must not multiply it
        out.setdefault(name, f.data[span[0] : span[0] + span[1]] if span else b"")
    return out


def _indices(indices: tuple[int, ...], n_tensors: int, where: str, optional: bool = False) -> tuple[int, ...]:
    """Tensor indices, each in range (or -1, an omitted optional input, where `optional`)."""
    bad = [i for i in indices if not (0 <= i < n_tensors or (optional and i == -1))]
    if bad:
        raise UserError(f"{where} name tensor {bad[0]}, outside the {n_tensors} tensors")
    return indices


def _tensor(t: Any, index: int, buffers: list[Any], f: _File) -> TfTensor:
    name = f.text(t.Name())
    label = f"{f.source}: tensor {index} ({name if len(name) <= 60 else name[:57] + '...'!r})"  # converters' are long
    shape = f.ints(t.ShapeAsNumpy())
    if any(d < 0 for d in shape):
        raise UserError(f"{label} has shape {shape} with a negative dimension")
    if t.Type() not in _DTYPES:
        kind = _names(tflite.TensorType).get(t.Type(), f"unknown ({t.Type()})")
        raise UserError(f"{label} has type {kind}, which deepshrink does not read")
    dtype = np.dtype(_DTYPES[t.Type()])
    size = int(np.prod(shape, dtype=object)) * dtype.itemsize  # Python ints: no overflow
    if size > MAX_TENSOR_BYTES:
        raise UserError(f"{label} has shape {shape}: {size} bytes, over the {MAX_TENSOR_BYTES}-byte limit")
    if t.Buffer() >= len(buffers):
        raise UserError(f"{label} names buffer {t.Buffer()}, outside the file's {len(buffers)} buffers")
    span = _buffer_span(buffers[t.Buffer()], f, f"{f.source}: buffer {t.Buffer()}")
    contents = None
    if span is not None:
        if span[1] != size:
            raise UserError(f"{label} holds {span[1]} bytes; its shape {shape} of {dtype.name} needs {size}")
        stored = np.frombuffer(f.data, dtype.newbyteorder("<"), size // dtype.itemsize, span[0])
        contents = stored.astype(dtype, copy=False).reshape(shape)  # a view on little-endian hosts
    scale, zero_point, dim = _quantization(_checked(t.Quantization()), shape, label)
    return TfTensor(index, name, shape, dtype.name, scale, zero_point, dim, contents)


def _buffer_span(buffer: Any, f: _File, label: str) -> tuple[int, int] | None:
    """(start, length) of a buffer's bytes in the file, or None for an empty one. Data of models over 2 GB
    lives after the flatbuffer, named by offset and size, which must then lie inside the file too."""
    field = buffer._tab.Offset(4)
    if field and (length := buffer._tab.VectorLen(field)):
        start = buffer._tab.Vector(field)
        _need(f.data, start, length, "buffer data")
        return start, length
    offset, size = buffer.Offset(), buffer.Size()
    if offset > 1:  # TFLite's convention: 0 and 1 both mean "no data outside the flatbuffer"
        if offset + size > len(f.data):
            raise UserError(f"{label} lies at bytes {offset}+{size}, outside the file's {len(f.data)} bytes")
        return (offset, size) if size else None
    return None


def _quantization(q: Any, shape: tuple[int, ...], label: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(scale, zero_point, quantized_dimension): one pair for the tensor, or one per slice of its quantized
    dimension (per-channel weights)."""
    if q is None:
        return _NO_FLOATS, _NO_INTS, 0
    scale, zero_point = _array(q.ScaleAsNumpy(), "float32"), _array(q.ZeroPointAsNumpy(), "int64")
    dim = int(q.QuantizedDimension())
    if len(scale) != len(zero_point):
        raise UserError(f"{label} has {len(scale)} quantization scales but {len(zero_point)} zero points")
    if len(scale) > 1 and not (0 <= dim < len(shape) and shape[dim] == len(scale)):
        raise UserError(f"{label} has {len(scale)} quantization scales for dimension {dim} of shape {shape}")
    return scale, zero_point, dim


def _opcode(code: Any, k: int, f: _File) -> tuple[str, int]:
    """(name, version) of operator code `k`: the schema's builtin name, or CUSTOM:<custom_code>."""
    builtin = int(code.BuiltinCode())  # the generated getter reconciles it with the deprecated int8 field
    name = _names(tflite.BuiltinOperator).get(builtin)
    if name is None:
        raise UserError(f"{f.source}: operator code {k} is builtin {builtin}, unknown to TFLite's schema "
                        f"{tflite.__version__}")
    if name == "CUSTOM":
        name = f"CUSTOM:{f.text(code.CustomCode())}"
    return name, int(code.Version())


def _operator(op: Any, index: int, codes: list[tuple[str, int]], n_tensors: int, f: _File) -> TfOperator:
    label = f"{f.source}: operator {index}"
    if op.OpcodeIndex() >= len(codes):
        raise UserError(f"{label} has operator code {op.OpcodeIndex()}, outside the file's {len(codes)}")
    name, version = codes[op.OpcodeIndex()]
    inputs = _indices(f.ints(op.InputsAsNumpy()), n_tensors, f"{label} ({name}): its inputs", optional=True)
    outputs = _indices(f.ints(op.OutputsAsNumpy()), n_tensors, f"{label} ({name}): its outputs")
    options = _options(op.BuiltinOptionsType(), op.BuiltinOptions(), tflite.BuiltinOptions, f, label)
    options.update(_options(op.BuiltinOptions2Type(), op.BuiltinOptions2(), tflite.BuiltinOptions2, f, label))
    return TfOperator(index, name, version, inputs, outputs, options)


def _options(kind: int, table: Table | None, union: type, f: _File, label: str) -> dict[str, Any]:
    """The options table the union `kind` names, every field decoded by the generated class's getters."""
    if kind == 0 or table is None:
        return {}
    name = _names(union).get(kind)
    cls: Any = getattr(tflite, name, None) if name else None
    if not isinstance(getattr(tflite, name or "", None), type):
        raise UserError(f"{label} has options of type {kind}, unknown to TFLite's schema {tflite.__version__}")
    obj = cls()
    obj._tab = _Checked(table.Bytes, table.Pos)
    out: dict[str, Any] = {}
    for getter, key, vector in option_getters(cls):
        value = _vector(obj, getter, f) if vector else getattr(obj, getter)()
        if isinstance(value, bytes):
            value = f.text(value)
        elif getter in _ENUM_FIELDS and isinstance(value, int):
            value = _names(_ENUM_FIELDS[getter]).get(value, value)  # an unknown value stays a number
        if isinstance(value, bool | int | float | str | tuple):  # sub-tables (rare, StableHLO's) are left out
            out[key] = value
    return out


def _vector(obj: Any, getter: str, f: _File) -> tuple[Any, ...] | None:
    """A vector field as a tuple of numbers; None (left out) when absent, or of tables or strings."""
    as_numpy = getattr(obj, f"{getter}AsNumpy", None)
    value = as_numpy() if as_numpy is not None else None
    if not isinstance(value, np.ndarray):
        return None
    f.spend(len(value))
    return tuple(value.tolist())


@cache
def option_getters(cls: type) -> tuple[tuple[str, str, bool], ...]:
    """(getter, snake_case key, is a vector) for every field of a generated options class."""
    out = []
    for name, fn in vars(cls).items():
        if inspect.isfunction(fn) and not name.startswith("_") and not _NOT_GETTER.search(name):
            key = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()
            out.append((name, key, f"{name}Length" in vars(cls)))
    return tuple(out)
