"""The .dsz file: Huffman codes, relative indices with fillers, bit-exact round trips of sparse clustered
layers of every shape, and refusal of truncated, tampered or oversized files."""

import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepshrink.errors import UserError
from deepshrink.export.exporters.dsz import summarize
from deepshrink.export.formats import dsz as dsz_file
from deepshrink.export.formats import huffman
from deepshrink.export.formats.container import Streams, seal
from deepshrink.export.formats.dsz import MAGIC, describe, gap_symbols, pack_header, positions_of

SHAPES = [(0,), (1,), (7,), (300,), (0, 4), (10, 84), (120, 256), (6, 1, 5, 5), (16, 6, 5, 5), (3, 2, 1, 1)]


def clustered(shape: tuple[int, ...], density: float, k: int, seed: int) -> torch.Tensor:
    """A weight with about `density` non-zeros drawn from k shared values (exact +0.0 elsewhere)."""
    rng = np.random.default_rng(seed)
    book = rng.normal(size=max(k, 1)).astype(np.float32)
    values = book[rng.integers(0, len(book), size=shape)]
    return torch.from_numpy(np.where(rng.random(shape) < density, values, np.float32(0.0)).astype(np.float32))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for key in a:
        assert a[key].shape == b[key].shape and a[key].dtype == b[key].dtype, key
        assert a[key].numpy().tobytes() == b[key].numpy().tobytes(), key  # bit for bit, -0.0 included


@settings(max_examples=60, deadline=None)
@given(shape=st.sampled_from(SHAPES), density=st.sampled_from([0.0, 0.002, 0.08, 0.5, 1.0]),
       k=st.sampled_from([1, 2, 5, 32, 256, 300]), gap_bits=st.integers(0, 8), seed=st.integers(0, 2**16))
def test_round_trip_is_bit_exact(shape: tuple[int, ...], density: float, k: int, gap_bits: int, seed: int) -> None:
    state = {"layer.weight": clustered(shape, density, k, seed), "layer.bias": torch.randn(3),
             "bn.num_batches_tracked": torch.tensor(7)}
    data = dsz_file.encode(state, {"layer.weight"}, gap_bits)
    _same(state, dsz_file.decode(data, "m.dsz", {k: list(v.shape) for k, v in state.items()}))
    (row,) = [r for r in describe(data, "m.dsz") if r["tensor"] == "layer.weight"]
    assert row["kind"] == ("raw" if len(np.unique(state["layer.weight"][state["layer.weight"] != 0])) > 256
                           else "coded")
    assert row["gap_bits"] == gap_bits or (gap_bits == 0 and 1 <= row["gap_bits"] <= 8)


@pytest.mark.parametrize("gap_bits", range(1, 9))
def test_long_gaps_need_fillers_and_round_trip(gap_bits: int) -> None:
    flat = np.zeros(100_000, np.float32)
    flat[[0, 1, 700, 99_999]] = [1.5, -2.0, 1.5, -0.0]  # -0.0 is a stored value: its bits are not zero
    state = {"w.weight": torch.from_numpy(flat)}
    _same(state, dsz_file.decode(dsz_file.encode(state, {"w.weight"}, gap_bits), "w.dsz"))
    symbols = gap_symbols(np.flatnonzero(flat.view(np.uint32)), gap_bits)
    filler = (1 << gap_bits) - 1
    assert int((symbols == filler).sum()) == 698 // filler + 99_298 // filler  # zeros between 1 and 700, 700 and 99,999


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 5000), max_size=200, unique=True), st.integers(1, 8))
def test_gap_symbols_give_back_the_positions(positions: list[int], width: int) -> None:
    pos = np.array(sorted(positions), np.int64)
    symbols = gap_symbols(pos, width)
    assert symbols.min(initial=0) >= 0 and symbols.max(initial=0) < (1 << width)
    assert positions_of(symbols, width).tolist() == pos.tolist()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40), max_size=500), st.integers(41, 64))
def test_huffman_round_trip_and_size(symbols: list[int], alphabet: int) -> None:
    syms = np.array(symbols, np.int64)
    lengths = huffman.code_lengths(syms, alphabet)
    data = huffman.encode(syms, lengths)
    assert huffman.decode(data, lengths, len(syms)).tolist() == symbols
    assert len(data) == -(-huffman.coded_bits(syms, lengths) // 8)
    if np.count_nonzero(lengths) >= 2:  # a complete prefix code: Kraft's sum is exactly 1
        assert np.exp2(-lengths[lengths > 0].astype(float)).sum() == 1.0


def test_huffman_beats_fixed_width_on_skewed_symbols() -> None:
    syms = np.random.default_rng(0).geometric(0.3, 10_000).clip(max=31) - 1
    assert len(huffman.encode(syms, huffman.code_lengths(syms, 32))) < 10_000 * 5 / 8 * 0.75


def test_float16_exact_tensors_take_half_the_bytes_and_come_back_exact() -> None:
    half_exact = torch.randn(100).half().float()
    state = {"a.bias": half_exact, "b.bias": torch.randn(100), "c.bias": torch.tensor([1e30, 1.0])}
    data = dsz_file.encode(state, set())
    _same(state, dsz_file.decode(data, "h.dsz"))
    assert [r["value_bytes"] for r in describe(data, "h.dsz")] == [200, 400, 8]


@pytest.fixture
def dsz() -> bytes:
    state = {"fc.weight": clustered((50, 40), 0.1, 16, 0), "fc.bias": torch.randn(50)}
    return dsz_file.encode(state, {"fc.weight"})


@pytest.mark.parametrize("keep", [0, 4, 8, 12, 40, -20, -4, -1])
def test_truncated_file_is_refused(dsz: bytes, keep: int) -> None:
    with pytest.raises(UserError, match=r"cut\.dsz"):
        dsz_file.decode(dsz[:keep], "cut.dsz")


def test_every_tampered_byte_is_refused(dsz: bytes) -> None:
    for i in range(len(MAGIC), len(dsz)):
        bad = bytearray(dsz)
        bad[i] ^= 0x10
        with pytest.raises(UserError, match=r"bad\.dsz: corrupt .*checksum"):
            dsz_file.decode(bytes(bad), "bad.dsz")


def test_wrong_magic_and_wrong_model_are_refused(dsz: bytes) -> None:
    with pytest.raises(UserError, match=r"x\.dsz: not a deepshrink compressed model"):
        dsz_file.decode(b"DSPARSE1" + dsz[8:], "x.dsz")
    with pytest.raises(UserError, match=r"x\.dsz: tensors do not match the model \(differs at fc.weight\)"):
        dsz_file.decode(dsz, "x.dsz", {"fc.weight": [40, 50], "fc.bias": [50]})


def _crafted(entry: dict, body: bytes = b"") -> bytes:  # type: ignore[type-arg]
    """A well-formed, correctly sealed file with a hostile header."""
    streams = Streams("none")
    streams.add(body)
    return seal(streams.pack(MAGIC, pack_header([entry]), zip_header=True))


def _coded(shape: int, nonzero: int, gap_bits: int, count: int, code: int, data: int) -> dict:  # type: ignore[type-arg]
    end = code + data
    return {"key": "w", "shape": [shape], "kind": "coded", "nonzero": nonzero, "gap_bits": gap_bits,
            "gaps": {"count": count, "code": [0, code], "data": [code, data]}, "codebook": [end, 0],
            "index": {"code": [end, 0], "data": [end, 0]}}


@pytest.mark.parametrize("entry", [
    _coded(2**40, 0, 1, 0, 0, 0),  # a shape no decoder should allocate
    _coded(100, 10**9, 1, 10**9, 2, 2),  # more values than the tensor has elements
    _coded(1000, 5, 4, 900, 16, 4),  # more symbols than the stream's bits can hold
    {"key": "w", "shape": [10], "kind": "dense", "dtype": "<f4", "data": [0, 10**6]},  # past the end
])
def test_hostile_headers_are_refused_before_allocating(entry: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(UserError, match=r"evil\.dsz: corrupt"):
        dsz_file.decode(_crafted(entry, bytes([1, 1]) + bytes(18)), "evil.dsz")


def test_header_length_past_the_end_is_refused() -> None:
    data = MAGIC + struct.pack("<I", 10**9) + b"{}"
    with pytest.raises(UserError, match=r"h\.dsz: corrupt"):
        dsz_file.decode(data + struct.pack("<I", zlib.crc32(data)), "h.dsz")


def test_notes_say_what_could_not_be_exploited() -> None:
    state = {"a.weight": torch.randn(20, 20), "b.weight": clustered((30, 30), 0.2, 4, 1)}
    facts = summarize(describe(dsz_file.encode(state, set(state)), "n.dsz"))
    assert "not clustered" in facts["notes"] and "a" in facts["notes"].split("raw float32 values: ")[1]
    assert "no zeros (not pruned)" in facts["notes"] and "b" not in facts["notes"].split(": ")[-1]
    assert facts["dsz_position_bytes"] > 0 and facts["dsz_value_bytes"] > 20 * 20 * 4
