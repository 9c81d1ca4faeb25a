"""CIFAR-10 readers: python version (tar.gz or extracted folder) and binary version (tar.gz).

The python batches are pickles. They are read with a restricted unpickler that admits only the
numpy reconstruction callables a batch needs, so a crafted file can never execute code.
"""

import io
import pickle
import pickletools
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from deepshrink.errors import UserError

PY_DIR = "cifar-10-batches-py"
BIN_DIR = "cifar-10-batches-bin"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"

class _Stub:
    """A numpy object a batch's pickle names (array, dtype or scalar), kept as plain arguments and state.
    numpy's own `__setstate__` trusts its state: a crafted dtype or array state crashes the interpreter
    (found by `make fuzz`), so nothing reaches numpy until `_build` has checked it."""

    def __init__(self, kind: str, args: tuple[Any, ...]) -> None:
        self.kind, self.args, self.state = kind, args, None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _NDArray:
    """Stands for `numpy.ndarray` as `_reconstruct`'s first argument."""


def _encode(text: Any, encoding: str = "utf-8") -> bytes:
    # Python 2 byte strings arrive as `_codecs.encode(str, "latin1")`; other codecs (zlib, bz2...) have no
    # business in a batch.
    if not isinstance(text, str) or encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "utf8"):
        raise pickle.UnpicklingError(f"forbidden _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode(encoding)


# Both numpy spellings: batches written by numpy 1.x name numpy.core, numpy 2.x names numpy._core.
_SAFE: dict[tuple[str, str], Any] = {
    **{(f"numpy.{core}.multiarray", "_reconstruct"): lambda cls, *a: _Stub("array", (cls, *a))
       for core in ("core", "_core")},
    **{(f"numpy.{core}.multiarray", "scalar"): lambda *a: _Stub("scalar", a) for core in ("core", "_core")},
    ("numpy", "ndarray"): _NDArray, ("numpy", "dtype"): lambda *a: _Stub("dtype", a),
    ("_codecs", "encode"): _encode,
}
_DTYPES = frozenset({"u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f4", "f8", "b1"})


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _SAFE:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}")
        return _SAFE[module, name]


def _text(v: Any) -> Any:
    return v.decode("latin-1") if isinstance(v, bytes) else v  # a Python 2 str arrives as bytes


def _dtype(stub: Any) -> np.dtype:
    name = _text(stub.args[0]) if isinstance(stub, _Stub) and stub.kind == "dtype" and stub.args else None
    if name not in _DTYPES:
        raise pickle.UnpicklingError(f"unsupported dtype {getattr(stub, 'args', stub)!r:.60}")
    dt = np.dtype(name)
    st = stub.state if isinstance(stub.state, tuple) else ()
    if any(v is not None for v in st[2:5]) or any(v not in (-1, dt.itemsize) for v in st[5:6]):
        raise pickle.UnpicklingError(f"unsupported dtype state {st!r:.60}")  # sub-arrays, fields, sizes
    order = _text(st[1]) if len(st) > 1 else "|"
    return dt.newbyteorder(">") if order == ">" else dt


def _array(stub: _Stub) -> np.ndarray:
    st = stub.state
    if stub.args[:1] != (_NDArray,) or not isinstance(st, tuple) or len(st) != 5:
        raise pickle.UnpicklingError("malformed ndarray state")
    _, shape, dt, fortran, raw = st
    if (not isinstance(shape, tuple) or len(shape) > 4 or not all(isinstance(d, int) and d >= 0 for d in shape)
            or not isinstance(raw, bytes)):
        raise pickle.UnpicklingError("malformed ndarray state")
    dtype = _dtype(dt)
    if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != len(raw):
        raise pickle.UnpicklingError(f"array of shape {shape} does not match its {len(raw)} data bytes")
    return np.frombuffer(raw, dtype).reshape(shape, order="F" if fortran else "C").copy()


def _build(obj: Any, depth: int = 0) -> Any:
    """The unpickled tree with every stub turned into the numpy object it stands for, once checked."""
    if depth > 20:
        raise pickle.UnpicklingError("nested too deep")
    if isinstance(obj, dict):
        return {_build(k, depth + 1): _build(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_build(v, depth + 1) for v in obj)
    if isinstance(obj, _Stub):
        if obj.kind == "array":
            return _array(obj)
        if obj.kind == "dtype":
            return _dtype(obj)
        dt, data = (*obj.args, None)[:2]
        dtype = _dtype(dt)
        if not isinstance(data, bytes) or len(data) != dtype.itemsize:
            raise pickle.UnpicklingError("malformed numpy scalar")
        return np.frombuffer(data, dtype)[0]
    if obj is _NDArray:
        raise pickle.UnpicklingError("bare numpy.ndarray")
    return obj


def _check_memo(data: bytes, name: str) -> None:
    """The C unpickler sizes its memo table by the largest index a PUT names: one crafted LONG_BINPUT
    would make it allocate gigabytes and spend seconds doing so. A real batch's indices count its objects,
    so none exceeds the file's length."""
    try:
        for op, arg, _ in pickletools.genops(io.BytesIO(data)):
            if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and isinstance(arg, int) and arg > len(data):
                raise UserError(f"{name}: not a CIFAR-10 batch (pickle memo index {arg} in {len(data)} bytes)")
            if op.name == "STOP":
                return
    except UserError:
        raise
    except Exception as e:  # pickletools' own parse errors: not a pickle at all
        raise UserError(f"{name}: not a CIFAR-10 batch ({type(e).__name__}: {str(e)[:80]})") from None


def load_batch(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """One python-version batch: images (N,3,32,32) uint8 and labels (N,) int64."""
    _check_memo(data, name)
    try:
        obj = _build(_RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load())
    except pickle.UnpicklingError as e:
        raise UserError(f"{name}: refused to unpickle ({e})") from None
    except Exception as e:  # any other parse failure means a corrupt file
        raise UserError(f"{name}: not a CIFAR-10 batch ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{name}: not a CIFAR-10 batch (top-level {type(obj).__name__}, expected dict)")
    obj = {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    if "data" not in obj or "labels" not in obj:
        raise UserError(f"{name}: CIFAR-10 batch lacks 'data' or 'labels'")
    x = np.asarray(obj["data"])
    y = np.asarray(obj["labels"], dtype=np.int64)
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        raise UserError(f"{name}: 'data' is {x.dtype} {x.shape}, expected uint8 (N, 3072)")
    return _check(x.reshape(-1, 3, 32, 32), y, name)


def _check(x: np.ndarray, y: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    if len(x) != len(y):
        raise UserError(f"{name}: {len(y)} labels for {len(x)} images")
    if y.size and (int(y.min()) < 0 or int(y.max()) > 9):
        raise UserError(f"{name}: label {int(y.max()) if y.max() > 9 else int(y.min())} out of range 0-9")
    return x, y


def _read_members(tar_path: Path, wanted: list[str]) -> dict[str, bytes]:
    """Read the named members (by base name) of a tar.gz, without extracting anything to disk."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(tar_path, "r:*") as tf:
            for member in tf:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in wanted:
                    f = tf.extractfile(member)
                    if f is not None:
                        found[base] = f.read()
    except Exception as e:  # tarfile, gzip, zlib and lzma each raise their own types on a corrupt archive
        raise UserError(f"{tar_path}: corrupt or truncated archive ({e})") from None
    missing = [w for w in wanted if w not in found]
    if missing:
        raise UserError(f"{tar_path}: archive is missing {', '.join(missing)}")
    return found


def _split(batches: dict[str, tuple[np.ndarray, np.ndarray]], names: list[str]) -> tuple[np.ndarray, ...]:
    xs, ys = zip(*(batches[n] for n in names), strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def load_python(path: Path) -> dict[str, np.ndarray]:
    """`cifar-10-python.tar.gz` or an extracted `cifar-10-batches-py/` folder."""
    names = [*TRAIN_BATCHES, TEST_BATCH]
    if path.is_dir():
        raw = {}
        for n in names:
            p = path / n
            if not p.is_file():
                raise UserError(f"{path}: missing CIFAR-10 batch {n}")
            raw[n] = p.read_bytes()
        where = {n: str(path / n) for n in names}
    else:
        raw = _read_members(path, names)
        where = {n: f"{path}:{n}" for n in names}
    batches = {n: load_batch(raw[n], where[n]) for n in names}
    tx, ty = _split(batches, TRAIN_BATCHES)
    sx, sy = _split(batches, [TEST_BATCH])
    return {"train_x": tx, "train_y": ty, "test_x": sx, "test_y": sy}


def parse_binary(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Binary-version batch: records of 1 label byte followed by 3072 pixel bytes."""
    if len(data) % 3073:
        raise UserError(f"{name}: {len(data)} bytes is not a whole number of 3073-byte records")
    rec = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3073)
    return _check(rec[:, 1:].reshape(-1, 3, 32, 32), rec[:, 0].astype(np.int64), name)


def load_binary(path: Path) -> dict[str, np.ndarray]:
    """`cifar-10-binary.tar.gz` (data_batch_1.bin .. data_batch_5.bin, test_batch.bin)."""
    names = [f"{n}.bin" for n in [*TRAIN_BATCHES, TEST_BATCH]]
    raw = _read_members(path, names)
    batches = {n: parse_binary(raw[n], f"{path}:{n}") for n in names}
    tx, ty = _split(batches, names[:5])
    sx, sy = _split(batches, names[5:])
    return {"train_x": tx, "train_y": ty, "test_x": sx, "test_y": sy}
