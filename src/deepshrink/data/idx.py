"""IDX reader (the MNIST file format), raw or gzip-wrapped, with one-line errors for bad files."""

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from deepshrink.errors import UserError

# Magic = 0x00 0x00 <dtype code> <ndim>; MNIST uses 0x08 (uint8) for images (ndim 3) and labels (ndim 1).
_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}


def read_bytes(path: Path) -> bytes:
    """The file's content, transparently un-gzipped when the name ends in .gz."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    if path.suffix != ".gz":
        return raw
    if raw[:2] != b"\x1f\x8b":
        raise UserError(f"{path}: not a gzip file (bad magic bytes)")
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{path}: corrupt or truncated gzip ({e})") from None


def parse_idx(data: bytes, name: str, expect_ndim: int | None = None) -> np.ndarray:
    """Parse IDX bytes into an array; `name` is only used in error messages."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise UserError(f"{name}: not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    if expect_ndim is not None and ndim != expect_ndim:
        raise UserError(f"{name}: expected an IDX file of {expect_ndim} dimensions, found {ndim}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{name}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[data[2]])
    need = math.prod(shape) * dtype.itemsize  # Python ints: a crafted header cannot overflow this
    have = len(data) - header
    if have < need:
        raise UserError(f"{name}: truncated IDX data ({have} of {need} bytes)")
    if have > need:
        raise UserError(f"{name}: {have - need} trailing bytes after IDX data")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def read_idx(path: Path, expect_ndim: int | None = None) -> np.ndarray:
    return parse_idx(read_bytes(path), str(path), expect_ndim)


def find_idx_file(folder: Path, stem: str) -> Path | None:
    """`stem` raw, gzipped, or with the dot-variant some mirrors use (train-images.idx3-ubyte)."""
    for cand in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        p = folder / cand
        if p.is_file():
            return p
    return None


def load_idx_folder(folder: Path) -> dict[str, np.ndarray]:
    """The four MNIST-layout files of a folder as images (N,1,28,28) uint8 and labels (N,) int64."""
    out: dict[str, np.ndarray] = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        img_path = find_idx_file(folder, f"{prefix}-images-idx3-ubyte")
        lbl_path = find_idx_file(folder, f"{prefix}-labels-idx1-ubyte")
        if img_path is None or lbl_path is None:
            missing = f"{prefix}-images-idx3-ubyte" if img_path is None else f"{prefix}-labels-idx1-ubyte"
            raise UserError(f"{folder}: missing {missing}[.gz]")
        images = read_idx(img_path, expect_ndim=3)
        labels = read_idx(lbl_path, expect_ndim=1)
        if images.dtype != np.uint8 or labels.dtype != np.uint8:
            raise UserError(f"{img_path}: expected uint8 images and labels")
        if len(images) != len(labels):
            raise UserError(f"{lbl_path}: {len(labels)} labels for {len(images)} images in {img_path.name}")
        out[f"{split}_x"] = images[:, None, :, :]
        out[f"{split}_y"] = labels.astype(np.int64)
    return out
