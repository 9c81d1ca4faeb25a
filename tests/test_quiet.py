"""deepshrink.quiet: a study's timing never overlaps another worker's CPU work, and that work waits for it."""

import multiprocessing
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from deepshrink import quiet

CTX = multiprocessing.get_context("spawn")


@pytest.fixture(autouse=True)
def _off() -> Any:
    yield
    quiet.disable()


def _hold_busy(run_dir: str, inside: Any, release: Any) -> None:
    quiet.enable(Path(run_dir))
    with quiet.busy():
        inside.set()
        release.wait(20)


def _enter_busy(run_dir: str, inside: Any) -> None:
    quiet.enable(Path(run_dir))
    with quiet.busy():
        inside.set()


def _busy_then_quiet(run_dir: str, done: Any) -> None:
    quiet.enable(Path(run_dir))
    with quiet.busy():
        time.sleep(0.2)
        with quiet.quiet():
            time.sleep(0.1)
    done.set()


def test_timing_waits_for_the_other_workers_busy_work(tmp_path: Path) -> None:
    inside, release = CTX.Event(), CTX.Event()
    child = CTX.Process(target=_hold_busy, args=(str(tmp_path), inside, release))
    child.start()
    assert inside.wait(30)
    quiet.enable(tmp_path)
    got = threading.Event()

    def time_it() -> None:
        with quiet.quiet():
            got.set()

    timer = threading.Thread(target=time_it)
    timer.start()
    assert not got.wait(0.5)  # the other worker is mid-batch
    release.set()
    assert got.wait(10)
    timer.join()
    child.join(10)


def test_busy_work_waits_while_a_timing_runs(tmp_path: Path) -> None:
    quiet.enable(tmp_path)
    inside = CTX.Event()
    with quiet.quiet():
        child = CTX.Process(target=_enter_busy, args=(str(tmp_path), inside))
        child.start()
        assert not inside.wait(3)  # spawn start-up included: it must still be waiting
    assert inside.wait(10)
    child.join(10)


def test_two_busy_workers_asking_to_time_at_once_do_not_deadlock(tmp_path: Path) -> None:
    done = [CTX.Event() for _ in range(2)]
    procs = [CTX.Process(target=_busy_then_quiet, args=(str(tmp_path), d)) for d in done]
    for p in procs:
        p.start()
    assert all(d.wait(30) for d in done)
    for p in procs:
        p.join(10)


def test_nesting_in_one_process_and_off_outside_a_study(tmp_path: Path) -> None:
    with quiet.busy(), quiet.quiet():  # not enabled: both are no-ops
        pass
    quiet.enable(tmp_path)
    with quiet.busy():
        with quiet.busy(), quiet.quiet(), quiet.busy():  # a timing inside an export inside measure_variant
            pass
        with quiet.quiet():
            pass
    with quiet.quiet(), quiet.quiet():
        pass
