"""provenance.json: run facts collected by the run-level write, dataset entries merged across writes."""

import json
import re
import sys
from pathlib import Path

from deepshrink import provenance

from conftest import make_splits


def _read(run: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((run / "provenance.json").read_text())


def test_run_level_write_collects_code_versions_and_machine(tmp_path: Path) -> None:
    provenance.write(tmp_path, device="cpu", seeds={"train": 3}, extra={"jobs": 2})
    prov = _read(tmp_path)
    assert prov["code"]["commit"] == "unknown" or re.fullmatch(r"[0-9a-f]{40}", prov["code"]["commit"])
    assert prov["versions"]["python"] == sys.version.split()[0]
    assert {"torch", "onnx", "onnxruntime", "numpy", "deepshrink"} <= set(prov["versions"])
    assert prov["versions"]["torch"] != "not installed"
    assert prov["machine"]["cores"] >= 1 and prov["machine"]["torch_threads"] >= 1 and prov["machine"]["cpu"]
    assert prov["device"] == "cpu" and prov["seeds"] == {"train": 3} and prov["jobs"] == 2
    assert prov["argv"] == sys.argv and prov["data"] == {}
    assert [p.name for p in tmp_path.iterdir()] == ["provenance.json"]  # atomic: no temp file left


def test_data_writes_add_datasets_and_keep_the_run_facts(tmp_path: Path) -> None:
    provenance.write(tmp_path, device="cpu", seeds={"train": 0})
    run_facts = {k: v for k, v in _read(tmp_path).items() if k != "data"}
    mnist = make_splits(n_train=8, n_val=4, n_test=4, seed=1)
    cifar = make_splits(n_train=8, n_val=4, n_test=4, shape=(3, 32, 32), name="cifar10", seed=2)
    provenance.write(tmp_path, data=mnist)
    provenance.write(tmp_path, data=cifar)
    prov = _read(tmp_path)
    assert {k: v for k, v in prov.items() if k != "data"} == run_facts
    assert set(prov["data"]) == {"mnist", "cifar10"}
    assert prov["data"]["mnist"] == {"origin": "synthetic", "fingerprint": "synthetic-1",
                                     "mean": mnist.mean, "std": mnist.std}
    assert prov["data"]["cifar10"]["fingerprint"] == "synthetic-2" and len(prov["data"]["cifar10"]["mean"]) == 3


def test_run_level_write_keeps_existing_data_entries(tmp_path: Path) -> None:
    mnist = make_splits(n_train=8, n_val=4, n_test=4)
    provenance.write(tmp_path, data=mnist, device="cpu", seeds={"train": 0})
    provenance.write(tmp_path, device="cuda", seeds={"train": 5})  # e.g. a resumed study on another device
    prov = _read(tmp_path)
    assert prov["device"] == "cuda" and prov["seeds"] == {"train": 5}  # this invocation's facts
    assert prov["data"]["mnist"]["fingerprint"] == mnist.fingerprint


def test_a_data_write_replaces_that_datasets_entry(tmp_path: Path) -> None:
    provenance.write(tmp_path, data=make_splits(n_train=8, n_val=4, n_test=4, seed=1))
    provenance.write(tmp_path, data=make_splits(n_train=8, n_val=4, n_test=4, seed=2))
    assert _read(tmp_path)["data"]["mnist"]["fingerprint"] == "synthetic-2"


def test_read_of_absent_or_corrupt_file_is_empty(tmp_path: Path) -> None:
    assert provenance.read(tmp_path / "provenance.json") == {}
    (tmp_path / "provenance.json").write_text('{"device": "cpu", "data": {')
    assert provenance.read(tmp_path / "provenance.json") == {}
    # and a write over a corrupt file starts afresh instead of failing
    provenance.write(tmp_path, data=make_splits(n_train=8, n_val=4, n_test=4))
    assert set(_read(tmp_path)) == {"data"}


def test_config_hash_is_stable_and_ignores_dict_key_order() -> None:
    a = {"model": "lenet-5", "train": {"epochs": 3, "lr": 0.05}, "steps": ["prune", "quantize"]}
    b = {"steps": ["prune", "quantize"], "train": {"lr": 0.05, "epochs": 3}, "model": "lenet-5"}
    h = provenance.config_hash(a)
    assert h == provenance.config_hash(b) and re.fullmatch(r"[0-9a-f]{10}", h)
    assert provenance.config_hash(a) == h  # the same on every call (no salt, no id())
    assert provenance.config_hash(a, length=16).startswith(h)
    assert provenance.config_hash({**a, "steps": ["quantize", "prune"]}) != h  # list order matters
    assert provenance.config_hash({**a, "train": {"epochs": 4, "lr": 0.05}}) != h
    assert provenance.config_hash({"p": Path("/x")}) == provenance.config_hash({"p": "/x"})  # default=str
