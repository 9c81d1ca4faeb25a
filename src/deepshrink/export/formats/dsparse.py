"""The sparse file of an unstructurally pruned model (`.dsparse`).

On the container codec (container.py): each Linear/Conv2d weight is stored as its non-zeros only,
in flat (row-major) order, as two streams:
  - relative indices: the container's u8 gap coding (filler entries for gaps over 255);
  - values: float32, byte-plane shuffled (all sign/exponent bytes together) before the stream codec
    (lzma by default), so the bytes that barely vary among trained weights cost almost nothing.
Everything else (biases) is stored dense. Decoding reproduces every tensor bit for bit: "non-zero"
is decided on the bit pattern, so a -0.0 would be kept as an explicit value.
"""


from typing import Any

import numpy as np
import torch
from torch import Tensor

from deepshrink.errors import UserError
from deepshrink.export.formats.container import (
    Streams,
    count_of,
    encode_positions,
    positions_end,
    read_container,
    reader,
    scatter,
    shape_of,
)

MAGIC = b"DSPARSE1"


def _shuffle(values: np.ndarray) -> bytes:
    return values.astype("<f4").view(np.uint8).reshape(-1, 4).T.tobytes()


def _unshuffle(data: bytes, n: int) -> np.ndarray:
    return np.frombuffer(data, np.uint8).reshape(4, n).T.copy().view("<f4").reshape(n)


def encode(state: dict[str, Tensor], sparse_keys: set[str], codec: str = "lzma") -> bytes:
    streams = Streams(codec)
    add = streams.add
    entries: list[dict[str, Any]] = []
    for key, t in state.items():
        arr = t.detach().cpu().contiguous().numpy()
        entry: dict[str, Any] = {"key": key, "shape": list(arr.shape), "dtype": str(arr.dtype)}
        if key in sparse_keys and arr.dtype == np.float32:
            flat = arr.reshape(-1)
            gaps, where = encode_positions(flat.view(np.uint32))
            values = np.where(where >= 0, flat[np.maximum(where, 0)], np.float32(0.0)).astype(np.float32)
            entry.update(kind="sparse", entries=len(gaps), nonzero=int((where >= 0).sum()),
                         gaps=add(gaps.tobytes()), values=add(_shuffle(values)))
        else:
            entry.update(kind="dense", data=add(arr.tobytes()))
        entries.append(entry)
    return streams.pack(MAGIC, {"tensors": entries})


_DENSE_DTYPES = {"float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool"}


@reader("sparse file")
def decode(data: bytes, source: str) -> dict[str, Tensor]:
    """The state dict a sparse file holds; every size the header claims is checked against the file first."""
    what = "sparse file"
    header, blob = read_container(data, MAGIC, source, what)
    if not isinstance(header.get("tensors"), list):
        raise UserError(f"{source}: corrupt {what} (no tensor list)")
    out: dict[str, Tensor] = {}
    for e in header["tensors"]:
        if not isinstance(e, dict) or not isinstance(e.get("key"), str) or e.get("dtype") not in _DENSE_DTYPES:
            raise UserError(f"{source}: corrupt {what} (bad tensor entry {str(e)[:60]})")
        shape, size = shape_of(e.get("shape"), source, what)
        dtype = np.dtype(e["dtype"])
        if e.get("kind") == "sparse" and dtype == np.float32:
            entries = count_of(e.get("entries"), source, what)
            gaps = np.frombuffer(blob(e.get("gaps"), entries), np.uint8)
            if positions_end(gaps) > size:
                raise UserError(f"{source}: corrupt {what} (positions of {e['key']} run past its {size} elements)")
            values = _unshuffle(blob(e.get("values"), 4 * entries), entries)
            arr = scatter(gaps, values, size, np.float32).reshape(shape)
        elif e.get("kind") == "dense":
            arr = np.frombuffer(blob(e.get("data"), size * dtype.itemsize), dtype).reshape(shape).copy()
        else:
            raise UserError(f"{source}: corrupt {what} (tensor {e['key']} of unknown kind)")
        out[e["key"]] = torch.from_numpy(arr)
    return out
