"""`deepshrink data verify`: structure, counts and canonical-checksum status of each dataset file; every
file is checked and each problem reported on its own file (a bad file does not hide the others)."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepshrink.data import cifar, idx
from deepshrink.data.sources import SOURCES, DatasetSource, digest, locate, not_found_message
from deepshrink.errors import UserError


@dataclass
class FileReport:
    file: str
    structure: str  # "ok", or the problem with this file
    samples: int
    class_counts: list[int]
    checksum: str  # "canonical", "non-canonical copy", or "unknown"


def _status(source: DatasetSource, member: str, data: bytes) -> str:
    want = source.canonical.get(member)
    if want is None:
        return "unknown"
    algo, hexd = want.split(":", 1)
    return "canonical" if digest(data, algo) == hexd else "non-canonical copy"


def _counts(labels: np.ndarray) -> list[int]:
    return [int(c) for c in np.bincount(labels.astype(np.int64), minlength=10)]


def _checked(file: str, check: Callable[[], FileReport]) -> FileReport:
    """One file's report; its problem (a UserError naming it) is the report's structure, not an abort."""
    try:
        return check()
    except UserError as e:
        return FileReport(file, str(e).removeprefix(f"{file}: "), 0, [], "unknown")


def _verify_idx_folder(source: DatasetSource, folder: Path) -> list[FileReport]:
    reports: list[FileReport] = []
    arrays: dict[str, np.ndarray] = {}
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        path = idx.find_idx_file(folder, stem)
        if path is None:
            reports.append(FileReport(str(folder / stem), "missing (nor .gz)", 0, [], "unknown"))
            continue

        def check(path: Path = path, stem: str = stem) -> FileReport:
            data = idx.read_bytes(path)
            arr = arrays[stem] = idx.parse_idx(data, str(path), expect_ndim=3 if "images" in stem else 1)
            counts = _counts(arr) if "labels" in stem else []
            return FileReport(str(path), "ok", len(arr), counts, _status(source, stem, data))

        reports.append(_checked(str(path), check))
    # Cross-file: each labels file must hold one label per image of its split.
    for split in ("train", "t10k"):
        images, labels = arrays.get(f"{split}-images-idx3-ubyte"), arrays.get(f"{split}-labels-idx1-ubyte")
        if images is not None and labels is not None and len(images) != len(labels):
            i = next(k for k, r in enumerate(reports) if f"{split}-labels" in r.file)
            reports[i].structure = f"{len(labels)} labels for {len(images)} images"
    return reports


def _verify_cifar(source: DatasetSource, path: Path) -> list[FileReport]:
    names = [*cifar.TRAIN_BATCHES, cifar.TEST_BATCH]
    if path.is_dir():
        members = {n: (path / n).read_bytes() for n in names if (path / n).is_file()}
    else:
        binary = "binary" in path.name
        wanted = [f"{n}.bin" for n in names] if binary else names
        try:
            members = cifar._read_members(path, wanted)
        except UserError as e:
            return [FileReport(str(path), str(e).removeprefix(f"{path}: "), 0, [], "unknown")]
    reports = []
    for name in names:
        key = next((k for k in members if k.startswith(name)), None)
        if key is None:
            reports.append(FileReport(f"{path}:{name}", "missing", 0, [], "unknown"))
            continue

        def check(name: str = key) -> FileReport:
            data = members[name]
            parse = cifar.parse_binary if name.endswith(".bin") else cifar.load_batch
            x, y = parse(data, f"{path}:{name}")
            return FileReport(f"{path}:{name}", "ok", len(x), _counts(y), _status(source, name, data))

        reports.append(_checked(f"{path}:{key}", check))
    return reports


def verify(name: str, data_dir: Path | None = None) -> list[FileReport]:
    if name.startswith("idx:"):
        return _verify_idx_folder(DatasetSource(name, "", (), ()), Path(name[4:]))
    if name not in SOURCES:
        raise UserError(f"unknown dataset {name!r} (known: {', '.join(sorted(SOURCES))}, idx:PATH)")
    source = SOURCES[name]
    found = locate(source, data_dir)
    if found is None:
        raise UserError(not_found_message(source, data_dir).replace(" and the download failed", ""))
    path, _ = found
    return _verify_idx_folder(source, path) if name == "mnist" else _verify_cifar(source, path)
