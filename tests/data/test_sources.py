"""Lookup order, offline failure message, and pooch downloads against a loopback HTTP server."""

import hashlib
import http.server
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from deepshrink.data import load_dataset, sources
from deepshrink.errors import UserError

from conftest import write_mnist_folder


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No $DEEPSHRINK_DATA and an empty user cache inside tmp_path."""
    monkeypatch.delenv("DEEPSHRINK_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def test_lookup_order(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = isolated / "a"
    b = isolated / "b"
    write_mnist_folder(a / "mnist", n_train=30)
    write_mnist_folder(b / "mnist", n_train=40)
    monkeypatch.setenv("DEEPSHRINK_DATA", str(b))
    assert load_dataset("mnist", a, val_size=5).train_x.shape[0] == 25  # --data-dir wins
    assert load_dataset("mnist", None, val_size=5).train_x.shape[0] == 35  # then $DEEPSHRINK_DATA


def test_offline_not_found_names_where_it_looked(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(source: sources.DatasetSource, progress: bool = True) -> Path:
        raise UserError("download failed")

    monkeypatch.setattr("deepshrink.data.download", fail)
    with pytest.raises(UserError) as e:
        load_dataset("mnist", isolated / "nowhere")
    msg = str(e.value)
    assert "--data-dir" in msg and str(isolated / "nowhere") in msg and "user cache" in msg
    assert "\n" not in msg


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", root
    server.shutdown()


def _source_for(url: str, files: dict[str, bytes], corrupt: str = "") -> sources.DatasetSource:
    remotes = tuple(sources.Remote(n, (url + n,), "sha256:" + hashlib.sha256(d if n != corrupt else b"x").hexdigest())
                    for n, d in files.items())
    return sources.DatasetSource("mnist", "mnist", sources.SOURCES["mnist"].layouts, remotes)


def test_download_ok_and_then_found(isolated: Path, http_root: tuple[str, Path],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    url, root = http_root
    write_mnist_folder(root, n_train=20, n_test=10)
    files = {p.name: p.read_bytes() for p in root.iterdir()}
    monkeypatch.setitem(sources.SOURCES, "mnist", _source_for(url, files))
    d = load_dataset("mnist", None, val_size=5)
    assert d.train_x.shape[0] == 15 and "cache" in d.origin


def test_download_checksum_mismatch_leaves_nothing(isolated: Path, http_root: tuple[str, Path],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    url, root = http_root
    write_mnist_folder(root, n_train=20, n_test=10)
    files = {p.name: p.read_bytes() for p in root.iterdir()}
    bad = "train-images-idx3-ubyte.gz"
    monkeypatch.setitem(sources.SOURCES, "mnist", _source_for(url, files, corrupt=bad))
    with pytest.raises(UserError, match="checksum mismatch"):
        load_dataset("mnist", None)
    assert not (sources.cache_dir() / "mnist" / bad).exists()
