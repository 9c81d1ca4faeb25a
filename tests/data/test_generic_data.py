"""`folder:` and `npz:` datasets and `Data.from_arrays` (SPEC §3): class count, channels and image size
from the data; every bad input a UserError naming the file or key (exit 2 + one line from the CLI)."""

import importlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

import deepshrink as ds
from deepshrink.cli import app
from deepshrink.data import load_dataset
from deepshrink.errors import UserError
from deepshrink.measure.latency import LatencyConfig

from conftest import cli_error, write_idx, write_mnist_folder


@pytest.fixture
def fast_latency(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training runs measure latency; a few calls are enough here (the timing loop has its own tests)."""
    run = importlib.import_module("deepshrink.study.run")
    monkeypatch.setattr(run, "_latency", lambda device, latency: LatencyConfig(
        runtimes=("onnxruntime",), threads=(1,), batch=64, repeats=1, single_calls=3))


def write_image_folder(root: Path, classes: int = 3, per_class: dict[str, int] | None = None,
                       size: tuple[int, int] = (8, 8), mode: str = "RGB", seed: int = 0) -> Path:
    """ImageFolder layout of random PNGs: root/<split>/c<k>/<i>.png (train 4, test 2 per class by default)."""
    rng = np.random.default_rng(seed)
    channels = {"L": (), "RGB": (3,)}[mode]
    for split, n in (per_class or {"train": 4, "test": 2}).items():
        for k in range(classes):
            folder = root / split / f"c{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                px = rng.integers(0, 256, (size[1], size[0], *channels), dtype=np.uint8)
                Image.fromarray(px, mode).save(folder / f"{i}.png")
    return root


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def _good_npz_arrays(n: int = 40, classes: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {"x_train": rng.integers(0, 256, (n, 12, 12), dtype=np.uint8), "y_train": np.arange(n) % classes,
            "x_test": rng.integers(0, 256, (10, 12, 12), dtype=np.uint8), "y_test": np.arange(10) % classes}


# --- folder: ---------------------------------------------------------------------------------------------

def test_folder_dataset_loads(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "imgs")
    data = load_dataset(f"folder:{root}")
    assert data.num_classes == 3 and data.input_shape == (3, 8, 8)
    assert (len(data.train_x), len(data.val_x), len(data.test_x)) == (11, 1, 6)  # a tenth of 12 for validation
    assert sorted(data.test_y.tolist()) == [0, 0, 1, 1, 2, 2]
    assert data.train_x.dtype == torch.float32 and len(data.mean) == 3


def test_folder_dataset_with_own_val_split_greyscale(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "imgs", classes=5, per_class={"train": 3, "val": 2, "test": 1},
                              size=(10, 6), mode="L")
    data = ds.load_data(f"folder:{root}")
    assert data.num_classes == 5 and data.input_shape == (1, 6, 10)
    assert (len(data.train_x), len(data.val_x), len(data.test_x)) == (15, 10, 5)


def _mixed_size(root: Path) -> Path:
    Image.new("RGB", (9, 8)).save(root / "train" / "c1" / "odd.png")
    return root / "train" / "c1" / "odd.png"


def _mixed_mode(root: Path) -> Path:
    Image.new("L", (8, 8)).save(root / "test" / "c2" / "grey.png")
    return root / "test" / "c2" / "grey.png"


def _unreadable(root: Path) -> Path:
    bad = root / "train" / "c0" / "zz-noise.png"
    bad.write_bytes(np.random.default_rng(0).bytes(300))
    return bad


def _one_class(root: Path) -> Path:
    for split in ("train", "test"):
        for k in (1, 2):
            for f in (root / split / f"c{k}").iterdir():
                f.unlink()
            (root / split / f"c{k}").rmdir()
    return root / "train"


def _empty_split(root: Path) -> Path:
    for f in (root / "test").glob("*/*.png"):
        f.unlink()
    return root / "test"


def _no_test(root: Path) -> Path:
    for f in (root / "test").glob("*/*.png"):
        f.unlink()
    for d in (root / "test").iterdir():
        d.rmdir()
    (root / "test").rmdir()
    return root


@pytest.mark.parametrize("spoil, needle", [
    (_mixed_size, "9x8 RGB image; the dataset's images are 8x8 RGB"),
    (_mixed_mode, "8x8 L image; the dataset's images are 8x8 RGB"),
    (_unreadable, "unreadable image"),
    (_one_class, "1 class folder(s)"),
    (_empty_split, "no images"),
    (_no_test, "expected train/ and test/ folders"),
])
def test_folder_bad_input(tmp_path: Path, spoil, needle: str) -> None:  # type: ignore[no-untyped-def]
    root = write_image_folder(tmp_path / "imgs")
    named = spoil(root)
    with pytest.raises(UserError, match=re.escape(needle)) as e:
        load_dataset(f"folder:{root}")
    assert str(e.value).startswith(str(named)), str(e.value)


def test_folder_missing_path_is_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such folder") as e:
        load_dataset(f"folder:{tmp_path / 'nope'}")
    assert str(tmp_path / "nope") in str(e.value)


# --- npz: ------------------------------------------------------------------------------------------------

def test_npz_greyscale_uint8(tmp_path: Path) -> None:
    path = _npz(tmp_path / "d.npz", **_good_npz_arrays())
    data = load_dataset(f"npz:{path}")
    assert data.num_classes == 4 and data.input_shape == (1, 12, 12)
    assert (len(data.train_x), len(data.val_x), len(data.test_x)) == (36, 4, 10)


def test_relative_paths_are_recorded_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint's dataset must be found again from another directory (study workers, `compress`)."""
    _npz(tmp_path / "d.npz", **_good_npz_arrays())
    monkeypatch.chdir(tmp_path)
    assert load_dataset("npz:d.npz").name == f"npz:{tmp_path.resolve() / 'd.npz'}"
    assert load_dataset(f"npz:{tmp_path / 'd.npz'}").fingerprint == load_dataset("npz:./d.npz").fingerprint


def test_npz_channels_last_float_with_val(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = rng.random((30, 8, 8, 3)).astype(np.float32)  # N×H×W×C in [0, 1]
    path = _npz(tmp_path / "f.npz", x_train=x[:20], y_train=np.arange(20) % 7, x_val=x[20:25],
                y_val=np.arange(5), x_test=x[25:], y_test=np.arange(5))
    data = load_dataset(f"npz:{path}")
    assert data.num_classes == 7 and data.input_shape == (3, 8, 8)
    assert (len(data.train_x), len(data.val_x), len(data.test_x)) == (20, 5, 5)
    # [0, 1] floats are read as 0-255 images: normalized alike, channel by channel.
    np.testing.assert_allclose(data.mean, x[:20].mean(axis=(0, 1, 2)), atol=1e-5)
    np.testing.assert_allclose(data.train_x[0, 1].numpy(), (x[0, :, :, 1] - data.mean[1]) / data.std[1], atol=1e-4)


def test_from_arrays_with_tensors() -> None:
    g = torch.Generator().manual_seed(0)
    xt = torch.randint(0, 256, (50, 1, 6, 6), dtype=torch.uint8, generator=g)
    yt = torch.arange(50) % 3
    data = ds.Data.from_arrays(xt[:40], yt[:40], xt[40:], yt[40:])
    assert isinstance(data, ds.Data) and data.num_classes == 3 and data.input_shape == (1, 6, 6)
    assert (len(data.train_x), len(data.val_x), len(data.test_x)) == (36, 4, 10)
    assert data.test_y.dtype == torch.int64 and data.test_y.tolist() == yt[40:].tolist()
    with pytest.raises(UserError, match="y_train has 39 labels for 40 images"):
        ds.Data.from_arrays(xt[:40], yt[:39], xt[40:], yt[40:])


def _missing_key(a: dict) -> dict:  # type: ignore[type-arg]
    del a["y_test"]
    return a


def _mismatched(a: dict) -> dict:  # type: ignore[type-arg]
    a["y_train"] = a["y_train"][:-3]
    return a


def _negative(a: dict) -> dict:  # type: ignore[type-arg]
    a["y_train"] = a["y_train"] - 1
    return a


def _float_labels(a: dict) -> dict:  # type: ignore[type-arg]
    a["y_test"] = a["y_test"].astype(np.float32)
    return a


def _object_images(a: dict) -> dict:  # type: ignore[type-arg]
    a["x_train"] = np.array([np.zeros((12, 12)), np.zeros((11, 12))], dtype=object)
    return a


def _shapes_differ(a: dict) -> dict:  # type: ignore[type-arg]
    a["x_test"] = a["x_test"][:, :10]
    return a


@pytest.mark.parametrize("spoil, needle", [
    (_missing_key, "missing key y_test"),
    (_mismatched, "y_train has 37 labels for 40 images"),
    (_negative, "y_train holds label -1"),
    (_float_labels, "y_test must be a 1-D integer array"),
    (_object_images, "x_train"),
    (_shapes_differ, "image shapes differ"),
])
def test_npz_bad_input(tmp_path: Path, spoil, needle: str) -> None:  # type: ignore[no-untyped-def]
    path = _npz(tmp_path / "bad.npz", **spoil(_good_npz_arrays()))
    with pytest.raises(UserError, match=re.escape(needle)) as e:
        load_dataset(f"npz:{path}")
    assert str(e.value).startswith(str(path)), str(e.value)


def test_npz_not_a_zip(tmp_path: Path) -> None:
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not an archive")
    npy = tmp_path / "one.npy"
    np.save(npy, np.zeros((3, 4, 4), np.uint8))  # a single array, not an archive of the four
    for path in (junk, npy):
        with pytest.raises(UserError, match="not a readable .npz file") as e:
            load_dataset(f"npz:{path}")
        assert str(e.value).startswith(str(path))


def test_from_arrays_ragged_list_names_the_key() -> None:
    with pytest.raises(UserError, match="mine: x_train is not one array"):
        ds.Data.from_arrays([np.zeros((4, 4)), np.zeros((5, 4))], [0, 1], np.zeros((2, 4, 4)), [0, 1], name="mine")


# --- through the command line ------------------------------------------------------------------------------

def _manifest(out: Path) -> tuple[dict, dict[str, torch.Tensor]]:  # type: ignore[type-arg]
    (meta,) = out.glob("artifacts/*/model.json")
    return json.loads(meta.read_text()), load_file(str(meta.with_suffix(".safetensors")))


@pytest.mark.parametrize("form", ["folder", "npz"])
def test_cli_train_lenet5_head_sized_to_classes(tmp_path: Path, form: str, fast_latency: None) -> None:
    if form == "folder":
        source = write_image_folder(tmp_path / "imgs", classes=3, size=(28, 28), mode="L")
        classes = 3
    else:
        rng = np.random.default_rng(3)
        source = _npz(tmp_path / "d.npz", x_train=rng.integers(0, 256, (40, 28, 28, 3), dtype=np.uint8),
                      y_train=np.arange(40) % 6, x_test=rng.integers(0, 256, (12, 28, 28, 3), dtype=np.uint8),
                      y_test=np.arange(12) % 6)
        classes = 6
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", "--dataset", f"{form}:{source}", "--model", "lenet-5", "--epochs", "1",
                                 "--out", str(out), "--device", "cpu", "--quiet"])
    assert r.exit_code == 0, (r.output, r.exception)
    manifest, state = _manifest(out)
    assert manifest["num_classes"] == classes and manifest["dataset"] == f"{form}:{source}"
    assert tuple(state["fc3.weight"].shape) == (classes, 84)
    assert manifest["input_shape"] == ([1, 28, 28] if form == "folder" else [3, 28, 28])
    assert (out / "results.csv").is_file()


def test_cli_bad_folder_and_npz_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    root = write_image_folder(tmp_path / "imgs")
    odd = _mixed_size(root)
    line = cli_error(monkeypatch, capsys, "train", "--dataset", f"folder:{root}", "--model", "lenet-300-100",
                     "--out", str(tmp_path / "r1"))
    assert line.startswith(f"error: {odd}:") and "9x8" in line
    a = _good_npz_arrays()
    del a["x_test"]
    path = _npz(tmp_path / "bad.npz", **a)
    line = cli_error(monkeypatch, capsys, "train", "--dataset", f"npz:{path}", "--model", "lenet-300-100",
                     "--out", str(tmp_path / "r2"))
    assert line.startswith(f"error: {path}:") and "missing key x_test" in line
    path = _npz(tmp_path / "obj.npz", **_object_images(_good_npz_arrays()))
    line = cli_error(monkeypatch, capsys, "train", "--dataset", f"npz:{path}", "--model", "lenet-300-100",
                     "--out", str(tmp_path / "r3"))
    assert str(path) in line and "x_train" in line


# --- label checks ------------------------------------------------------------------------------------------

def test_named_dataset_refuses_labels_out_of_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """An MNIST labels file whose values all read 12 used to train a 13-class model."""
    folder = write_mnist_folder(tmp_path / "data" / "mnist")
    labels = folder / "train-labels-idx1-ubyte.gz"
    write_idx(labels, np.full(300, 12, dtype=np.uint8))
    line = cli_error(monkeypatch, capsys, "train", "--dataset", "mnist", "--model", "lenet-300-100",
                     "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "r"))
    assert line.startswith(f"error: {labels}:") and "0..9" in line and "12" in line
    assert not (tmp_path / "r").exists()


def test_named_dataset_with_few_classes_present_loads(tmp_path: Path) -> None:
    """A named dataset knows its classes: a small copy holding only some of them is still 10-way."""
    folder = write_mnist_folder(tmp_path / "data" / "mnist")
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.arange(300) % 3)
    assert ds.load_data("mnist", tmp_path / "data").num_classes == 10


def test_generic_labels_leaving_a_class_empty_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_mnist_folder(tmp_path / "digits")
    labels = folder / "train-labels-idx1-ubyte.gz"
    write_idx(labels, np.where(np.arange(300) % 2 == 0, 12, 1))
    line = cli_error(monkeypatch, capsys, "train", "--dataset", f"idx:{folder}", "--model", "lenet-300-100",
                     "--out", str(tmp_path / "r"))
    assert line.startswith(f"error: {labels}:") and "--allow-empty-classes" in line and "0, 2, 3" in line
    data = ds.load_data(f"idx:{folder}", allow_empty_classes=True)
    assert data.num_classes == 13
    a = _good_npz_arrays(classes=4)
    a["y_train"] = np.where(a["y_train"] == 2, 3, a["y_train"])  # class 2 has test images but no training one
    path = _npz(tmp_path / "gap.npz", **a)
    with pytest.raises(UserError, match=r"gap\.npz: labels run to 3 but class\(es\) 2 have no training"):
        ds.load_data(f"npz:{path}")
