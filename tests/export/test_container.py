"""The container codec every compact file shares: magic + header + streams, and the u8 gap coding of
sparse positions (filler entries for gaps over 255)."""

import itertools
import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepshrink.errors import UserError
from deepshrink.export.formats.container import CODECS, MAX_GAP, Streams, encode_positions, read_container, scatter

MAGIC = b"DSTEST01"


@pytest.mark.parametrize("codec", ["none", "zlib", "lzma"])
def test_pack_and_read_round_trip(codec: str) -> None:
    rng = np.random.default_rng(0)
    raws = [b"", bytes(1000), rng.bytes(777), b"abc" * 300]
    streams = Streams(codec)
    spans = [streams.add(r) for r in raws]
    # spans tile the body in order, each starting where the previous one ended
    assert spans[0][0] == 0 and all(a[0] + a[1] == b[0] for a, b in itertools.pairwise(spans))
    data = streams.pack(MAGIC, {"spans": spans, "note": "x"})
    assert data[:8] == MAGIC
    (hlen,) = struct.unpack("<I", data[8:12])
    assert json.loads(data[12 : 12 + hlen])["codec"] == codec
    assert len(data) == 12 + hlen + sum(n for _, n in spans)
    header, blob = read_container(data, MAGIC, "f.bin", "test file")
    assert header["codec"] == codec and header["note"] == "x"
    assert [blob(s) for s in header["spans"]] == raws


def test_compressing_codecs_shrink_redundant_streams() -> None:
    raw = bytes(10_000)
    sizes = {c: Streams(c).add(raw)[1] for c in ("none", "zlib", "lzma")}
    assert sizes["none"] == 10_000 and sizes["zlib"] < 200 and sizes["lzma"] < 200


def test_unknown_codec_is_refused() -> None:
    with pytest.raises(UserError, match="brotli"):
        Streams("brotli")
    assert CODECS.names() == ["lzma", "none", "zlib"]


def test_wrong_magic_names_the_source() -> None:
    data = Streams("none").pack(b"OTHERMAG", {})
    with pytest.raises(UserError, match=r"model\.dsx: not a deepshrink widget file"):
        read_container(data, MAGIC, "model.dsx", "widget file")
    with pytest.raises(UserError, match="model.dsx"):
        read_container(b"", MAGIC, "model.dsx", "widget file")


def _round_trip(bits: np.ndarray) -> None:
    gaps, where = encode_positions(bits)
    assert gaps.dtype == np.uint8 and len(gaps) == len(where)
    assert where[where >= 0].tolist() == np.flatnonzero(bits).tolist()
    # fillers are exactly the entries that bridge a gap over 255: gap 255, position -1
    assert (gaps[where < 0] == MAX_GAP).all()
    zeros_before = np.diff(np.flatnonzero(bits), prepend=-1) - 1
    assert int((where < 0).sum()) == int((zeros_before // (MAX_GAP + 1)).sum())
    values = bits[np.maximum(where, 0)] * (where >= 0) if len(bits) else np.zeros(0, bits.dtype)
    back = scatter(gaps, values, bits.size, bits.dtype)
    assert back.dtype == bits.dtype and np.array_equal(back, bits)


def test_relative_indices_with_fillers() -> None:
    bits = np.zeros(1000, np.uint32)
    bits[[0, 3, 600]] = 1
    gaps, where = encode_positions(bits)
    assert gaps.tolist() == [0, 2, 255, 255, 84]  # 596 zeros before 600: two fillers of 256, then 84
    assert where.tolist() == [0, 3, -1, -1, 600]
    assert (np.cumsum(gaps.astype(int) + 1) - 1)[where >= 0].tolist() == [0, 3, 600]


@pytest.mark.parametrize("gap", [254, 255, 256, 257, 511, 512, 513])
def test_gaps_at_the_filler_boundary(gap: int) -> None:
    bits = np.zeros(gap + 2, np.uint32)
    bits[gap] = 7  # `gap` zeros before the first value
    bits[-1] = 9
    _, where = encode_positions(bits)
    assert int((where < 0).sum()) == gap // 256
    _round_trip(bits)


@pytest.mark.parametrize("bits", [np.zeros(0, np.uint32), np.zeros(1, np.uint32), np.zeros(5000, np.uint32),
                                  np.ones(1, np.uint32), np.arange(1, 3001, dtype=np.uint32)],
                         ids=["empty", "one-zero", "all-zero", "one-nonzero", "all-nonzero"])
def test_degenerate_arrays(bits: np.ndarray) -> None:
    gaps, _ = encode_positions(bits)
    assert len(gaps) == int(np.count_nonzero(bits))  # no value needs a filler: trailing zeros cost nothing
    assert (gaps == 0).all()
    _round_trip(bits)


@st.composite
def sparse_arrays(draw: st.DrawFn) -> np.ndarray:
    size = draw(st.integers(0, 3000))
    density = draw(st.sampled_from([0.0, 0.001, 0.01, 0.1, 0.5, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    keep = rng.random(size) < density
    return np.where(keep, rng.integers(1, 2**32, size, dtype=np.uint64), 0).astype(np.uint32)


@settings(max_examples=150, deadline=None)
@given(sparse_arrays())
def test_encode_then_scatter_is_identity(bits: np.ndarray) -> None:
    _round_trip(bits)
