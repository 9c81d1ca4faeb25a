"""The preprocessing a .tflite file states about its input: TFLite Support's metadata, a ModelMetadata
flatbuffer (metadata_schema.fbs, identifier M001) in the buffer the model's "TFLITE_METADATA" entry names.
Its first input tensor's NormalizationOptions are TFLite's (x - mean) / std on the raw input values (the
0-255 pixel values of an image).

No installed package ships the metadata schema's generated classes (tflite-support is not a dependency),
so the few fields needed are read by their vtable slots on the reader's checked Table: the metadata is a
flatbuffer of its own, each of its offsets checked against its own bytes, and any malformation is one
UserError naming the file."""

import math
import struct

from flatbuffers import number_types as N

from deepshrink.data.normalize import RAW_STD, Norm
from deepshrink.errors import UserError
from deepshrink.ingest.tflite_file import TfModel, _Checked, _Corrupt, _need

METADATA_NAME = "TFLITE_METADATA"
IDENTIFIER = b"M001"
NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions' first member

# vtable slots: 4 + 2 * the field's index in its table (a union field counts twice: its type, then its value).
MODEL_SUBGRAPHS = 10  # ModelMetadata.subgraph_metadata, after name, description, version
SUBGRAPH_INPUTS = 8  # SubGraphMetadata.input_tensor_metadata, after name, description
TENSOR_PROCESS_UNITS = 12  # TensorMetadata.process_units, after name, description, dimension_names, content
UNIT_TYPE, UNIT_OPTIONS = 4, 6  # ProcessUnit.options: the union's type byte, then its table
MEAN, STD = 4, 6  # NormalizationOptions.mean, .std


def input_normalization(model: TfModel) -> Norm | None:
    """TFLite's (mean, std) for the first input, as the file's metadata states them (one value each, or one
    per channel); None when it states none: no TFLITE_METADATA entry, no process unit, no normalization."""
    raw = model.metadata.get(METADATA_NAME)
    if raw is None:
        return None
    where = f"{model.source}: corrupt TFLite file: its {METADATA_NAME} metadata"
    try:
        found = _normalization(raw)
    except _Corrupt as e:  # its offsets are checked against the metadata's own bytes, not the whole file's
        raise UserError(f"{where}: {str(e).replace('the file', 'the metadata')}") from None
    except Exception as e:  # the flatbuffers runtime's struct.error, ... on what the checks let by
        raise UserError(f"{where}: {type(e).__name__}: {str(e)[:120]}") from None
    if found is None:
        return None
    mean, std = found
    what = f"{model.source}: its metadata's input normalization (mean {mean}, std {std})"
    if not mean or not std:
        raise UserError(f"{what} is missing values")
    if not all(math.isfinite(v) for v in mean + std) or any(s <= 0 for s in std):
        raise UserError(f"{what} needs finite values and a positive std")
    return mean, std


def _normalization(raw: bytes) -> Norm | None:
    """The first NormalizationOptions among the first input tensor's process units, as lists of floats."""
    _need(raw, 0, 8, "root offset and identifier")
    if raw[4:8] != IDENTIFIER:
        raise _Corrupt(f"not a ModelMetadata (identifier {raw[4:8]!r}, expected {IDENTIFIER!r})")
    root = _Checked(raw, int(struct.unpack_from("<I", raw, 0)[0]))
    subgraphs = _tables(root, MODEL_SUBGRAPHS)
    inputs = _tables(subgraphs[0], SUBGRAPH_INPUTS) if subgraphs else []
    for unit in _tables(inputs[0], TENSOR_PROCESS_UNITS) if inputs else []:
        kind = unit.Offset(UNIT_TYPE)
        if kind and int(unit.Get(N.Uint8Flags, unit.Pos + kind)) == NORMALIZATION_OPTIONS:
            at = unit.Offset(UNIT_OPTIONS)
            if not at:
                raise _Corrupt("a process unit says NormalizationOptions but holds no options table")
            options = _Checked(raw, unit.Indirect(unit.Pos + at))
            return _floats(options, MEAN), _floats(options, STD)
    return None


def _tables(table: _Checked, slot: int) -> list[_Checked]:
    """The tables of a vector-of-tables field (none when it is absent), each checked. The vector's length is
    checked against the bytes first, so a hostile count cannot ask for more tables than fit in them."""
    at = table.Offset(slot)
    if not at:
        return []
    start, count = table.Vector(at), table.VectorLen(at)
    _need(table.Bytes, start, 4 * count, "vector of tables")
    return [_Checked(table.Bytes, table.Indirect(start + 4 * k)) for k in range(count)]


def _floats(table: _Checked, slot: int) -> list[float]:
    at = table.Offset(slot)
    return table.GetVectorAsNumpy(N.Float32Flags, at).tolist() if at else []


def as_normalize(tflite_norm: Norm) -> Norm:
    """TFLite's (x - M) / S on 0-255 values as deepshrink's (pixel / 255 - mean) / std: mean M / 255 and std
    S / 255, except that M 0 and S 1 (the pixel values themselves) is exactly `raw`, which renormalize passes
    bit for bit rather than within an ulp."""
    mean, std = tflite_norm
    if all(m == 0 for m in mean) and all(s == 1 for s in std):
        return [0.0], [RAW_STD]
    return [m / 255.0 for m in mean], [s / 255.0 for s in std]


def stated_normalization(model: TfModel) -> Norm | None:
    """The input normalization the file's metadata states, in deepshrink's terms (see as_normalize); None
    when it states none."""
    found = input_normalization(model)
    return as_normalize(found) if found is not None else None
