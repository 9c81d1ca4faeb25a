"""A sparse ONNX file for pruned models in any precision (`.dsonnx`): the model that ships when a
pruned network is then quantized, so "prune + INT8" is smaller than INT8 alone.

An INT8 model of a pruned network keeps its zeros (symmetric quantization maps 0 to 0), but ONNX
stores them densely. Here every large initializer is stored as its non-zeros only, with the
container's gap coding (container.py, as `.dsparse`), and the rest of the graph as the ONNX protobuf
with those initializers emptied; every stream is then lzma-compressed. Unpacking gives back the very
ONNX bytes that were encoded (tested), which ONNX Runtime then loads.
"""

import numpy as np
import onnx
from onnx import numpy_helper

from deepshrink.errors import UserError
from deepshrink.export.formats import container

MAGIC = b"DSONNX01"
WHAT = "sparse ONNX file (.dsonnx)"
MIN_ELEMENTS = 1024  # smaller initializers (biases, scales) stay inside the protobuf
_BITS = {np.dtype(np.int8): np.uint8, np.dtype(np.uint8): np.uint8, np.dtype(np.float32): np.uint32,
         np.dtype(np.float16): np.uint16}
_NAMES = {str(d) for d in _BITS}  # the dtypes a .dsonnx file may name


def zero_fraction(model_bytes: bytes) -> float:
    """Share of zero elements over the initializers that packing would store sparsely."""
    m = onnx.load_from_string(model_bytes)
    total = zeros = 0
    for init in m.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.size >= MIN_ELEMENTS and arr.dtype in _BITS:
            total += arr.size
            zeros += int((arr.reshape(-1).view(_BITS[arr.dtype]) == 0).sum())
    return zeros / total if total else 0.0


def encode(model_bytes: bytes, codec: str = "lzma") -> bytes:
    """The .dsonnx bytes of a serialized ONNX model."""
    m = onnx.load_from_string(model_bytes)
    streams = container.Streams(codec)
    add = streams.add
    entries = []
    for i, init in enumerate(m.graph.initializer):
        arr = numpy_helper.to_array(init)
        if arr.size < MIN_ELEMENTS or arr.dtype not in _BITS or not init.HasField("raw_data"):
            continue
        flat = np.ascontiguousarray(arr).reshape(-1)
        gaps, where = container.encode_positions(flat.view(_BITS[arr.dtype]))
        little = np.where(where >= 0, flat[np.maximum(where, 0)], 0).astype(flat.dtype.newbyteorder("<"))
        entries.append({"index": i, "dtype": str(arr.dtype), "size": int(arr.size), "entries": len(gaps),
                        "gaps": add(gaps.tobytes()), "values": add(little.tobytes())})
        init.raw_data = b""
    graph = add(m.SerializeToString())
    return streams.pack(MAGIC, {"graph": graph, "tensors": entries})


@container.reader(WHAT)
def decode(data: bytes, source: str) -> bytes:
    """The ONNX bytes a .dsonnx file holds; every size the header claims is checked before allocating."""
    what = WHAT
    header, blob = container.read_container(data, MAGIC, source, what)
    if not isinstance(header.get("tensors"), list):
        raise UserError(f"{source}: corrupt {what} (no tensor list)")
    m = onnx.load_from_string(blob(header.get("graph")))
    inits = m.graph.initializer
    for e in header["tensors"]:
        if not isinstance(e, dict) or e.get("dtype") not in _NAMES:
            raise UserError(f"{source}: corrupt {what} (bad tensor entry {str(e)[:60]})")
        index = container.count_of(e.get("index"), source, what, len(inits) - 1)
        size = container.count_of(e.get("size"), source, what)
        entries = container.count_of(e.get("entries"), source, what)
        dtype = np.dtype(e["dtype"]).newbyteorder("<")
        gaps = np.frombuffer(blob(e.get("gaps"), entries), np.uint8)
        if container.positions_end(gaps) > size:
            raise UserError(f"{source}: corrupt {what} (positions run past the tensor's {size} elements)")
        values = np.frombuffer(blob(e.get("values"), entries * dtype.itemsize), dtype)
        flat = container.scatter(gaps, values, size, dtype)
        inits[index].raw_data = flat.tobytes()
    return m.SerializeToString()
