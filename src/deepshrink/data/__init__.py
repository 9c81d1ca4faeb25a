"""Datasets as whole in-memory tensors: load, split (seeded validation carve-out), normalize, verify.

Names: `mnist`, `cifar10`, and the generic forms `idx:PATH` (any folder of MNIST-layout IDX files),
`folder:PATH` (ImageFolder layout) and `npz:PATH` (a NumPy archive). Class count, channels and image
size come from the data.
"""

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepshrink.data import folder, idx, npz
from deepshrink.data.sources import SOURCES, download, locate, not_found_message
from deepshrink.errors import UserError

NUM_CLASSES = 10
# The generic forms `PREFIX:PATH`: prefix -> reader of that layout.
FORMS: dict[str, Callable[[Path], dict[str, np.ndarray]]] = {
    "idx": idx.load_idx_folder, "folder": folder.load_folder, "npz": npz.load_npz,
}


@dataclass
class DataSplits:
    """Normalized float32 tensors (N, C, H, W) and int64 labels for train / val / test."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: list[float]
    std: list[float]
    fingerprint: str
    origin: str = ""
    num_classes: int = NUM_CLASSES
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train_x.shape[1:]
        return int(c), int(h), int(w)

    @staticmethod
    def from_arrays(x_train: Any, y_train: Any, x_test: Any, y_test: Any, x_val: Any = None, y_val: Any = None,
                    name: str = "arrays", val_size: int = 5000, split_seed: int = 0,
                    allow_empty_classes: bool = False) -> "DataSplits":
        """Data from in-memory images and labels (numpy arrays or tensors), checked as an npz: file is."""
        return from_arrays(x_train, y_train, x_test, y_test, x_val, y_val, name, val_size, split_seed,
                           allow_empty_classes)


def dataset_names() -> list[str]:
    return [*sorted(SOURCES), *(f"{p}:PATH" for p in FORMS)]


def check_name(name: str) -> None:
    """A dataset name's form is valid (its files are checked when it is loaded)."""
    prefix, colon, path = name.partition(":")
    if (colon and prefix in FORMS and path) or (not colon and name in SOURCES):
        return
    raise UserError(f"unknown dataset {name!r} (known: {', '.join(dataset_names())})")


def canonical_name(name: str) -> str:
    """`folder:PATH`/`npz:PATH`/`idx:PATH` with PATH absolute: what manifests and results record, so a
    checkpoint's dataset is found again from another directory (study workers, a later `compress`)."""
    prefix, colon, rest = name.partition(":")
    return f"{prefix}:{Path(rest).expanduser().resolve()}" if colon and prefix in FORMS and rest else name


def load_arrays(name: str, data_dir: Path | None = None, allow_download: bool = True) -> tuple[dict, str]:
    """Raw arrays {train_x, train_y, test_x, test_y[, val_x, val_y]} and the path they came from."""
    check_name(name)
    prefix, colon, rest = name.partition(":")
    if colon:
        path = Path(rest).expanduser()
        if not path.exists():
            raise UserError(f"{path}: no such {'file' if prefix == 'npz' else 'folder'} for dataset {name!r}")
        return FORMS[prefix](path), str(path)
    source = SOURCES[name]
    found = locate(source, data_dir)
    if found is None and allow_download and not os.environ.get("DEEPSHRINK_OFFLINE"):
        try:
            download(source, progress=False)
        except UserError as e:
            if "checksum" in str(e):
                raise
        found = locate(source, data_dir)
    if found is None:
        raise UserError(not_found_message(source, data_dir))
    path, loader = found
    return loader(path), str(path)


def _fingerprint(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.blake2b(digest_size=8)
    for key in sorted(arrays):
        h.update(key.encode())
        h.update(np.ascontiguousarray(arrays[key]).tobytes())
    return h.hexdigest()


def split_arrays(arrays: dict[str, np.ndarray], val_size: int, split_seed: int) -> dict[str, np.ndarray]:
    """Carve a fixed validation set out of the training set (unless the data brings its own); the
    test set is left untouched."""
    if "val_x" in arrays:
        return {k: arrays[k] for k in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")}
    n = len(arrays["train_x"])
    if 2 * val_size > n:  # small custom (idx:) datasets: keep a tenth for validation instead
        val_size = n // 10
    if not 0 <= val_size < n:
        raise UserError(f"val_size={val_size}: must be in [0, {n}) for this dataset")
    perm = np.random.default_rng(split_seed).permutation(n)
    val_idx, train_idx = np.sort(perm[:val_size]), np.sort(perm[val_size:])
    return {
        "train_x": arrays["train_x"][train_idx], "train_y": arrays["train_y"][train_idx],
        "val_x": arrays["train_x"][val_idx], "val_y": arrays["train_y"][val_idx],
        "test_x": arrays["test_x"], "test_y": arrays["test_y"],
    }


def _labels_file(origin: str, key: str) -> str:
    """The labels file behind `key` where the data is an IDX folder, else the data's own path."""
    folder = Path(origin)
    stem = {"train_y": "train-labels-idx1-ubyte", "test_y": "t10k-labels-idx1-ubyte"}.get(key)
    found = idx.find_idx_file(folder, stem) if stem and folder.is_dir() else None
    return str(found or origin)


def num_classes_of(arrays: dict[str, np.ndarray], name: str, origin: str = "",
                   allow_empty_classes: bool = False) -> int:
    """K: a named dataset's own class count, its labels checked against it; else from the labels
    (0..K-1 over every split), refusing labels that leave a class without a training example, the
    mark of a corrupt labels file (e.g. every label read as 12) unless `allow_empty_classes`."""
    labels = {key: arrays[key] for key in arrays if key.endswith("_y") and arrays[key].size}
    lo = min(int(y.min()) for y in labels.values())
    hi = max(int(y.max()) for y in labels.values())
    if name in SOURCES:
        k = SOURCES[name].classes
        if lo < 0 or hi >= k:
            bad = next(key for key, y in labels.items() if int(y.min()) < 0 or int(y.max()) >= k)
            raise UserError(f"{_labels_file(origin or name, bad)}: {name} labels are 0..{k - 1}, "
                            f"but this file holds {lo if lo < 0 else hi}")
        return k
    k = 1 + hi
    if k < 2:
        raise UserError(f"dataset {name!r}: labels hold a single class; a classifier needs at least 2")
    counts = np.bincount(labels["train_y"].astype(np.int64), minlength=k) if "train_y" in labels else np.zeros(k)
    empty = [int(c) for c in np.flatnonzero(counts == 0)]
    if empty and not allow_empty_classes:
        shown = ", ".join(map(str, empty[:8])) + (", ..." if len(empty) > 8 else "")
        raise UserError(f"{_labels_file(origin or name, 'train_y')}: labels run to {hi} but class(es) {shown} "
                        "have no training example (a corrupt labels file?); pass --allow-empty-classes if that "
                        "is intended")
    return k


def load_dataset(name: str, data_dir: Path | None = None, val_size: int = 5000, split_seed: int = 0,
                 allow_download: bool = True, allow_empty_classes: bool = False) -> DataSplits:
    arrays, origin = load_arrays(name, data_dir, allow_download)
    return splits_from_arrays(arrays, canonical_name(name), origin, val_size, split_seed, allow_empty_classes)


def _as_numpy(a: Any, key: str, name: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    try:
        return np.asarray(a)
    except ValueError as e:  # ragged lists: numpy refuses to make one array of them
        raise UserError(f"{name}: {key} is not one array ({str(e).splitlines()[0][:120]})") from None


def from_arrays(x_train: Any, y_train: Any, x_test: Any, y_test: Any, x_val: Any = None, y_val: Any = None,
                name: str = "arrays", val_size: int = 5000, split_seed: int = 0,
                allow_empty_classes: bool = False) -> DataSplits:
    """Data from in-memory images and labels (numpy arrays or tensors), read as an `npz:` file is."""
    raw = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    if x_val is not None:
        raw.update(x_val=x_val, y_val=y_val)
    arrays = npz.from_raw({k: _as_numpy(v, k, name) for k, v in raw.items()}, name)
    return splits_from_arrays(arrays, name, "in-memory arrays", val_size, split_seed, allow_empty_classes)


def splits_from_arrays(arrays: dict[str, np.ndarray], name: str, origin: str, val_size: int = 5000,
                       split_seed: int = 0, allow_empty_classes: bool = False) -> DataSplits:
    fp = _fingerprint(arrays)
    classes = num_classes_of(arrays, name, origin, allow_empty_classes)
    parts = split_arrays(arrays, val_size, split_seed)
    train = parts["train_x"].astype(np.float32) / 255.0
    # Per-channel statistics of the training part only, so validation and test stay unseen.
    mean = train.mean(axis=(0, 2, 3))
    std = train.std(axis=(0, 2, 3)) + 1e-8

    def norm(x: np.ndarray) -> torch.Tensor:
        xf = x.astype(np.float32) / 255.0
        return torch.from_numpy((xf - mean[None, :, None, None]) / std[None, :, None, None])

    return DataSplits(
        name=name,
        train_x=torch.from_numpy((train - mean[None, :, None, None]) / std[None, :, None, None]),
        train_y=torch.from_numpy(parts["train_y"]),
        val_x=norm(parts["val_x"]), val_y=torch.from_numpy(parts["val_y"]),
        test_x=norm(parts["test_x"]), test_y=torch.from_numpy(parts["test_y"]),
        mean=[float(m) for m in mean], std=[float(s) for s in std],
        fingerprint=f"{fp}-v{val_size}-s{split_seed}", origin=origin, num_classes=classes,
    )
