"""The Ray executor against a real Ray (SPEC §11): a local Ray, a two-node cluster reached by address,
and a worker node killed mid-study. Every run must give the local executor's very numbers."""

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# Every Ray node these tests start listens on 127.0.0.1 only (read when ray is first imported).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from deepshrink.errors import UserError
from deepshrink.results import read_rows
from deepshrink.study.ray_executor import RayExecutor
from deepshrink.study.run import run_study

from conftest import write_mnist_folder
from smoke_recipe import REAL_RECIPE

try:  # an optional extra (pip install -e .[ray]): without it only the first test runs
    import ray
    from ray.cluster_utils import Cluster
except ImportError:
    ray = None
needs_ray = pytest.mark.skipif(ray is None, reason="ray is not installed (pip install -e .[ray])")


def test_without_ray_the_ray_executor_is_one_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(UserError, match=r"pip install -e \.\[ray\]"):
        RayExecutor("10.0.0.1:6379")

# Real steps only: the test-only `test.scale` step is registered in this process, not in Ray's workers.
RAY_RECIPE = REAL_RECIPE
VARIANTS = 5


def _numbers(out: Path) -> dict[str, tuple[str, str, str]]:
    return {r["variant"]: (r["accuracy_pct"], r["size_bytes"], r["params_nonzero"])
            for r in read_rows(out / "results.csv")}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, tuple[str, str, str]]]:
    """(recipe, data dir, the local executor's numbers): the reference every Ray run must match."""
    root = tmp_path_factory.mktemp("ray")
    write_mnist_folder(root / "data" / "mnist")
    recipe = root / "ray.toml"
    recipe.write_text(RAY_RECIPE)
    _, statuses = run_study(str(recipe), root / "local", root / "data", "cpu", jobs=1, quiet=True)
    assert set(statuses.values()) == {"ok"} and len(statuses) == VARIANTS
    return recipe, root / "data", _numbers(root / "local")


def _check_run(out: Path, statuses: dict[str, str], reference: dict[str, tuple[str, str, str]]) -> None:
    assert statuses == {vid: "ok" for vid in reference}
    assert _numbers(out) == reference
    assert {r["variant"] for r in read_rows(out / "latency.csv")} == set(reference)
    assert {r["variant"] for r in read_rows(out / "layers.csv")} == set(reference)
    for r in read_rows(out / "results.csv"):
        assert (out / r["artifact"]).is_file() and (out / r["checkpoint"]).is_file()
    assert (out / "report.html").exists() and not list(out.rglob(".*.tmp"))


@pytest.fixture
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@needs_ray
def test_local_ray_gives_the_local_executors_results(study: tuple, local_ray: None, tmp_path: Path) -> None:
    """`ray.init(num_cpus=2)`: units as tasks, rows and files merged by the driver; a rerun resumes."""
    recipe, data, reference = study
    out = tmp_path / "ray"
    _, statuses = run_study(str(recipe), out, data, "cpu", quiet=True, executor="ray")
    _check_run(out, statuses, reference)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["executor"] == "ray" and "mnist" in prov["data"]
    assert any((out / "cache").glob("*/variant.json"))  # the baseline and steps, cached on the driver
    t0 = time.monotonic()
    _, again = run_study(str(recipe), out, data, "cpu", quiet=True, executor="ray")
    assert again == statuses and time.monotonic() - t0 < 20  # nothing left to run: no task at all
    assert ray.is_initialized()  # a Ray the caller started is left connected


@needs_ray
def test_a_task_that_fails_for_good_fails_its_units_variants(study: tuple, local_ray: None, tmp_path: Path) -> None:
    """A task that raises (not retried) or whose worker dies past its retries: its unit's variants are
    recorded `failed: <reason>` and the driver goes on."""
    from deepshrink.progress import Progress
    from deepshrink.study.plan import StudyOptions, plan, units
    from deepshrink.study.ray_executor import _Driver
    from deepshrink.study.recipe import load_recipe

    r = load_recipe(str(study[0]))
    tree = next(u for u in units(plan(r)) if u.tree)
    driver = _Driver(ray, r, StudyOptions(out=tmp_path), Progress(enabled=False), 0)

    @ray.remote(max_retries=0)
    def raises() -> None:
        raise FloatingPointError("non-finite loss")

    @ray.remote(max_retries=1)
    def dies() -> None:
        os._exit(1)

    assert driver._finish(raises.remote(), tree) == [(w.vid, "failed: FloatingPointError: non-finite loss")
                                                     for w in tree.works]
    died = driver._finish(dies.remote(), tree)
    assert [vid for vid, _ in died] == [w.vid for w in tree.works] and "worker" in died[0][1].lower()
    rows = read_rows(tmp_path / "results.csv")
    assert [r["status"] for r in rows] == [s for _, s in died]


@needs_ray
def test_two_node_cluster_by_address_from_the_command_line(study: tuple, two_nodes: "Cluster", tmp_path: Path) -> None:
    recipe, data, reference = study
    out = tmp_path / "cluster"
    cmd = [sys.executable, "-c", "from deepshrink.cli import main; main()", "study", str(recipe), "--out", str(out),
           "--data-dir", str(data), "--device", "cpu", "--quiet", "--executor", "ray", "--address", two_nodes.address]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{VARIANTS} ok, 0 failed" in done.stdout
    _check_run(out, {r["variant"]: r["status"] for r in read_rows(out / "results.csv")}, reference)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["ray_address"] == two_nodes.address


@needs_ray
def test_a_worker_node_killed_mid_study_costs_only_a_retry(study: tuple, two_nodes: "Cluster", tmp_path: Path) -> None:
    """The node running the pipeline trees dies (no graceful exit); a replacement joins; Ray retries the
    lost tasks there and the study ends with every variant ok and the same numbers."""
    recipe, data, reference = study
    out = tmp_path / "killed"
    worker = next(iter(two_nodes.worker_nodes))
    ray.init(address=two_nodes.address, log_to_driver=False)  # here: Ray's nodes start only on the main thread
    got: dict[str, dict[str, str]] = {}
    runner = threading.Thread(target=lambda: got.update(statuses=run_study(
        str(recipe), out, data, "cpu", quiet=True, executor="ray")[1]), daemon=True)
    runner.start()
    deadline = time.monotonic() + 300  # generous: a loaded machine starts Ray workers slowly
    while not read_rows(out / "results.csv") and time.monotonic() < deadline:
        time.sleep(0.2)  # the baseline row lands: the trees go to the worker node
    time.sleep(0.5)
    rows_at_kill = len(read_rows(out / "results.csv"))
    two_nodes.add_node(num_cpus=2)
    two_nodes.remove_node(worker, allow_graceful=False)
    runner.join(timeout=600)
    assert not runner.is_alive(), "the study did not finish after the node was killed"
    assert 0 < rows_at_kill < VARIANTS  # the node died while pipelines were still running
    _check_run(out, got["statuses"], reference)


@needs_ray
def test_executor_options(study: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    """RAY_ADDRESS stands in for --address; an unknown executor or a stray --address is a user error."""
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert RayExecutor().describe() == {"executor": "ray", "ray_address": "10.0.0.1:6379"}
    assert RayExecutor("10.0.0.2:6379").address == "10.0.0.2:6379"
    recipe, data, _ = study
    with pytest.raises(UserError, match="--executor 'dask': unknown"):
        run_study(str(recipe), None, data, "cpu", quiet=True, executor="dask")
    with pytest.raises(UserError, match="only with --executor ray"):
        run_study(str(recipe), None, data, "cpu", quiet=True, address="10.0.0.1:6379")
