"""How a layer's int8 weight rows are stored in flash: dense, or only their non-zeros in place (kernels.c,
`sparse` section), and the per-layer choice between them.

- dense: every weight, rows zero-padded and interleaved for the SIMD dot product (program.pack_rows);
- sparse16: per non-zero a gap byte and the int8 weight; gaps over 255 bridged by zero-valued fillers;
- sparse12, sparse10: per non-zero 12 bits (two per 3 bytes) or 10 (three per 32-bit word), a gap of G
  bits and a code of the rest into the layer's codebook of int8 values (clustered weights have a few dozen
  distinct values); fillers use a code whose value is 0 when one is free, else code 0, and the
  compensation list takes their products back;
- packed4, packed2: every weight as a 4- or 2-bit code (`quantize:bits=4` or 2 stores weights as codes
  whose int8 values are the codes themselves), stored offset by half the range (w + 8, w + 2: unsigned, so
  the kernel masks instead of sign-extending and takes half x sum(x) back once per call). A row is whole
  32-bit words; weight j = 4s + i of a word sits in byte i (byte `WIDE[i]` for int16 activations), bits
  BITS*s and up, so one mask and one SXTB16 give two weights lined up with the activations' own SXTB16
  lanes (int8) or halfword pairs (int16) for SMLAD.

The choice: the fewest bytes among the layouts whose estimated instructions stay within a bound of the
dense kernel's, 1.5x for a sparse layout (it exists to skip work; on a layer not sparse enough it only
trades speed for bytes) and 4x for a packed one (it skips nothing, but only it halves or quarters a
low-bit layer's bytes), or whose extra instructions per inference are at most PER_BYTE per byte of flash
saved (a small layer's few hundred instructions are worth its bytes); among those, the fewest bytes plus
instructions per inference / WORTH (a layout 100 bytes smaller but 20,000 instructions slower loses).
"""

from dataclasses import dataclass, field

import numpy as np

SLOWDOWN = {"sparse16": 1.5, "sparse12": 1.5, "sparse10": 1.5, "packed4": 4.0, "packed2": 4.0, "dense": 1.0}
PER_BYTE = 8.0
WORTH = 64.0  # among those, a byte of flash is worth 64 instructions per inference (near ties go to speed)
# Instructions per weight (dense, measured on the Cortex-M4 image: ~1.4 per MAC), per stored entry and per
# row (the sparse loops: 7 and 7.5 per entry; a row's set-up, compensation and requantization ~30), per
# packed weight (mask, SXTB16 and SMLAD per two weights, activations widened per row: ~3.5 and ~4 measured).
DENSE_PER_MAC = 1.4
PER_ENTRY = {"sparse16": 7.0, "sparse12": 7.0, "sparse10": 8.3}
PER_ROW = 30.0
PER_PACKED = {False: 3.5, True: 4.0}  # by activation width (int16: a convolution's column); measured, M4 -Os
WIDE = [0, 2, 1, 3]  # int16 activations: byte order of weights 4s..4s+3 in a word (kernels.c, ds_dot16)


@dataclass
class Layout:
    kind: str  # dense | sparse16 | sparse12 | sparse10 | packed4 | packed2
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
        width = int(self.kind[6:])
        fields = f"{self.gbits}-bit gaps, {width - self.gbits}-bit codes" if width < 16 else "8-bit gaps"
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


def coded(rows: np.ndarray, width: int) -> Layout | None:
    """The codebook form with `width`-bit entries (12: two per 3 bytes; 10: three per 32-bit word), or None
    when the layer has more distinct non-zero values than the code bits hold. A filler takes a code whose
    codebook value is 0; where every code is taken, the smaller of one code bit more (a free zero, shorter
    gaps) and code 0 with each filler's product in a compensation list."""
    values = np.unique(rows[rows != 0])
    vbits = max(1, int(np.ceil(np.log2(len(values) + 1))))  # one code more, for a zero when it fits
    options = [_coded(rows, width, values, vbits)]
    if len(values) == 1 << (vbits - 1) and vbits > 1:  # all codes of vbits - 1 used: compensate instead
        options.append(_coded(rows, width, values, vbits - 1))
    found = [o for o in options if o is not None]
    return min(found, key=lambda o: (o.nbytes, o.instructions)) if found else None


def _coded(rows: np.ndarray, width: int, values: np.ndarray, vbits: int) -> Layout | None:
    gbits = width - vbits
    if gbits < 2:
        return None
    cb = np.zeros(1 << vbits, np.int8)
    cb[: len(values)] = values
    zero = len(values) if len(values) < (1 << vbits) else None  # a code whose value is 0
    code = {int(v): i for i, v in enumerate(values)}
    entries, counts, comp = [], [], []
    for r, row in enumerate(rows):
        gaps, positions, filler = _gaps(row, (1 << gbits) - 1)
        for g, pos, f in zip(gaps, positions, filler, strict=True):
            value = ((zero if zero is not None else 0) if f else code[int(row[pos])])
            entries.append(g | (value << gbits))
            if f and zero is None:
                comp += [r, pos, 0]
        counts.append(len(gaps))
    body = _pack_entries(np.array(entries, np.uint32), width)
    c = np.array(counts, np.int64)
    comp_arr = np.array([*comp, -1, 0, 0], np.int16)
    n = int(c.sum())
    kind = f"sparse{width}"
    nbytes = body.size + _count_bytes(c) + cb.size + (2 * comp_arr.size if comp else 0)
    return Layout(kind, nbytes, PER_ENTRY[kind] * n + PER_ROW * len(rows), body, c, cb, comp_arr, gbits)


def _pack_entries(entries: np.ndarray, width: int) -> np.ndarray:
    """Little-endian bytes of the entry stream, then padding the word loads may read."""
    if width == 12:  # two per 3 bytes
        e = np.concatenate([entries, np.zeros(len(entries) % 2, np.uint32)]).reshape(-1, 2)
        pairs = e[:, 0] | (e[:, 1] << 12)
        body = np.stack([pairs & 0xFF, (pairs >> 8) & 0xFF, pairs >> 16], 1).astype(np.uint8).reshape(-1)
    else:  # three per 32-bit word
        e = np.concatenate([entries, np.zeros(-len(entries) % 3, np.uint32)]).reshape(-1, 3)
        words = e[:, 0] | (e[:, 1] << 10) | (e[:, 2] << 20)
        body = words.astype("<u4").view(np.uint8)
    return np.concatenate([body, np.zeros(4, np.uint8)])


def packed(rows: np.ndarray, bits: int, wide: bool = False) -> Layout | None:
    """Every weight as a `bits`-bit code (see the module's description), or None when some weight does not
    fit that many bits."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if rows.size == 0 or rows.min() < lo or rows.max() > hi:
        return None
    per, steps = 32 // bits, 8 // bits
    n, k = rows.shape
    words = -(-k // per)
    codes = np.zeros((n, words * per), np.uint32)  # padding is never read (the kernels' tail stops at k)
    codes[:, :k] = rows.astype(np.int32) - lo
    by_step = codes.reshape(n, words, steps, 4) << (bits * np.arange(steps, dtype=np.uint32))[:, None]
    lanes = by_step.sum(axis=2).astype(np.uint8)  # (n, words, 4): byte i holds weights 4s + i
    body = (lanes[:, :, WIDE] if wide else lanes).reshape(-1)
    return Layout(f"packed{bits}", body.size, PER_PACKED[wide] * rows.size + PER_ROW * n, body, gbits=bits)


def _count_bytes(counts: np.ndarray) -> int:
    return counts.size * (1 if counts.max(initial=0) < 256 else 2)


def choose(rows: np.ndarray, dense_bytes: int, allow_sparse: bool = True, repeats: int = 1,
           wide: bool = False) -> Layout:
    """The smallest layout of these int8 rows within its bound of the dense kernel's instructions; `repeats`:
    how often the rows run per inference (a convolution's output positions), `wide`: int16 activations."""
    dense = Layout("dense", dense_bytes, DENSE_PER_MAC * rows.size)
    if not allow_sparse:
        return dense
    options = [dense, *filter(None, (packed(rows, 2, wide), packed(rows, 4, wide)))]
    if np.count_nonzero(rows) <= rows.size // 2:  # else no sparse form can win
        options += [sparse16(rows), *filter(None, [coded(rows, 12), coded(rows, 10)])]
    allowed = [o for o in options if o.instructions <= SLOWDOWN[o.kind] * dense.instructions
               or (o.instructions - dense.instructions) * repeats <= PER_BYTE * (dense_bytes - o.nbytes)]
    best = min(allowed, key=lambda o: o.nbytes + o.instructions * repeats / WORTH)
    best.dense_bytes = dense_bytes
    return best
