"""Executors: the live view relayed from workers, and the process pool on tiny generated data."""

import json
from pathlib import Path

import pytest

from deepshrink.data import load_dataset
from deepshrink.errors import UserError
from deepshrink.progress import Progress
from deepshrink.results import read_rows
from deepshrink.study import executor as runner
from deepshrink.study.run import run_study

from artifact_check import check_rows_against_artifacts
from smoke_recipe import REAL_RECIPE


def test_worker_progress_is_relayed_to_the_parent() -> None:
    import queue

    class Recorder(Progress):
        def __init__(self) -> None:
            super().__init__(enabled=False)
            self.events: list[tuple] = []

        def add(self, description: str, total: int) -> int:
            self.events.append(("add", description, total))
            return 7

        def update(self, task: int, advance: int = 0, info: str | None = None,
                   description: str | None = None) -> None:
            self.events.append(("update", task, advance, info))

        def finish(self, task: int) -> None:
            self.events.append(("finish", task))

    parent = Recorder()
    q: queue.Queue = queue.Queue()
    with runner.Relay(q, parent):
        worker = runner.QueueProgress(q)
        t = worker.add("mnist lenet-5", 3)
        worker.update(t, advance=1, info="loss 0.1")
        worker.finish(t)
        worker.update(99, advance=1)  # a task the parent never saw is ignored
    assert [e[0] for e in parent.events] == ["add", "update", "finish"]
    assert parent.events[0][1].endswith("mnist lenet-5") and parent.events[1] == ("update", 7, 1, "loss 0.1")


POOL_RECIPE = REAL_RECIPE


def test_pool_of_two_jobs_gives_the_serial_results(tmp_path: Path, mnist_dir: Path) -> None:
    """`--jobs 2` (the built-in recipes' default): spawned workers, baselines then trees, rows written
    under the results lock; every variant ok with the very numbers one process gets."""
    recipe = tmp_path / "pool.toml"
    recipe.write_text(POOL_RECIPE)
    got = {}
    for jobs in (2, 1):
        out = tmp_path / f"jobs{jobs}"
        _, statuses = run_study(str(recipe), out, mnist_dir, "cpu", jobs=jobs, quiet=True)
        assert set(statuses.values()) == {"ok"} and len(statuses) == 5
        rows = read_rows(out / "results.csv")
        got[jobs] = {r["variant"]: (r["accuracy_pct"], r["size_bytes"], r["params_nonzero"]) for r in rows}
        assert not list(out.glob(".*.tmp")) and (out / "report.html").exists()
    assert got[2] == got[1]
    # Every size is its artifact's bytes, every accuracy that of the model the artifact decodes to.
    data = load_dataset("mnist", mnist_dir, val_size=30)
    check_rows_against_artifacts(tmp_path / "jobs2", read_rows(tmp_path / "jobs2" / "results.csv"), data)
    assert {Path(r["artifact"]).suffix for r in read_rows(tmp_path / "jobs2" / "results.csv")} >= {".onnx", ".dsparse"}
    prov = json.loads((tmp_path / "jobs2" / "provenance.json").read_text())
    assert prov["jobs"] == 2 and "mnist" in prov["data"]


def test_local_executor_refuses_zero_jobs() -> None:
    with pytest.raises(UserError, match="--jobs 0"):
        runner.LocalExecutor(0)
