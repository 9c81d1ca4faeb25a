"""How a layer's int8 weight rows are stored in flash: dense, or only their non-zeros in place (kernels.c,
`sparse` section), and the per-layer choice between them.

- dense: every weight, rows zero-padded and interleaved for the SIMD dot product (lower.pack_rows);
- sparse16: per non-zero a gap byte and the int8 weight; gaps over 255 bridged by zero-valued fillers;
- sparse12: per non-zero 12 bits, a gap of G bits and a code of 12 - G bits into the layer's codebook of
  int8 values (clustered weights have a few dozen distinct values); fillers use code 0, and the
  compensation list takes their products back;
- packed4, packed2: every weight as a 4- or 2-bit two's-complement code (`quantize:bits=4` or 2 stores
  weights as codes whose int8 values are the codes themselves), in order, little-endian within a byte.

The choice: the fewest bytes among the layouts whose estimated instructions stay within `SLOWDOWN` times
the dense kernel's (a sparse layout of a dense layer is bigger and slower; a packed one of a layer with
many distinct values impossible).
"""

from dataclasses import dataclass, field

import numpy as np

SLOWDOWN = 4.0
# Instructions per weight (dense, measured on the Cortex-M4 image: ~1.4 per MAC), per stored entry and per
# row (the sparse loops: 7 and 7.5 per entry; a row's set-up, compensation and requantization ~30), per
# packed weight (the portable shift-and-mask loop: ~5).
DENSE_PER_MAC = 1.4
PER_ENTRY = {"sparse16": 7.0, "sparse12": 7.5}
PER_ROW = 30.0
PER_PACKED = 5.0


@dataclass
class Layout:
    kind: str  # dense | sparse16 | sparse12 | packed4 | packed2
    nbytes: int
    instructions: float
    entries: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    codebook: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    comp: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))  # (row, position, code) triples
    gbits: int = 8
    dense_bytes: int = 0  # what the layer would take stored dense (set by choose)

    @property
    def note(self) -> str:
        if self.kind in ("dense", "packed2", "packed4"):
            return self.kind
        fields = f"{self.gbits}-bit gaps, {12 - self.gbits}-bit codes" if self.kind == "sparse12" else "8-bit gaps"
        return f"{self.kind} ({fields})"


def _gaps(row: np.ndarray, limit: int) -> tuple[list[int], list[int], list[int]]:
    """(gaps, positions, filler flags) of one row's non-zeros, fillers inserted where a gap exceeds `limit`."""
    gaps, positions, filler = [], [], []
    prev = -1
    for pos in np.flatnonzero(row):
        gap = int(pos) - prev - 1
        while gap > limit:
            prev += limit + 1
            gaps.append(limit)
            positions.append(prev)
            filler.append(1)
            gap = int(pos) - prev - 1
        gaps.append(gap)
        positions.append(int(pos))
        filler.append(0)
        prev = int(pos)
    return gaps, positions, filler


def sparse16(rows: np.ndarray) -> Layout:
    entries: list[int] = []
    counts = []
    for row in rows:
        gaps, positions, filler = _gaps(row, 255)
        for g, pos, f in zip(gaps, positions, filler, strict=True):
            entries += [g, 0 if f else int(row[pos]) & 0xFF]
        counts.append(len(gaps))
    arr = np.array([*entries, 0, 0, 0], np.uint8)
    c = np.array(counts, np.int64)
    n = int(c.sum())
    return Layout("sparse16", arr.size + _count_bytes(c), PER_ENTRY["sparse16"] * n + PER_ROW * len(rows),
                  arr, c)


def sparse12(rows: np.ndarray) -> Layout | None:
    """The codebook form, or None when the layer has more distinct non-zero values than 11 code bits hold."""
    values = np.unique(rows[rows != 0])
    vbits = max(1, int(np.ceil(np.log2(max(len(values), 2)))))
    if vbits > 11:
        return None
    gbits = 12 - vbits
    code = {int(v): i for i, v in enumerate(values)}
    words, counts, comp = [], [], []
    for r, row in enumerate(rows):
        gaps, positions, filler = _gaps(row, (1 << gbits) - 1)
        for g, pos, f in zip(gaps, positions, filler, strict=True):
            words.append(g | ((0 if f else code[int(row[pos])]) << gbits))
            if f:
                comp += [r, pos, 0]
        counts.append(len(gaps))
    if len(words) % 2:
        words.append(0)
    w = np.array(words, np.uint32).reshape(-1, 2)
    packed = (w[:, 0] | (w[:, 1] << 12)).astype(np.uint32)  # 24 bits per pair, little-endian
    body = np.stack([packed & 0xFF, (packed >> 8) & 0xFF, packed >> 16], 1).astype(np.uint8).reshape(-1)
    arr = np.concatenate([body, np.zeros(3, np.uint8)])
    c = np.array(counts, np.int64)
    comp_arr = np.array([*comp, -1, 0, 0], np.int16)
    cb = values.astype(np.int8)
    n = int(c.sum())
    nbytes = arr.size + _count_bytes(c) + cb.size + (2 * comp_arr.size if comp else 0)
    return Layout("sparse12", nbytes, PER_ENTRY["sparse12"] * n + PER_ROW * len(rows), arr, c, cb, comp_arr,
                  gbits)


def packed(rows: np.ndarray, bits: int) -> Layout | None:
    """Every weight as a `bits`-bit code, or None when some weight does not fit that many bits."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if rows.size == 0 or rows.min() < lo or rows.max() > hi:
        return None
    per = 8 // bits
    n, k = rows.shape
    codes = np.zeros((n, -(-k // per) * per), np.uint8)
    codes[:, :k] = rows.astype(np.int16) & ((1 << bits) - 1)
    shifts = (np.arange(per) * bits).astype(np.uint8)
    body = (codes.reshape(n, -1, per) << shifts).sum(axis=2).astype(np.uint8).reshape(-1)
    return Layout(f"packed{bits}", body.size, PER_PACKED * rows.size + PER_ROW * n, body, gbits=bits)


def _count_bytes(counts: np.ndarray) -> int:
    return counts.size * (1 if counts.max(initial=0) < 256 else 2)


def choose(rows: np.ndarray, dense_bytes: int, allow_sparse: bool = True) -> Layout:
    """The smallest layout of these int8 rows within SLOWDOWN x the dense kernel's instructions."""
    dense = Layout("dense", dense_bytes, DENSE_PER_MAC * rows.size)
    if not allow_sparse:
        return dense
    options = [dense, *filter(None, (packed(rows, 2), packed(rows, 4)))]
    if np.count_nonzero(rows) <= rows.size // 2:  # else no sparse form can win
        options += [sparse16(rows), *filter(None, [sparse12(rows)])]
    allowed = [o for o in options if o.instructions <= SLOWDOWN * dense.instructions]
    best = min(allowed, key=lambda o: (o.nbytes, o.instructions))
    best.dense_bytes = dense_bytes
    return best
