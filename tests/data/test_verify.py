"""`deepshrink data verify` on synthetic MNIST folders: structure, counts, checksum status, bad files."""

import gzip
from pathlib import Path

import numpy as np
import pytest

from deepshrink.data.verify import verify
from deepshrink.errors import UserError

from conftest import cli_error, write_idx, write_mnist_folder

STEMS = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


@pytest.fixture(autouse=True)
def _no_other_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only --data-dir is searched: no $DEEPSHRINK_DATA, an empty user cache."""
    monkeypatch.delenv("DEEPSHRINK_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_synthetic_mnist_is_well_formed_but_not_canonical(mnist_dir: Path) -> None:
    reports = verify("mnist", mnist_dir)
    assert [Path(r.file).name for r in reports] == [f"{s}.gz" for s in STEMS]
    assert all(Path(r.file).parent == mnist_dir / "mnist" for r in reports)
    assert [r.structure for r in reports] == ["ok"] * 4
    assert [r.samples for r in reports] == [300, 300, 100, 100]
    assert [r.checksum for r in reports] == ["non-canonical copy"] * 4
    train_labels, test_labels = reports[1], reports[3]
    assert len(train_labels.class_counts) == 10 and sum(train_labels.class_counts) == 300
    assert sum(test_labels.class_counts) == 100
    assert reports[0].class_counts == [] and reports[2].class_counts == []  # images have no class counts


def test_class_counts_are_the_label_histogram(tmp_path: Path) -> None:
    folder = write_mnist_folder(tmp_path / "data" / "mnist", n_train=20, n_test=10)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.array([0, 0, 0, 1, 9, 9, 2, 2, 2, 2], np.uint8))
    reports = verify("mnist", tmp_path / "data")
    assert reports[3].class_counts == [3, 1, 4, 0, 0, 0, 0, 0, 0, 2]


def test_raw_idx_folder_by_path_has_unknown_checksum(tmp_path: Path) -> None:
    folder = write_mnist_folder(tmp_path / "digits", n_train=20, n_test=10, gz=False)
    reports = verify(f"idx:{folder}")
    assert [Path(r.file).name for r in reports] == STEMS
    assert [r.samples for r in reports] == [20, 20, 10, 10]
    assert [r.checksum for r in reports] == ["unknown"] * 4  # no canonical sums for a custom folder


def _problems(mnist_dir: Path) -> dict[str, str]:
    return {Path(r.file).name: r.structure for r in verify("mnist", mnist_dir) if r.structure != "ok"}


def test_every_bad_file_is_reported_on_its_own(mnist_dir: Path) -> None:
    """A truncated IDX, a truncated gzip and a count mismatch: three problems, each on its file."""
    folder = mnist_dir / "mnist"
    path = folder / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))  # valid gzip, short IDX data
    path = folder / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(99, np.uint8))
    problems = _problems(mnist_dir)
    assert problems["t10k-images-idx3-ubyte.gz"].startswith("truncated IDX data")
    assert problems["train-labels-idx1-ubyte.gz"].startswith("corrupt or truncated gzip")
    assert set(problems) == {"t10k-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"}  # t10k images unreadable:
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((100, 28, 28), np.uint8))  # now comparable
    assert _problems(mnist_dir)["t10k-labels-idx1-ubyte.gz"] == "99 labels for 100 images"


def test_cli_lists_every_problem_then_exits_2(mnist_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    for stem in ("train-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (mnist_dir / "mnist" / stem).write_bytes(b"\x1f\x8bnot really")
    line = cli_error(monkeypatch, capsys, "data", "verify", "mnist", "--data-dir", str(mnist_dir))
    assert line.startswith("error: 2 dataset file(s) with problems")
    assert len(_problems(mnist_dir)) == 2


def test_missing_file_unknown_and_absent_datasets(mnist_dir: Path, tmp_path: Path) -> None:
    (mnist_dir / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    assert _problems(mnist_dir) == {"t10k-labels-idx1-ubyte": "missing (nor .gz)"}
    with pytest.raises(UserError, match="unknown dataset 'svhn'"):
        verify("svhn", mnist_dir)
    with pytest.raises(UserError, match="not found") as e:
        verify("mnist", tmp_path / "empty")
    assert "download failed" not in str(e.value)  # verify never downloads
