"""Dataset readers: every format SPEC §3 names, and one clear UserError for each kind of bad file."""

import gzip
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from deepshrink.data import cifar, idx, load_dataset, split_arrays
from deepshrink.errors import UserError

from conftest import synthetic_images, write_idx, write_mnist_folder


def test_idx_roundtrip_raw_and_gz(tmp_path: Path) -> None:
    arr = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    for gz in (True, False):
        p = write_idx(tmp_path / f"a{'.gz' if gz else ''}", arr, gz=gz)
        np.testing.assert_array_equal(idx.read_idx(p), arr)


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b"\x00\x00\x07\x03" + b[4:], "bad magic"),
    (lambda b: b[:-10], "truncated IDX data"),
    (lambda b: b[:6], "truncated IDX header"),
    (lambda b: b + b"\x00", "trailing bytes"),
])
def test_idx_bad_files(tmp_path: Path, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    good = (tmp_path / "good")
    write_idx(good, np.zeros((3, 28, 28), np.uint8), gz=False)
    bad = tmp_path / "bad-idx"
    bad.write_bytes(mutate(good.read_bytes()))
    with pytest.raises(UserError, match=message) as e:
        idx.read_idx(bad)
    assert str(bad) in str(e.value)


def test_not_gzip(tmp_path: Path) -> None:
    p = tmp_path / "x.gz"
    p.write_bytes(b"plain bytes, not gzip")
    with pytest.raises(UserError, match="not a gzip file"):
        idx.read_idx(p)


def test_truncated_gzip(tmp_path: Path) -> None:
    p = tmp_path / "x.gz"
    p.write_bytes(gzip.compress(np.random.default_rng(0).bytes(5000))[:400])
    with pytest.raises(UserError, match="corrupt or truncated gzip"):
        idx.read_idx(p)


def test_idx_folder_count_mismatch_and_label_range(tmp_path: Path) -> None:
    folder = write_mnist_folder(tmp_path / "m")
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(299, np.uint8))
    with pytest.raises(UserError, match="299 labels for 300 images"):
        idx.load_idx_folder(folder)
    # Labels beyond 9 are other IDX datasets (EMNIST has 47 classes): the class count follows the data.
    labels = np.arange(300) % 12
    write_idx(folder / "train-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    assert load_dataset(f"idx:{folder}", val_size=30).num_classes == 12


def test_idx_dataset_name_and_split(tmp_path: Path) -> None:
    folder = write_mnist_folder(tmp_path / "m", gz=False)
    d = load_dataset(f"idx:{folder}", val_size=50, split_seed=3)
    assert d.train_x.shape == (250, 1, 28, 28) and d.val_x.shape == (50, 1, 28, 28)
    assert d.test_x.shape == (100, 1, 28, 28)
    assert abs(float(d.train_x.mean())) < 1e-4  # normalized with training statistics
    again = load_dataset(f"idx:{folder}", val_size=50, split_seed=3)
    assert d.fingerprint == again.fingerprint and bool((d.val_x == again.val_x).all())


def test_split_is_disjoint_and_seeded() -> None:
    x = np.arange(100)[:, None]
    arrays = {"train_x": x, "train_y": np.arange(100), "test_x": x[:5], "test_y": np.arange(5)}
    a, b, c = split_arrays(arrays, 20, 0), split_arrays(arrays, 20, 0), split_arrays(arrays, 20, 1)
    assert set(a["val_y"]).isdisjoint(a["train_y"]) and len(a["val_y"]) == 20
    assert (a["val_y"] == b["val_y"]).all() and not (a["val_y"] == c["val_y"]).all()
    assert len(split_arrays(arrays, 60, 0)["val_y"]) == 10  # too large for 100 images: a tenth instead
    with pytest.raises(UserError, match="val_size"):
        split_arrays(arrays, -1, 0)


def _cifar_batch(n: int, seed: int, label: bytes = b"training batch") -> bytes:
    x, y = synthetic_images(n, (3, 32, 32), seed=seed)
    obj = {b"batch_label": label, b"labels": [int(v) for v in y], b"data": x.reshape(n, -1),
           b"filenames": [b"f%d.png" % i for i in range(n)]}
    return pickle.dumps(obj, protocol=2)


def _write_cifar_tar(path: Path, names: list[str], n: int = 20) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for i, name in enumerate(names):
            data = _cifar_batch(n, i)
            info = tarfile.TarInfo(f"{cifar.PY_DIR}/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_cifar_python_tar_and_folder(tmp_path: Path) -> None:
    tar = _write_cifar_tar(tmp_path / "cifar-10-python.tar.gz", [*cifar.TRAIN_BATCHES, cifar.TEST_BATCH])
    out = cifar.load_python(tar)
    assert out["train_x"].shape == (100, 3, 32, 32) and out["test_y"].shape == (20,)
    folder = tmp_path / cifar.PY_DIR
    folder.mkdir()
    for i, name in enumerate([*cifar.TRAIN_BATCHES, cifar.TEST_BATCH]):
        (folder / name).write_bytes(_cifar_batch(20, i))
    out2 = cifar.load_python(folder)
    np.testing.assert_array_equal(out["train_x"], out2["train_x"])


def test_cifar_tar_missing_batch(tmp_path: Path) -> None:
    tar = _write_cifar_tar(tmp_path / "c.tar.gz", [*cifar.TRAIN_BATCHES[:4], cifar.TEST_BATCH])
    with pytest.raises(UserError, match="missing data_batch_5"):
        cifar.load_python(tar)


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        import os

        return (os.system, ("touch /tmp/deepshrink-pwned-marker",))


def test_cifar_pickle_with_foreign_global_is_refused(tmp_path: Path) -> None:
    marker = Path("/tmp/deepshrink-pwned-marker")
    marker.unlink(missing_ok=True)
    data = pickle.dumps({b"data": _Evil(), b"labels": []}, protocol=2)
    with pytest.raises(UserError, match="refused to unpickle.*forbidden global"):
        cifar.load_batch(data, "evil_batch")
    assert not marker.exists()
    with pytest.raises(UserError, match="forbidden global builtins.eval"):
        cifar.load_batch(b"\x80\x02cbuiltins\neval\nq\x00.", "eval_batch")


_SIZES = b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t"  # a dtype state's elsize, alignment, flags


def _batch_pickle(x: np.ndarray) -> bytes:
    return pickle.dumps({b"data": x, b"labels": [1, 2]}, protocol=2)


@pytest.mark.parametrize("patch, message", [
    # numpy's dtype.__setstate__ trusts these fields (a crafted one crashed the interpreter under `make fuzz`);
    # the reader checks a state before numpy sees it
    ((b"NNN" + _SIZES, b"NX\x01\x00\x00\x00aN" + _SIZES), "unsupported dtype state"),  # field names
    ((b"X\x02\x00\x00\x00u1", b"X\x02\x00\x00\x00O8"), "unsupported dtype"),  # object arrays
    ((b"K\x02M\x00\x0c\x86", b"K\x03M\x00\x0c\x86"), "does not match its 6144 data bytes"),
])
def test_cifar_pickle_numpy_state_is_checked_before_numpy_sees_it(patch: tuple[bytes, bytes], message: str) -> None:
    data = _batch_pickle(np.zeros((2, 3072), np.uint8))
    assert patch[0] in data
    with pytest.raises(UserError, match=message):
        cifar.load_batch(data.replace(patch[0], patch[1], 1), "data_batch_1")


def test_cifar_binary(tmp_path: Path) -> None:
    x, y = synthetic_images(10, (3, 32, 32))
    rec = np.concatenate([y.astype(np.uint8)[:, None], x.reshape(10, -1)], axis=1).tobytes()
    path = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for name in [*cifar.TRAIN_BATCHES, cifar.TEST_BATCH]:
            info = tarfile.TarInfo(f"{cifar.BIN_DIR}/{name}.bin")
            info.size = len(rec)
            tf.addfile(info, io.BytesIO(rec))
    out = cifar.load_binary(path)
    assert out["train_x"].shape == (50, 3, 32, 32)
    np.testing.assert_array_equal(out["test_x"], x)
    with pytest.raises(UserError, match="3073-byte records"):
        cifar.parse_binary(rec[:-1], "short.bin")


def test_cifar_label_out_of_range() -> None:
    obj = {b"labels": [12], b"data": np.zeros((1, 3072), np.uint8)}
    with pytest.raises(UserError, match="label 12 out of range"):
        cifar.load_batch(pickle.dumps(obj, protocol=2), "b")
