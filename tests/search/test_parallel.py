"""Concurrent trials (issue #28): `jobs` trials asked at once and told in order, evaluated in a spawned
pool or as Ray tasks. One seed and one `jobs` must draw the same trials, with the same measured bytes,
on either executor; bad options are one line."""

import csv
import json
import os
import threading
import time
from pathlib import Path

import pytest
import torch

# Every Ray node these tests start listens on 127.0.0.1 only (read when ray is first imported).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import deepshrink as ds
from deepshrink.checkpoint import load_checkpoint
from deepshrink.errors import UserError
from deepshrink.measure.latency import LatencyConfig
from deepshrink.search import SearchOptions, SearchSpace, parse_budget, run_search
from deepshrink.search.recipe import recipe_search
from deepshrink.study.cache import Prefixes, realize
from deepshrink.study.recipe import load_recipe
from deepshrink.variant import Variant

from conftest import cli_error, write_mnist_folder

try:  # an optional extra (pip install -e .[ray])
    import ray
    from ray.cluster_utils import Cluster
except ImportError:
    ray = None

SMALL = SearchSpace(templates=("dc", "pq"), prune_epochs=(1,), cluster_epochs=(0,))
# drop<=100: no trial is stopped early on this tiny data (a bytes search queues two stretched seeds at
# 95 %+ sparsity after the hand-tuned one, which one epoch cannot retrain)
BUDGET = parse_budget("drop<=100", minimize="bytes")
TRIALS, JOBS = 4, 2  # two batches: the second drawn after the first batch is told
SEED = 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint, data dir) shared by this module's searches."""
    root = tmp_path_factory.mktemp("parallel")
    write_mnist_folder(root / "data" / "mnist")
    torch.manual_seed(0)
    fast = LatencyConfig(threads=(1,), repeats=2, single_calls=20)
    ds.train("lenet-300-100", "mnist", epochs=2, out=root / "base", data_dir=root / "data", device="cpu",
             latency=fast)
    return root / "base/artifacts/mnist-lenet-300-100/model.safetensors", root / "data"


def _search(trained: tuple[Path, Path], out: Path, **kwargs: object) -> None:
    checkpoint, data = trained
    opts = SearchOptions(**{"trials": TRIALS, "seed": SEED, "space": SMALL, "device": "cpu", "quiet": True,
                            "jobs": JOBS, **kwargs})  # type: ignore[arg-type]
    run_search(checkpoint, BUDGET, out, opts, data_dir=data)


def _trials(out: Path) -> list[dict[str, str]]:
    """trials.csv without what the clock decides."""
    with (out / "trials.csv").open(newline="") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def pooled(trained: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local search of `JOBS` spawned workers: the reference the other runs must match."""
    out = tmp_path_factory.mktemp("pooled") / "search"
    _search(trained, out)
    return out


def test_local_pool_draws_the_same_trials_again(trained: tuple[Path, Path], pooled: Path, tmp_path: Path) -> None:
    rows = _trials(pooled)
    assert [int(r["number"]) for r in rows] == list(range(TRIALS))
    assert rows[0]["seeded_from"] and any(r["state"] == "COMPLETE" for r in rows)
    assert all(float(r["bytes"]) > 0 for r in rows if r["state"] == "COMPLETE")
    int8 = [r["pipeline"] for r in rows if "quantize" in r["pipeline"]]  # their bytes do not hang on a timing
    assert int8 and all("deploy=smallest" in p for p in int8)
    prov = json.loads((pooled / "provenance.json").read_text())["search"]
    assert prov["executor"] == "local" and prov["jobs"] == JOBS
    _search(trained, tmp_path / "again")
    assert _trials(tmp_path / "again") == rows  # pipelines, params and every measured figure


def test_a_step_two_workers_reach_together_is_computed_once(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """The per-key lock in `realize`: the second caller waits and loads what the first saved (flock
    locks are per open file, so two threads contend as two processes would)."""
    calls: list[str] = []

    def slow(v: Variant, text: str) -> Variant:
        calls.append(text)
        time.sleep(0.5)
        return v

    model, manifest = load_checkpoint(trained[0])
    base = Variant("base", model, manifest)
    got: list[Variant] = []

    def one() -> None:
        memo = Prefixes()
        memo.done[()] = (base, "root", 0.0)
        got.append(realize(("s",), memo, slow, tmp_path / "cache", lambda s: "v", str, "fp", 0, False)[0])

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["s"] and len(got) == 2


@pytest.mark.parametrize(("args", "needle"), [
    (["--jobs", "0"], "--jobs 0: must be >= 1"),
    (["--executor", "dask"], "--executor 'dask': unknown"),
    (["--address", "10.0.0.1:6379"], "only with --executor ray"),
])
def test_cli_bad_executor_options_exit_2_before_reading_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str], args: list[str],
                                                                 needle: str) -> None:
    line = cli_error(monkeypatch, capsys, "search", str(tmp_path / "none.safetensors"), "--minimize", "bytes", *args)
    assert needle in line


def test_a_two_node_ray_cluster_draws_and_measures_the_local_pools_trials(trained: tuple[Path, Path], pooled: Path,
                                                                          two_nodes: "Cluster", tmp_path: Path) -> None:
    out = tmp_path / "ray"
    _search(trained, out, executor="ray", address=two_nodes.address)
    assert _trials(out) == _trials(pooled)
    prov = json.loads((out / "provenance.json").read_text())["search"]
    assert prov["executor"] == "ray" and prov["ray_address"] == two_nodes.address and prov["trial_nodes"]
    assert not ray.is_initialized()  # the search connected, so it disconnected


RECIPE = """
name = "s"
[study]
datasets = ["mnist"]
models = ["lenet-300-100"]
[search]
budget = "drop<=90"
minimize = "bytes"
"""


def test_recipe_search_section_takes_executor_and_jobs(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(RECIPE + 'executor = "local"\njobs = 2\n')
    plan = recipe_search(load_recipe(str(path)))
    assert plan is not None and (plan.opts.executor, plan.opts.jobs) == ("local", 2)
    path.write_text(RECIPE + "jobs = 0\n")
    with pytest.raises(UserError, match=r"s\.toml: search: --jobs 0: must be >= 1"):
        recipe_search(load_recipe(str(path)))


def test_a_pareto_search_replays_no_intermediate_values(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """Optuna's trial.report raises on a two-objective study: the replay skips it, so a checked step
    (the seeded pipeline prunes, then clusters) no longer fails the trial."""
    checkpoint, data = trained
    opts = SearchOptions(trials=1, space=SMALL, device="cpu", quiet=True)
    run_search(checkpoint, parse_budget("drop<=95", pareto="bytes,drop"), tmp_path / "p", opts, data_dir=data)
    (row,) = _trials(tmp_path / "p")
    assert row["state"] == "COMPLETE" and row["seeded_from"], row["notes"]


def test_a_batch_killed_mid_flight_resumes_to_exactly_the_trial_count(trained: tuple[Path, Path], pooled: Path,
                                                                      tmp_path: Path) -> None:
    """A killed search leaves its whole batch running: each is queued again, and the resumed search
    runs only what the count still asks for, nothing finished twice."""
    import shutil

    import optuna

    from deepshrink.search.study import open_study, trials_done

    out = tmp_path / "killed"
    shutil.copytree(pooled, out)
    study = open_study(out, BUDGET, SEED)
    for _ in range(JOBS):  # as a killed batch leaves them: RUNNING
        study.ask({"template": study.trials[0].distributions["template"]})
    _search(trained, out, trials=TRIALS + 1)
    study = open_study(out, BUDGET, SEED)
    trials = [t for t in study.trials if t.state != optuna.trial.TrialState.WAITING]  # JOBS - 1 queued for later
    assert trials_done(study) == TRIALS + 1 and len(trials) == len(_trials(out)) == TRIALS + JOBS + 1
    assert [t.state for t in trials[TRIALS:TRIALS + JOBS]] == [optuna.trial.TrialState.FAIL] * JOBS
    assert trials[-1].params["template"] == trials[TRIALS].params["template"]  # the first of them, again
    assert _trials(out)[:TRIALS] == _trials(pooled)
