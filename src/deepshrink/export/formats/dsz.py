"""The Deep Compression file (`.dsz`): a pruned, weight-shared model stored losslessly.

On the container codec (container.py: stream codec `none`, header deflated, crc32 trailer). Each
Linear/Conv2d weight becomes, in flat row-major order:
  - positions: relative indices (gaps) of `gap_bits`-bit symbols; symbol 2^gap_bits-1 is a filler that
    skips that many zeros without a value, so no value is stored for it; Huffman-coded;
  - values: an index into the layer's codebook (its distinct non-zero float32 bit patterns, sorted by
    value), Huffman-coded; a layer with more than 256 distinct values keeps raw float32 values instead.
The Huffman codes travel as u8 code lengths (huffman.py). Biases, batch norm and every other tensor
are stored dense. The architecture is the manifest's beside the file (as for `.dsparse`); the header
lists each tensor's name and shape, which the reader checks against the model before allocating.
Decoding gives back every tensor bit for bit; the byte layout is documented in docs/formats.md.
"""

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from deepshrink.errors import UserError
from deepshrink.export.formats import huffman
from deepshrink.export.formats.container import Streams, read_container, reader, seal, unseal

MAGIC = b"DSZ00001"
FORMAT = "deepshrink.dsz/1"
WHAT = "compressed model (.dsz)"
MAX_CODEBOOK = 256  # Deep Compression's codebooks have at most 2^8 entries
GAP_WIDTHS = range(1, 9)
MAX_ELEMENTS = 1 << 31  # a tensor larger than this is a corrupt header, not a LeNet


def gap_symbols(positions: np.ndarray, width: int) -> np.ndarray:
    """Symbols of the non-zero `positions` (sorted): per value, `gap // F` fillers (symbol F = 2^width-1,
    skipping F zeros) then the remaining gap `gap % F` (< F, so never mistaken for a filler)."""
    filler = (1 << width) - 1
    gaps: np.ndarray = np.diff(positions.astype(np.int64), prepend=-1) - 1
    fillers = gaps // filler
    out = np.full(int(fillers.sum()) + len(gaps), filler, np.int64)
    out[np.cumsum(fillers + 1) - 1] = gaps % filler
    return out


def positions_of(symbols: np.ndarray, width: int) -> np.ndarray:
    """The flat positions of the values the `gap_symbols` stream encodes."""
    filler = (1 << width) - 1
    is_value = symbols != filler
    advance = np.where(is_value, symbols + 1, filler)
    return (np.cumsum(advance) - 1)[is_value]


@dataclass
class Coded:
    """One Huffman-coded symbol stream and its code."""

    symbols: np.ndarray
    lengths: np.ndarray

    @property
    def nbytes(self) -> int:
        return -(-huffman.coded_bits(self.symbols, self.lengths) // 8) + len(self.lengths)


def _code(symbols: np.ndarray, alphabet: int) -> Coded:
    return Coded(symbols, huffman.code_lengths(symbols, alphabet))


def best_gaps(positions: np.ndarray, width: int = 0) -> tuple[int, Coded]:
    """(gap width, coded gaps): the given width, or (0) the one giving the fewest bytes, tables included."""
    widths = [width] if width else GAP_WIDTHS
    options = [(w, _code(gap_symbols(positions, w), 1 << w)) for w in widths]
    return min(options, key=lambda o: (o[1].nbytes, o[0]))


def _add_coded(streams: Streams, coded: Coded) -> dict[str, Any]:
    return {"count": len(coded.symbols), "code": streams.add(coded.lengths.tobytes()),
            "data": streams.add(huffman.encode(coded.symbols, coded.lengths))}


def encode_weight(streams: Streams, flat: np.ndarray, gap_bits: int = 0) -> dict[str, Any]:
    """A float32 weight's header entry, its streams added: coded gaps, then codebook indices (or raw
    values when over MAX_CODEBOOK distinct). Non-zero is decided on the bit pattern (-0.0 is a value)."""
    bits = flat.view(np.uint32)
    pos = np.flatnonzero(bits)
    width, gaps = best_gaps(pos, gap_bits)
    entry: dict[str, Any] = {"nonzero": len(pos), "gap_bits": width, "gaps": _add_coded(streams, gaps)}
    patterns = np.unique(bits[pos])
    if len(patterns) > MAX_CODEBOOK:
        entry.update(kind="raw", values=streams.add(flat[pos].astype("<f4").tobytes()))
        return entry
    book = patterns.view(np.float32)
    order = np.argsort(book, kind="stable")  # by value: neighbouring indices are neighbouring weights
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    index = rank[np.searchsorted(patterns, bits[pos])]
    entry.update(kind="coded", codebook=streams.add(book[order].astype("<f4").tobytes()),
                 index=_add_coded(streams, _code(index, len(book))))
    return entry


def _dense(streams: Streams, arr: np.ndarray) -> dict[str, Any]:
    """A dense tensor's entry: its raw bytes, or half of them when it is float32 holding only values
    float16 represents exactly (e.g. biases `cluster:bias_bits=16` rounded), widened back on reading."""
    with np.errstate(over="ignore"):  # values beyond float16's range become inf: then not exact
        half = arr.astype("<f2") if arr.dtype == np.float32 else None
    if half is not None and np.array_equal(half.astype(np.float32).view(np.uint32), arr.view(np.uint32)):
        return {"kind": "dense", "dtype": "<f2", "as": "<f4", "data": streams.add(half.tobytes())}
    return {"kind": "dense", "dtype": arr.dtype.str, "data": streams.add(arr.tobytes())}


# The streams each kind of tensor owns, in body order. The header stores only their lengths (offsets
# follow), and one column per field rather than one object per tensor: a third smaller, which is 3%
# of a LeNet-5 file of ~5 kB.
STREAMS = {"dense": ("data",), "coded": ("gaps.code", "gaps.data", "codebook", "index.code", "index.data"),
           "raw": ("gaps.code", "gaps.data", "values")}
COLUMNS = ("key", "shape", "kind", "dtype", "as", "nonzero", "gap_bits", "gaps.count")


def _get(entry: dict[str, Any], path: str) -> Any:
    head, _, tail = path.partition(".")
    value = entry.get(head)
    return value.get(tail) if tail and isinstance(value, dict) else value


def _set(entry: dict[str, Any], path: str, value: Any) -> None:
    """entry[path] = value, `a.b` nested; None (a field this kind of tensor lacks) is left out."""
    head, _, tail = path.partition(".")
    if value is None:
        return
    if tail:
        entry.setdefault(head, {})[tail] = value
    else:
        entry[head] = value


def pack_header(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Tensor entries (streams as spans, written in STREAMS order) -> the stored columnar header."""
    columns: dict[str, Any] = {c: [_get(e, c) for e in entries] for c in COLUMNS}
    spans = [_get(e, name) for e in entries for name in STREAMS[e["kind"]]]
    assert all(a[0] + a[1] == b[0] for a, b in itertools.pairwise(spans)), "streams out of order"
    return {"format": FORMAT, **columns, "streams": [length for _, length in spans]}


def unpack_header(header: dict[str, Any]) -> list[dict[str, Any]]:
    """The stored header -> tensor entries with spans, offsets recomputed from the stream lengths."""
    entries: list[dict[str, Any]] = [{} for _ in header["key"]]
    for column in COLUMNS:
        if len(header[column]) != len(entries):
            raise ValueError(f"header column {column} has {len(header[column])} entries for {len(entries)} tensors")
        for entry, value in zip(entries, header[column], strict=True):
            _set(entry, column, value)
    lengths, offset = iter(header["streams"]), 0
    for entry in entries:
        for name in STREAMS[entry["kind"]]:
            length = int(next(lengths))
            _set(entry, name, [offset, length])
            offset += length
    for entry in entries:
        if entry["kind"] == "coded":
            entry["index"]["count"] = entry["nonzero"]  # one index per stored value
    return entries


def encode(state: dict[str, Tensor], coded_keys: set[str], gap_bits: int = 0) -> bytes:
    """The .dsz bytes of a state dict; `coded_keys` are the float32 weights to code (others: dense)."""
    streams = Streams("none")  # Huffman streams and float32 tensors gain nothing from a general codec
    entries: list[dict[str, Any]] = []
    for key, t in state.items():
        arr = t.detach().cpu().contiguous().numpy()
        entry: dict[str, Any] = {"key": key, "shape": list(arr.shape)}
        if key in coded_keys and arr.dtype == np.float32:
            entry.update(encode_weight(streams, arr.reshape(-1), gap_bits))
        else:
            entry.update(_dense(streams, arr))
        entries.append(entry)
    return seal(streams.pack(MAGIC, pack_header(entries), zip_header=True))


def read_header(data: bytes, source: str) -> tuple[list[dict[str, Any]], Any]:
    """(tensor entries, stream reader) of a .dsz file whose magic and checksum hold."""
    if data[: len(MAGIC)] != MAGIC:
        raise UserError(f"{source}: not a deepshrink {WHAT}")
    header, blob = read_container(unseal(data, source, WHAT), MAGIC, source, WHAT, zip_header=True)
    if header.get("format") != FORMAT:
        raise UserError(f"{source}: unsupported {WHAT} format {header.get('format')!r} (expected {FORMAT})")
    return unpack_header(header), blob


def _decode_coded(blob: Any, part: dict[str, Any], alphabet: int) -> np.ndarray:
    lengths = np.frombuffer(blob(part["code"]), np.uint8)
    if len(lengths) != alphabet:
        raise ValueError(f"a code of {len(lengths)} lengths for an alphabet of {alphabet}")
    return huffman.decode(blob(part["data"]), lengths, int(part["count"]))


def _decode_weight(blob: Any, e: dict[str, Any], size: int) -> np.ndarray:
    width, nonzero = int(e["gap_bits"]), int(e["nonzero"])
    if width not in GAP_WIDTHS or not 0 <= nonzero <= size or not nonzero <= int(e["gaps"]["count"]) <= size:
        raise ValueError("gap header out of range")
    pos = positions_of(_decode_coded(blob, e["gaps"], 1 << width), width)
    if len(pos) != nonzero or (nonzero and pos[-1] >= size):
        raise ValueError("positions do not fit the tensor")
    if e["kind"] == "raw":
        values = np.frombuffer(blob(e["values"]), "<f4")
    else:
        book = np.frombuffer(blob(e["codebook"]), "<f4")
        if int(e["index"]["count"]) != nonzero or len(book) > MAX_CODEBOOK or (nonzero and not len(book)):
            raise ValueError("codebook header out of range")
        values = book[_decode_coded(blob, e["index"], len(book))]
    flat = np.zeros(size, np.float32)
    flat[pos] = values  # numpy refuses a values array of another length
    return flat


def decode(data: bytes, source: str = WHAT, expected: dict[str, list[int]] | None = None) -> dict[str, Tensor]:
    """The state dict a .dsz file holds. With `expected` (name -> shape, from the manifest's model) the
    header must list exactly those tensors, checked before any tensor is allocated."""

    @reader(WHAT)
    def checked(data: bytes, source: str) -> dict[str, Tensor]:
        entries, blob = read_header(data, source)
        shapes = {e["key"]: [int(d) for d in e["shape"]] for e in entries}
        if expected is not None and shapes != expected:
            diff = sorted(k for k in set(shapes) | set(expected) if shapes.get(k) != expected.get(k))
            raise UserError(f"{source}: tensors do not match the model (differs at {', '.join(diff[:3])})")
        return {e["key"]: torch.from_numpy(_decode_tensor(blob, e, tuple(shapes[e["key"]]))) for e in entries}

    return checked(data, source)


def _decode_tensor(blob: Any, e: dict[str, Any], shape: tuple[int, ...]) -> np.ndarray:
    size = int(np.prod(shape, dtype=np.int64))
    if min(shape, default=1) < 0 or size > MAX_ELEMENTS:
        raise ValueError(f"tensor shape {list(shape)} out of range")
    if e["kind"] == "dense":
        arr = np.frombuffer(blob(e["data"]), np.dtype(e["dtype"])).reshape(shape)
        return arr.astype(np.dtype(e.get("as", e["dtype"])))  # a copy: torch needs a writable array
    return _decode_weight(blob, e, size).reshape(shape)


def _span_bytes(e: dict[str, Any], key: str) -> int:
    """Bytes of a header entry's part: a stream span, or a coded stream (its code table + its data)."""
    part = e.get(key)
    if part is None:
        return 0
    return int(part["code"][1]) + int(part["data"][1]) if isinstance(part, dict) else int(part[1])


@reader(WHAT)
def describe(data: bytes, source: str) -> list[dict[str, Any]]:
    """One row per tensor: name, shape, storage kind, non-zeros, codebook size, gap width, bytes (positions,
    values; of the values, the Huffman-coded codebook indices and the codebook itself)."""
    entries, _ = read_header(data, source)
    rows = []
    for e in entries:
        size = int(np.prod(e["shape"], dtype=np.int64))
        coded = e["kind"] != "dense"
        rows.append({"tensor": e["key"], "shape": "x".join(map(str, e["shape"])), "kind": e["kind"],
                     "nonzero": e["nonzero"] if coded else size,
                     "codebook": e["codebook"][1] // 4 if e["kind"] == "coded" else "",
                     "gap_bits": e["gap_bits"] if coded else "",
                     "position_bytes": _span_bytes(e, "gaps"),
                     "value_bytes": sum(_span_bytes(e, k) for k in ("index", "codebook", "values", "data")),
                     "index_bytes": _span_bytes(e, "index"), "codebook_bytes": _span_bytes(e, "codebook")})
    return rows
