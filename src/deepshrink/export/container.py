"""The one container codec of deepshrink's compact files (`.dsparse`, `.dsonnx`, `.dsq`):

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

Codec = tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]
CODECS: Registry[Codec] = Registry("container codec")
CODECS.register("none")((lambda b: b, lambda b: b))
CODECS.register("zlib")((lambda b: zlib.compress(b, 9), zlib.decompress))
CODECS.register("lzma")((lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME), lzma.decompress))


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
                   zip_header: bool = False) -> tuple[dict[str, Any], Callable[[list[int]], bytes]]:
    """(header, stream reader) of a file written by `Streams.pack`; a wrong magic is a user error, and
    so is a header or stream said to reach past the end of the file (checked before reading it)."""
    if data[: len(magic)] != magic:
        raise UserError(f"{source}: not a deepshrink {what}")
    (hlen,) = struct.unpack("<I", data[len(magic) : len(magic) + 4])
    start = len(magic) + 4
    if hlen > len(data) - start:
        raise UserError(f"{source}: corrupt {what} (header of {hlen} bytes in a file of {len(data)})")
    text = data[start : start + hlen]
    if zip_header:
        inflater = zlib.decompressobj(-15)
        text = inflater.decompress(text, MAX_HEADER)
        if inflater.unconsumed_tail:
            raise UserError(f"{source}: corrupt {what} (header inflates past {MAX_HEADER} bytes)")
    header = json.loads(text)
    body = memoryview(data)[start + hlen :]
    decompress = CODECS.get(header["codec"])[1]

    def blob(span: list[int]) -> bytes:
        offset, length = int(span[0]), int(span[1])
        if offset < 0 or length < 0 or offset + length > len(body):
            raise ValueError(f"stream ({offset}, {length}) outside a body of {len(body)} bytes")
        return decompress(bytes(body[offset : offset + length]))

    return header, blob


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
