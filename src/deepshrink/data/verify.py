"""`deepshrink data verify`: structure, counts and canonical-checksum status of each dataset file."""

import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepshrink.data import cifar, idx
from deepshrink.data.sources import SOURCES, Source, digest, locate, not_found_message
from deepshrink.errors import UserError


@dataclass
class FileReport:
    file: str
    structure: str  # "ok" or the problem
    samples: int
    class_counts: list[int]
    checksum: str  # "canonical", "non-canonical copy", or "unknown"


def _status(source: Source, member: str, data: bytes) -> str:
    want = source.canonical.get(member)
    if want is None:
        return "unknown"
    algo, hexd = want.split(":", 1)
    return "canonical" if digest(data, algo) == hexd else "non-canonical copy"


def _counts(labels: np.ndarray) -> list[int]:
    return [int(c) for c in np.bincount(labels.astype(np.int64), minlength=10)]


def _verify_idx_folder(source: Source, folder: Path) -> list[FileReport]:
    reports = []
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        path = idx.find_idx_file(folder, stem)
        if path is None:
            raise UserError(f"{folder}: missing {stem}[.gz]")
        data = idx.read_bytes(path)
        arr = idx.parse_idx(data, str(path), expect_ndim=3 if "images" in stem else 1)
        counts = _counts(arr) if "labels" in stem else []
        reports.append(FileReport(str(path), "ok", len(arr), counts, _status(source, stem, data)))
    idx.load_idx_folder(folder)  # cross-file checks: image/label counts agree, labels in range
    return reports


def _verify_cifar(source: Source, path: Path) -> list[FileReport]:
    names = [*cifar.TRAIN_BATCHES, cifar.TEST_BATCH]
    if path.is_dir():
        members = {n: (path / n).read_bytes() for n in names if (path / n).is_file()}
    else:
        binary = "binary" in path.name
        wanted = [f"{n}.bin" for n in names] if binary else names
        members = cifar._read_members(path, wanted)
    reports = []
    for name, data in members.items():
        if name.endswith(".bin"):
            x, y = cifar.parse_binary(data, f"{path}:{name}")
        else:
            x, y = cifar.load_batch(data, f"{path}:{name}")
        reports.append(FileReport(f"{path}:{name}", "ok", len(x), _counts(y), _status(source, name, data)))
    if len(members) != len(names):
        raise UserError(f"{path}: {len(names) - len(members)} CIFAR-10 batches missing")
    return reports


def verify(name: str, data_dir: Path | None = None) -> list[FileReport]:
    if name.startswith("idx:"):
        return _verify_idx_folder(Source(name, "", (), ()), Path(name[4:]))
    if name not in SOURCES:
        raise UserError(f"unknown dataset {name!r} (known: {', '.join(sorted(SOURCES))}, idx:PATH)")
    source = SOURCES[name]
    found = locate(source, data_dir)
    if found is None:
        raise UserError(not_found_message(source, data_dir).replace(" and the download failed", ""))
    path, _ = found
    try:
        return _verify_idx_folder(source, path) if name == "mnist" else _verify_cifar(source, path)
    except tarfile.TarError as e:
        raise UserError(f"{path}: corrupt archive ({e})") from None
