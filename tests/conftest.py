"""Shared fixtures: tiny, learnable synthetic datasets and file writers in the canonical formats."""

import gzip
import os
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import deepshrink as ds
from deepshrink.checkpoint import Manifest
from deepshrink.cli import main
from deepshrink.data import DataSplits
from deepshrink.measure.latency import LatencyConfig
from deepshrink.models import create_model
from deepshrink.train import TrainConfig, fit
from deepshrink.variant import Variant

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def real_data_dir() -> Path | None:
    env = os.environ.get("DEEPSHRINK_DATA")
    for cand in ([Path(env)] if env else []) + [SHARED_DATA]:
        if (cand / "mnist").is_dir():
            return cand
    return None


requires_real_data = pytest.mark.skipif(real_data_dir() is None, reason="real datasets not present")


def synthetic_images(n: int, shape: tuple[int, int, int], classes: int = 10, seed: int = 0) -> tuple[np.ndarray,
                                                                                                        np.ndarray]:
    """uint8 images whose class is a bright block in a class-specific place, plus noise: learnable in
    a few epochs by an MLP or a small CNN, so technique tests can check accuracy bounds quickly."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    y = rng.integers(0, classes, n)
    x = rng.integers(0, 60, (n, c, h, w)).astype(np.uint8)
    cell = h // 4
    for k in range(classes):
        r, col = divmod(k, 4)
        sel = y == k
        x[sel, :, r * cell : (r + 1) * cell, col * cell : (col + 1) * cell] = 220
    return x, y.astype(np.int64)


def make_splits(n_train: int = 512, n_val: int = 128, n_test: int = 256, shape: tuple[int, int, int] = (1, 28, 28),
                name: str = "mnist", seed: int = 0) -> DataSplits:
    x, y = synthetic_images(n_train + n_val + n_test, shape, seed=seed)
    xf = torch.from_numpy(x.astype(np.float32) / 255.0)
    mean = xf.mean(dim=(0, 2, 3))
    std = xf.std(dim=(0, 2, 3)) + 1e-8
    xf = (xf - mean[None, :, None, None]) / std[None, :, None, None]
    yt = torch.from_numpy(y)
    a, b = n_train, n_train + n_val
    return DataSplits(name=name, train_x=xf[:a], train_y=yt[:a], val_x=xf[a:b], val_y=yt[a:b], test_x=xf[b:],
                      test_y=yt[b:], mean=mean.tolist(), std=std.tolist(), fingerprint=f"synthetic-{seed}",
                      origin="synthetic")


@pytest.fixture
def tiny_mnist() -> DataSplits:
    return make_splits()


@pytest.fixture
def tiny_cifar() -> DataSplits:
    return make_splits(shape=(3, 32, 32), name="cifar10")


def write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> Path:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_mnist_folder(folder: Path, n_train: int = 300, n_test: int = 100, gz: bool = True) -> Path:
    """A complete MNIST-layout folder of synthetic digits (learnable, see synthetic_images)."""
    folder.mkdir(parents=True, exist_ok=True)
    x, y = synthetic_images(n_train + n_test, (1, 28, 28))
    sfx = ".gz" if gz else ""
    write_idx(folder / f"train-images-idx3-ubyte{sfx}", x[:n_train, 0], gz)
    write_idx(folder / f"train-labels-idx1-ubyte{sfx}", y[:n_train], gz)
    write_idx(folder / f"t10k-images-idx3-ubyte{sfx}", x[n_train:, 0], gz)
    write_idx(folder / f"t10k-labels-idx1-ubyte{sfx}", y[n_train:], gz)
    return folder


@pytest.fixture
def two_nodes() -> Iterator[Any]:
    """A Ray cluster on this machine: a head without CPUs (it holds the driver's objects) and one worker
    node of two CPUs, so every task runs there. Skips without the ray extra. The modules using it set
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER before ray is first imported (nodes listen on 127.0.0.1 only)."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install -e .[ray])")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture
def mnist_dir(tmp_path: Path) -> Path:
    """A data root holding mnist/ with synthetic IDX files, usable as --data-dir."""
    write_mnist_folder(tmp_path / "data" / "mnist")
    return tmp_path / "data"


@pytest.fixture
def checkpoint(tmp_path: Path, mnist_dir: Path) -> Path:
    """A LeNet-300-100 trained 2 epochs on `mnist_dir` (the searches start from it)."""
    torch.manual_seed(0)
    fast = LatencyConfig(threads=(1,), repeats=2, single_calls=20)
    ds.train("lenet-300-100", "mnist", epochs=2, out=tmp_path / "base", data_dir=mnist_dir, device="cpu",
             latency=fast)
    return tmp_path / "base/artifacts/mnist-lenet-300-100/model.safetensors"


def cli_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run the `deepshrink` entry point in-process: it must exit 2 with one stderr line, which is returned."""
    monkeypatch.setattr(sys, "argv", ["deepshrink", *args])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert e.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def trained_variant(data: DataSplits, name: str, epochs: int = 2) -> Variant:
    """A registry model trained briefly on `data` (seeded), as a step's input variant."""
    torch.manual_seed(0)
    model = create_model(name, data.input_shape, data.num_classes)
    fit(model, data, TrainConfig(epochs=epochs, lr=0.05))
    man = Manifest(model=name, dataset="mnist", input_shape=list(data.input_shape), num_classes=10,
                   mean=data.mean, std=data.std)
    return Variant("v", model, man)
