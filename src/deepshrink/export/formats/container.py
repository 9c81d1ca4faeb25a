"""The one container codec of deepshrink's compressed files (`.dsparse`, `.dsonnx`, `.dsq`):

    magic | u32 little-endian header length | JSON header | byte streams

The header names the stream codec (`none`, `zlib`, `lzma`) and, per stream, its (offset, length) in
the body; what the streams mean is each format's business. A format may deflate its header (`zip_header`,
for files of a few kB, where the JSON is a large share) and `seal` the file with a crc32 trailer, so a
truncated or modified file is refused as a whole instead of decoding into a partial model.

Sparse positions of `.dsparse` and `.dsonnx` use one coding: u8 relative indices (gaps), a gap over 255
bridged by filler entries (gap 255, value 0), as in Deep Compression (Han et al. 2016); `.dsz` codes
its gaps with a narrower, Huffman-coded variant (dsz.py).
"""

import functools
import json
import lzma
import math
import struct
import zlib
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import numpy as np

from deepshrink.errors import UserError
from deepshrink.registry import Registry

MAX_GAP = 255
MAX_HEADER = 1 << 24  # bytes of JSON a header may inflate to: a corrupt length allocates nothing larger
T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Reader(Protocol[T_co]):
    def __call__(self, data: bytes, source: str = ...) -> T_co: ...

# A decoder takes the stream and the most bytes it may produce: a corrupt (or crafted) stream claiming
# gigabytes is cut off there instead of being inflated into memory.
Codec = tuple[Callable[[bytes], bytes], Callable[[bytes, int], bytes]]
CODECS: Registry[Codec] = Registry("container codec")
CODECS.register("none")((lambda b: b, lambda b, limit: b[:limit]))
CODECS.register("zlib")((lambda b: zlib.compress(b, 9), lambda b, limit: zlib.decompressobj().decompress(b, limit)))
CODECS.register("lzma")((lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME),
                         lambda b, limit: lzma.LZMADecompressor().decompress(b, max_length=limit)))
# lzma turns a run of zero bytes into ~1/7000 of its size; a stream claiming more is not ours.
MAX_RATIO = 1 << 14
MAX_ELEMENTS = 1 << 28  # per tensor: 1 GiB of float32, far beyond any model these files hold


class Streams:
    """The body of a container file: compressed byte streams, each addressed by (offset, length)."""

    def __init__(self, codec: str) -> None:
        self.codec, self.compress = codec, CODECS.get(codec)[0]
        self.blobs: list[bytes] = []
        self.offset = 0

    def add(self, raw: bytes) -> tuple[int, int]:
        self.blobs.append(self.compress(raw))
        self.offset += len(self.blobs[-1])
        return self.offset - len(self.blobs[-1]), len(self.blobs[-1])

    def pack(self, magic: bytes, header: dict[str, Any], zip_header: bool = False) -> bytes:
        """magic, u32 header length, JSON header (with the codec; raw deflate if `zip_header`), streams."""
        text = json.dumps({"codec": self.codec, **header}, separators=(",", ":")).encode()
        if zip_header:
            packer = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate: no zlib framing bytes
            text = packer.compress(text) + packer.flush()
        return magic + struct.pack("<I", len(text)) + text + b"".join(self.blobs)


def read_container(data: bytes, magic: bytes, source: str, what: str,
                   zip_header: bool = False) -> tuple[dict[str, Any], Callable[..., bytes]]:
    """(header, stream reader) of a file written by `Streams.pack` (its header deflated if `zip_header`).
    Any malformation is a UserError naming `source`; the stream reader `blob(span, size=None)` checks the
    span against the body and, given the raw size the header implies, that the stream decodes to exactly
    that many bytes (never more)."""
    if data[: len(magic)] != magic:
        raise UserError(f"{source}: not a deepshrink {what}")
    start = len(magic) + 4
    if len(data) < start:
        raise UserError(f"{source}: truncated {what} (no header length)")
    (hlen,) = struct.unpack("<I", data[len(magic) : start])
    if hlen > len(data) - start:
        raise UserError(f"{source}: corrupt {what} (header claims {hlen} bytes, the file has {len(data) - start})")
    text = data[start : start + hlen]
    if zip_header:
        inflater = zlib.decompressobj(-15)
        try:
            text = inflater.decompress(text, MAX_HEADER)
        except zlib.error:
            raise UserError(f"{source}: corrupt {what} (header does not inflate)") from None
        if inflater.unconsumed_tail:
            raise UserError(f"{source}: corrupt {what} (header inflates past {MAX_HEADER} bytes)")
    try:
        header = json.loads(text)
    except (ValueError, RecursionError):
        raise UserError(f"{source}: corrupt {what} (header is not JSON)") from None
    if not isinstance(header, dict) or not isinstance(header.get("codec"), str):
        raise UserError(f"{source}: corrupt {what} (header is not a table naming its codec)")
    body = memoryview(data)[start + hlen :]
    try:
        decompress = CODECS.get(header["codec"])[1]
    except UserError as e:
        raise UserError(f"{source}: {e}") from None

    def blob(span: Any, size: int | None = None) -> bytes:
        if (not isinstance(span, list) or len(span) != 2 or not all(type(v) is int and v >= 0 for v in span)
                or span[0] + span[1] > len(body)):
            raise UserError(f"{source}: corrupt {what} (stream span {span!r} outside the {len(body)}-byte body)")
        raw = bytes(body[span[0] : span[0] + span[1]])
        limit = MAX_RATIO * len(raw) + 1024 if size is None else size
        if size is not None and size > MAX_RATIO * len(raw) + 1024:
            raise UserError(f"{source}: corrupt {what} ({len(raw)}-byte stream claims {size} bytes)")
        try:
            out = decompress(raw, limit + 1)
        except (zlib.error, lzma.LZMAError, EOFError) as e:
            raise UserError(f"{source}: corrupt {what} (stream does not decode: {e})") from None
        if size is not None and len(out) != size:
            raise UserError(f"{source}: corrupt {what} (stream holds {len(out)} bytes, expected {size})")
        if len(out) > limit:
            raise UserError(f"{source}: corrupt {what} (stream inflates past {limit} bytes)")
        return out

    return header, blob


def shape_of(value: Any, source: str, what: str) -> tuple[tuple[int, ...], int]:
    """(shape, element count) of a header's shape entry, checked before anything is allocated."""
    if not isinstance(value, list) or len(value) > 8 or not all(type(d) is int and d >= 0 for d in value):
        raise UserError(f"{source}: corrupt {what} (bad tensor shape {str(value)[:40]})")
    count = math.prod(value)
    if count > MAX_ELEMENTS:
        raise UserError(f"{source}: corrupt {what} (tensor of {count} elements)")
    return tuple(value), count


def count_of(value: Any, source: str, what: str, most: int = MAX_ELEMENTS) -> int:
    """A header's element count: a non-negative int no larger than `most`."""
    if type(value) is not int or not 0 <= value <= most:
        raise UserError(f"{source}: corrupt {what} (bad count {str(value)[:40]})")
    return value


def positions_end(gaps: np.ndarray) -> int:
    """One past the last flat position a gap stream addresses (so callers check it fits the tensor)."""
    return int(gaps.astype(np.int64).sum()) + len(gaps)


def seal(data: bytes) -> bytes:
    """`data` plus its crc32 (u32 little-endian): what `unseal` checks."""
    return data + struct.pack("<I", zlib.crc32(data))


def unseal(data: bytes, source: str, what: str) -> bytes:
    """`data` without its crc32 trailer, or a user error when the file was truncated or modified."""
    if len(data) < 4 or struct.unpack("<I", data[-4:])[0] != zlib.crc32(data[:-4]):
        raise UserError(f"{source}: corrupt {what} (checksum mismatch: truncated or modified)")
    return data[:-4]


def reader(what: str) -> Callable[[Callable[[bytes, str], T]], Reader[T]]:
    """For a decoder of a file a user (or an earlier run) hands us: any malformation becomes one
    UserError naming the file (json, struct, the codecs, numpy and protobuf each raise their own types)."""
    def wrap(fn: Callable[[bytes, str], T]) -> Reader[T]:
        @functools.wraps(fn)
        def checked(data: bytes, source: str = what) -> T:
            try:
                return fn(data, source)
            except UserError:
                raise
            except Exception as e:
                raise UserError(f"{source}: corrupt {what} ({type(e).__name__})") from None

        return checked

    return wrap


def encode_positions(flat_bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(u8 gaps, entry -> flat position or -1 for a filler) for the non-zero bit patterns."""
    pos = np.flatnonzero(flat_bits)
    gaps = np.diff(pos, prepend=-1) - 1
    fillers = gaps // (MAX_GAP + 1)
    count = len(pos) + int(fillers.sum())
    # Entry k of a position's run: fillers first (each advancing 256 positions), then the value itself.
    owner = np.repeat(np.arange(len(pos)), fillers + 1)
    within = np.arange(count) - np.repeat(np.cumsum(fillers + 1) - (fillers + 1), fillers + 1)
    is_value = within == fillers[owner]
    out_gaps = np.where(is_value, gaps[owner] - fillers[owner] * (MAX_GAP + 1), MAX_GAP).astype(np.uint8)
    entry_pos = np.cumsum(out_gaps.astype(np.int64) + 1) - 1
    return out_gaps, np.where(is_value, entry_pos, -1)


def scatter(gaps: np.ndarray, values: np.ndarray, size: int, dtype: Any) -> np.ndarray:
    """The dense flat array a (gaps, values) pair encodes; fillers write their zero in passing."""
    flat = np.zeros(size, dtype)
    flat[np.cumsum(gaps.astype(np.int64) + 1) - 1] = values
    return flat
