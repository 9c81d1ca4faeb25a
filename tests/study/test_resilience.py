"""Nothing lost: a full disk leaves results.csv readable and the study resumable; a study SIGKILLed at a
random row (with --jobs 2: workers orphaned) resumes without recomputing a finished variant, and its
finished rows come back identical."""

import csv
import errno
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from deepshrink import checkpoint
from deepshrink.errors import UserError
from deepshrink.results import read_rows
from deepshrink.study.run import run_study

from smoke_recipe import CALLS, REAL_RECIPE, _recipe


def _ok_rows(out: Path) -> dict[str, dict[str, str]]:
    return {r["variant"]: r for r in read_rows(out / "results.csv") if r["status"] == "ok"}


def _stamps(out: Path, rows: dict[str, dict[str, str]]) -> dict[str, int]:
    return {v: (out / r["artifact"]).stat().st_mtime_ns for v, r in rows.items()}


def test_full_disk_leaves_readable_results_and_a_resumable_study(tmp_path: Path, mnist_dir: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up once the first pipeline step has run: every later write fails with ENOSPC."""
    real_write = checkpoint.write_all

    def full_disk(f: object, data: bytes) -> None:
        if CALLS:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(f, data)  # type: ignore[arg-type]

    monkeypatch.setattr(checkpoint, "write_all", full_disk)
    CALLS.clear()
    out = tmp_path / "run"
    with pytest.raises(UserError, match="no space left on device.*rerun to resume"):
        run_study(str(_recipe(tmp_path)), out, mnist_dir, "cpu", quiet=True)
    with (out / "results.csv").open(newline="") as f:  # intact: the old table or the new one, never half
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == ["baseline"] and rows[0]["status"] == "ok"
    assert not [p for p in out.rglob(".*.tmp")]  # no temp files left to fill the disk further
    before = _stamps(out, _ok_rows(out))
    monkeypatch.setattr(checkpoint, "write_all", real_write)  # space freed
    CALLS.clear()
    _, statuses = run_study(str(_recipe(tmp_path)), out, mnist_dir, "cpu", quiet=True)
    assert sorted(statuses.values()).count("ok") == 3  # baseline, half, half+quarter (broken fails by design)
    assert _stamps(out, {v: r for v, r in _ok_rows(out).items() if v in before}) == before  # not recomputed
    assert (out / "report.html").exists()


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _step_outputs(out: Path) -> int:
    return sum(1 for _ in (out / "cache").rglob("variant.json"))


def _wait_for(event: Callable[[], bool], proc: subprocess.Popen[bytes], limit: float = 900.0) -> None:
    """Until `event` holds while the study still runs. The limit only stops a hung study: nothing here
    depends on how fast the machine is (a loaded one made a 15 s watchdog and a random sleep flaky)."""
    deadline = time.monotonic() + limit
    while not event():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "the study wrote no new row"
        time.sleep(0.05)


def test_sigkill_at_a_random_moment_then_resume(tmp_path: Path, mnist_dir: Path) -> None:
    recipe = tmp_path / "pool.toml"
    recipe.write_text(REAL_RECIPE)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "deepshrink", "study", str(recipe), "--out", str(out), "--data-dir",
           str(mnist_dir), "--device", "cpu", "--jobs", "2", "--quiet"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # Killed on an event, never on a timer: the baseline's row written, then the n-th pipeline step
    # output (n random) cached by the workers, the rest of the unit in flight.
    _wait_for(lambda: bool(_ok_rows(out)), proc)
    start, n = _step_outputs(out), random.Random().randint(0, 3)
    _wait_for(lambda: _step_outputs(out) >= start + n, proc)
    workers = _children(proc.pid)
    proc.send_signal(signal.SIGKILL)  # the driver only: its worker processes are orphaned
    proc.wait()
    finished = _ok_rows(out)
    stamps = _stamps(out, finished)
    assert finished and workers
    # The rerun waits for the orphans (they hold .workers.lock until their watchdog ends them), so it
    # never races them for a cache folder; once it is done none of them is left.
    _, statuses = run_study(str(recipe), out, mnist_dir, "cpu", jobs=2, quiet=True)
    assert not any(_alive(p) for p in workers)
    assert set(statuses.values()) == {"ok"} and len(statuses) == 5
    after = _ok_rows(out)
    diff = {(v, k, finished[v][k], after[v].get(k)) for v in finished for k in finished[v]
            if after[v].get(k) != finished[v][k]}
    assert not diff  # identical rows for what was done before the kill ...
    # ... save columns that variants finished later brought to the table, empty for these rows
    assert all(after[v][k] == "" for v in finished for k in after[v].keys() - finished[v].keys())
    assert _stamps(out, finished) == stamps  # and none of it recomputed
