"""Datasets as whole in-memory tensors: load, split (seeded validation carve-out), normalize, verify.

Names: `mnist`, `cifar10`, and `idx:PATH` (any folder of MNIST-layout IDX files).
"""

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from deepshrink.data import idx
from deepshrink.data.sources import SOURCES, download, locate, not_found_message
from deepshrink.errors import UserError

NUM_CLASSES = 10


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


def dataset_names() -> list[str]:
    return [*sorted(SOURCES), "idx:PATH"]


def load_arrays(name: str, data_dir: Path | None = None, allow_download: bool = True) -> tuple[dict, str]:
    """Raw uint8 arrays {train_x, train_y, test_x, test_y} and the path they came from."""
    if name.startswith("idx:"):
        folder = Path(name[4:]).expanduser()
        if not folder.is_dir():
            raise UserError(f"{folder}: no such folder for dataset {name!r}")
        return idx.load_idx_folder(folder), str(folder)
    if name not in SOURCES:
        raise UserError(f"unknown dataset {name!r} (known: {', '.join(dataset_names())})")
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
    """Carve a fixed validation set out of the training set; the test set is left untouched."""
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


def load_dataset(name: str, data_dir: Path | None = None, val_size: int = 5000, split_seed: int = 0,
                 allow_download: bool = True) -> DataSplits:
    arrays, origin = load_arrays(name, data_dir, allow_download)
    fp = _fingerprint(arrays)
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
        fingerprint=f"{fp}-v{val_size}-s{split_seed}", origin=origin,
    )
