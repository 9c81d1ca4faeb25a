"""The one container codec of deepshrink's compact files (`.dsparse`, `.dsonnx`, `.dsq`):

    magic | u32 little-endian header length | JSON header | byte streams

The header names the stream codec (`none`, `zlib`, `lzma`) and, per stream, its (offset, length) in
the body; what the streams mean is each format's business. Sparse positions use one coding in every
format: u8 relative indices (gaps), a gap over 255 bridged by filler entries (gap 255, value 0), as in
Deep Compression (Han et al. 2016).
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

    def pack(self, magic: bytes, header: dict[str, Any]) -> bytes:
        """magic, u32 header length, JSON header (with the codec), then the streams."""
        text = json.dumps({"codec": self.codec, **header}, separators=(",", ":")).encode()
        return magic + struct.pack("<I", len(text)) + text + b"".join(self.blobs)


def read_container(data: bytes, magic: bytes, source: str,
                   what: str) -> tuple[dict[str, Any], Callable[[list[int]], bytes]]:
    """(header, stream reader) of a file written by `Streams.pack`; a wrong magic is a user error."""
    if data[: len(magic)] != magic:
        raise UserError(f"{source}: not a deepshrink {what}")
    (hlen,) = struct.unpack("<I", data[len(magic) : len(magic) + 4])
    start = len(magic) + 4
    header = json.loads(data[start : start + hlen])
    body = memoryview(data)[start + hlen :]
    decompress = CODECS.get(header["codec"])[1]

    def blob(span: list[int]) -> bytes:
        return decompress(bytes(body[span[0] : span[0] + span[1]]))

    return header, blob


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
