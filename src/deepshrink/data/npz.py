"""`npz:PATH` datasets: a NumPy archive with x_train, y_train, x_test, y_test (optional x_val, y_val).

Images are N×H×W, N×C×H×W or N×H×W×C (channels-last is detected: a last axis of 1, 3 or 4 where the
second is not); uint8 or float (floats in [0, 1] are scaled to 0–255 so every dataset is normalized
alike). Labels are integers 0..K−1. Read with `allow_pickle=False`: an object array is refused.
"""

import math
import zipfile
from pathlib import Path

import numpy as np

from deepshrink.errors import UserError

REQUIRED = ("x_train", "y_train", "x_test", "y_test")
_CHANNELS = (1, 3, 4)


def _images(x: np.ndarray, key: str, source: str) -> np.ndarray:
    if x.dtype == object or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise UserError(f"{source}: {key} has dtype {x.dtype}, expected uint8 or float images")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in _CHANNELS and x.shape[1] not in _CHANNELS:
        x = x.transpose(0, 3, 1, 2)  # N×H×W×C -> N×C×H×W
    elif x.ndim != 4:
        raise UserError(f"{source}: {key} has shape {x.shape}, expected N×H×W, N×C×H×W or N×H×W×C")
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise UserError(f"{source}: {key} holds NaN or infinite values")
        x = x * 255.0 if x.size and float(x.max()) <= 1.0 else x
        return np.ascontiguousarray(x, dtype=np.float32)
    return np.ascontiguousarray(x)


def _labels(y: np.ndarray, key: str, source: str, n: int) -> np.ndarray:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{source}: {key} must be a 1-D integer array (got {y.dtype}, shape {y.shape})")
    if len(y) != n:
        raise UserError(f"{source}: {key} has {len(y)} labels for {n} images")
    if y.size and int(y.min()) < 0:
        raise UserError(f"{source}: {key} holds label {int(y.min())}; labels must be 0..K-1")
    return y.astype(np.int64)


def load_npz(path: Path) -> dict[str, np.ndarray]:
    source = str(path)
    if not path.is_file():
        raise UserError(f"{source}: no such .npz file")
    if not zipfile.is_zipfile(path):  # np.load would read a .npy, or try to unpickle anything else
        raise UserError(f"{source}: not a readable .npz file (not a zip archive of arrays, as np.savez writes)")
    _check_members(path, source)
    raw: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as z:
            for k in z.files:
                try:
                    raw[k] = z[k]
                except ValueError as e:  # an object array needs pickle, which is refused
                    raise UserError(f"{source}: {k} is unreadable without pickle ({e}); save plain numeric "
                                    "arrays") from None
    except UserError:
        raise
    except Exception as e:  # zipfile, zlib and numpy's format reader each raise their own types
        raise UserError(f"{source}: not a readable .npz file ({type(e).__name__})") from None
    return from_raw(raw, source)


def _check_members(path: Path, source: str) -> None:
    """Each array's header against its member's size, before numpy allocates what the header claims
    (numpy reads a zip member by allocating the whole array first)."""
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, _, dtype = read_header(f)
                    need = math.prod(shape) * dtype.itemsize
                    if dtype.hasobject:
                        raise UserError(f"{source}: {info.filename} is an object array (needs pickle, refused); "
                                        "save plain numeric arrays")
                    if need > info.file_size - f.tell():
                        raise UserError(f"{source}: {info.filename} claims {need} bytes of data, the archive holds "
                                        f"{info.file_size - f.tell()}")
    except UserError:
        raise
    except Exception as e:  # a broken zip directory or .npy header
        raise UserError(f"{source}: not a readable .npz file ({type(e).__name__})") from None


def from_raw(raw: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """The checked arrays of an npz-style dict (x_train, y_train, ...) in the loader's layout."""
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise UserError(f"{source}: missing key {missing[0]} (needs {', '.join(REQUIRED)}; optional x_val, y_val)")
    out: dict[str, np.ndarray] = {}
    for split in ("train", "val", "test"):
        if f"x_{split}" not in raw and split == "val":
            continue
        x = _images(raw[f"x_{split}"], f"x_{split}", source)
        if f"y_{split}" not in raw:
            raise UserError(f"{source}: x_{split} without y_{split}")
        out[f"{split}_x"] = x
        out[f"{split}_y"] = _labels(raw[f"y_{split}"], f"y_{split}", source, len(x))
    shapes = {k: v.shape[1:] for k, v in out.items() if k.endswith("_x")}
    if len(set(shapes.values())) > 1:
        raise UserError(f"{source}: image shapes differ between splits ({shapes})")
    return out
