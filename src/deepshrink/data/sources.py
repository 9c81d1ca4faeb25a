"""Where dataset files are looked up, how they are fetched, and how they are verified.

Lookup order (SPEC §3): --data-dir, $DEEPSHRINK_DATA, the user cache (platformdirs), then a
pooch download from the canonical mirrors into the cache, checked against published hashes.
"""

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import platformdirs

from deepshrink.data import cifar, idx
from deepshrink.errors import UserError

ArrayDict = dict[str, np.ndarray]


@dataclass(frozen=True)
class Remote:
    """One downloadable file: mirrors to try and the published hash of the downloaded bytes."""

    name: str
    urls: tuple[str, ...]
    known_hash: str  # pooch syntax, always "sha256:..." (checked in tests)


@dataclass(frozen=True)
class DatasetSource:
    """A dataset's on-disk layouts (tried in order) and its canonical content checksums."""

    name: str
    subdir: str
    # (relative path inside a data root, loader) — first layout present wins.
    layouts: tuple[tuple[str, Callable[[Path], ArrayDict]], ...]
    remotes: tuple[Remote, ...]
    canonical: dict[str, str] = field(default_factory=dict)  # decompressed member -> "algo:hex"
    classes: int = 10  # a named dataset knows its labels: 0..classes-1, whatever its files say


_MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
# SHA-256 of the published gzip files (SPEC §3: every download is checked with sha256).
_MNIST_GZ_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}

SOURCES: dict[str, DatasetSource] = {
    "mnist": DatasetSource(
        name="mnist",
        subdir="mnist",
        layouts=(("mnist", idx.load_idx_folder), (".", idx.load_idx_folder)),
        remotes=tuple(Remote(n, tuple(m + n for m in _MNIST_MIRRORS), f"sha256:{h}")
                        for n, h in _MNIST_GZ_SHA256.items()),
        canonical={
            "train-images-idx3-ubyte": "sha256:ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "sha256:65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "sha256:0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "sha256:ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
    ),
    "cifar10": DatasetSource(
        name="cifar10",
        subdir="cifar10",
        layouts=(
            ("cifar10/cifar-10-python.tar.gz", cifar.load_python),
            (f"cifar10/{cifar.PY_DIR}", cifar.load_python),
            ("cifar10/cifar-10-binary.tar.gz", cifar.load_binary),
            ("cifar-10-python.tar.gz", cifar.load_python),
            (cifar.PY_DIR, cifar.load_python),
            ("cifar-10-binary.tar.gz", cifar.load_binary),
        ),
        remotes=(Remote("cifar-10-python.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
                        "sha256:6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"),),
        # torchvision's published md5 sums of the original python batches.
        canonical={
            "data_batch_1": "md5:c99cafc152244af753f735de768cd75f",
            "data_batch_2": "md5:d4bba439e000b95fd0a9bffe97cbabec",
            "data_batch_3": "md5:54ebc095f3ab1f0389bbae665268c751",
            "data_batch_4": "md5:634d18415352ddfa80567beed471001a",
            "data_batch_5": "md5:482c414d41f54cd18b22e5b47cb7c3cb",
            "test_batch": "md5:40351d587109b95175f43aff81a1287e",
        },
    ),
}


def cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir("deepshrink")) / "data"


def search_roots(data_dir: Path | None) -> list[tuple[str, Path]]:
    """(origin, folder) pairs in lookup order."""
    roots: list[tuple[str, Path]] = []
    if data_dir is not None:
        roots.append(("--data-dir", Path(data_dir)))
    env = os.environ.get("DEEPSHRINK_DATA")
    if env:
        roots.append(("$DEEPSHRINK_DATA", Path(env)))
    roots.append(("user cache", cache_dir()))
    return roots


def locate(source: DatasetSource, data_dir: Path | None) -> tuple[Path, Callable[[Path], ArrayDict]] | None:
    for _, root in search_roots(data_dir):
        for rel, loader in source.layouts:
            p = root / rel
            if source.name == "mnist":
                if p.is_dir() and idx.find_idx_file(p, "train-images-idx3-ubyte") is not None:
                    return p, loader
            elif p.exists():
                return p, loader
    return None


def download(source: DatasetSource, progress: bool = True) -> Path:
    """Fetch every remote file of `source` into the cache; a file failing its hash is not kept."""
    import pooch

    pooch.get_logger().setLevel("WARNING")  # its per-file INFO lines would break the one-line error rule
    target = cache_dir() / source.subdir
    for remote in source.remotes:
        last: Exception | None = None
        for url in remote.urls:
            try:
                pooch.retrieve(url, known_hash=remote.known_hash, fname=remote.name, path=target,
                               progressbar=progress)
                last = None
                break
            except ValueError as e:  # hash mismatch: pooch has already deleted the file
                raise UserError(f"{url}: checksum mismatch, download discarded ({e})") from None
            except Exception as e:  # network failure: try the next mirror
                last = e
        if last is not None:
            raise UserError(f"{remote.name}: download failed from {', '.join(remote.urls)} ({last})")
    return target


def not_found_message(source: DatasetSource, data_dir: Path | None) -> str:
    looked = "; ".join(f"{origin} {root}" for origin, root in search_roots(data_dir))
    return (f"dataset {source.name!r} not found (looked in {looked}) and the download failed; "
            f"pass --data-dir DIR or set DEEPSHRINK_DATA to a folder holding {source.subdir}/")


def digest(data: bytes, algo: str) -> str:
    return hashlib.new(algo, data).hexdigest()
