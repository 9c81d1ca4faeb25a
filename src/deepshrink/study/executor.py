"""Executors run a study's units; the driver (study.run) alone decides what to run. `LocalExecutor`
runs them in this process (`jobs=1`) or in a pool of spawned worker processes (`jobs>1`); another
executor (a cluster) implements the same `Executor.run`.

A pool runs baselines first, then the pipeline trees, so no two workers train the same baseline.
Workers report progress through a queue the parent replays on its bars, hold a shared lock for
their whole life (a rerun after a SIGKILL waits for them), and exit within a second when the study
process is gone.
"""

import dataclasses
import fcntl
import multiprocessing
import os
import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Protocol

from deepshrink import quiet
from deepshrink.errors import UserError
from deepshrink.progress import Progress
from deepshrink.provenance import all_cores
from deepshrink.study.cache import failure_reason
from deepshrink.study.plan import StudyOptions, Unit, Work, pending
from deepshrink.study.recipe import Recipe
from deepshrink.study.unit import UnitResult, run_unit
from deepshrink.study.variant import record_failure


class Executor(ABC):
    """Runs units of a study and returns variant -> status; rows are written as variants finish."""

    name = "local"  # --executor NAME
    # How many units to cut the pipelines into at least (plan.units); None: one per tree.
    parallel: int | None = None

    def describe(self) -> dict[str, Any]:
        """What provenance.json records about where the study ran."""
        return {"executor": self.name}

    @abstractmethod
    def run(self, recipe: Recipe, opts: StudyOptions, units: list[Unit], done: set[str], progress: Progress,
            overall: int) -> dict[str, str]: ...


def _all_works(units: list[Unit]) -> list[Work]:
    return [w for u in units for w in u.tree]


class LocalExecutor(Executor):
    """This machine's cores: in-process for one job, else a pool of `jobs` spawned processes."""

    def __init__(self, jobs: int = 1) -> None:
        if jobs < 1:
            raise UserError(f"--jobs {jobs}: must be >= 1")
        self.jobs = self.parallel = jobs

    def run(self, recipe: Recipe, opts: StudyOptions, units: list[Unit], done: set[str], progress: Progress,
            overall: int) -> dict[str, str]:
        if self.jobs == 1:
            return self._serial(recipe, opts, units, set(done), progress, overall)
        return self._pool(recipe, opts, units, done, progress, overall)

    @staticmethod
    def _serial(recipe: Recipe, opts: StudyOptions, units: list[Unit], done: set[str], progress: Progress,
                overall: int) -> dict[str, str]:
        statuses: dict[str, str] = {}
        for unit in units:
            ensure = unit.base.base_group in pending(_all_works(units), done)
            got = run_unit(recipe, opts, unit, frozenset(done), ensure, progress, overall)
            statuses.update(got)
            done |= {vid for vid, status in got if status == "ok"}
        return statuses

    def _pool(self, recipe: Recipe, opts: StudyOptions, units: list[Unit], done: set[str], progress: Progress,
              overall: int) -> dict[str, str]:
        """Baselines in parallel, then trees in parallel; threads per job so jobs x threads <= cores."""
        worker_opts = dataclasses.replace(opts, threads=max(1, all_cores() // self.jobs), quiet=True)
        statuses: dict[str, str] = {}
        ctx = multiprocessing.get_context("spawn")  # no forked torch thread pools or locks
        queue = ctx.Queue()  # handed to workers at start-up: a plain Queue cannot travel with each task
        with ProcessPoolExecutor(max_workers=self.jobs, mp_context=ctx, initializer=_init_worker,
                                 initargs=(queue, os.getpid(), str(opts.out))) as pool, Relay(queue, progress):
            for name, phase in (("baselines", [u for u in units if not u.tree]),
                                ("pipelines", [u for u in units if u.tree])):
                ok = done | {v for v, s in statuses.items() if s == "ok"}
                waiting = pending(_all_works(units), ok)
                futures = {pool.submit(_run_relayed, recipe, worker_opts, u, frozenset(ok),
                                       u.base.base_group in waiting): u for u in phase}
                running = {f: u.label for f, u in futures.items()}
                progress.update(overall, info=f"{name}: {len(futures)} units on {self.jobs} jobs")
                for fut in as_completed(futures):
                    running.pop(fut)
                    for vid, status in _unit_result(fut, futures[fut], opts.out):
                        statuses[vid] = status
                        progress.update(overall, advance=1)
                    now = ", ".join(list(running.values())[: self.jobs]) or "-"
                    progress.update(overall, info=f"{name}: running {now}")
        return statuses


def _unit_result(fut: "Future[UnitResult]", unit: Unit, out: Path) -> UnitResult:
    """A worker that died (or raised) fails its unit's variants; the study goes on."""
    try:
        return list(fut.result())
    except Exception as e:
        reason = failure_reason(e)
        for w in unit.works:
            record_failure(out, w, reason)
        return [(w.vid, f"failed: {reason}") for w in unit.works]


# ---- the live view from worker processes: their progress events relayed to the parent's bars ----

Message = tuple[Any, ...] | None  # (kind, worker pid, *arguments); None ends the relay


class Channel(Protocol):
    """A multiprocessing queue (or, in tests, a queue.Queue)."""

    def put(self, item: Message) -> None: ...
    def get(self) -> Message: ...

class QueueProgress(Progress):
    """A worker's Progress: every call becomes a message for the parent (epoch bars, latency)."""

    def __init__(self, queue: Channel) -> None:
        super().__init__(enabled=False)
        self.queue = queue
        self._next = 0

    def add(self, description: str, total: int) -> int:
        self._next += 1
        self.queue.put(("add", os.getpid(), self._next, description, total))
        return self._next

    def update(self, task: int, advance: int = 0, info: str | None = None, description: str | None = None) -> None:
        self.queue.put(("update", os.getpid(), task, advance, info, description))

    def finish(self, task: int) -> None:
        self.queue.put(("finish", os.getpid(), task))

    def log(self, message: str) -> None:
        self.queue.put(("log", os.getpid(), message))


class Relay:
    """Drains worker messages on a thread and replays them on the parent's Progress."""

    def __init__(self, queue: Channel, progress: Progress) -> None:
        self.queue, self.progress = queue, progress
        self.tasks: dict[tuple[int, int], int] = {}
        self.thread = threading.Thread(target=self._drain, daemon=True)

    def __enter__(self) -> "Relay":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.queue.put(None)
        self.thread.join(timeout=10)

    def _drain(self) -> None:
        while (msg := self.queue.get()) is not None:
            kind, pid, *rest = msg
            if kind == "add":
                self.tasks[pid, rest[0]] = self.progress.add(f"[{pid}] {rest[1]}", rest[2])
            elif kind == "update" and (pid, rest[0]) in self.tasks:
                self.progress.update(self.tasks[pid, rest[0]], advance=rest[1], info=rest[2], description=rest[3])
            elif kind == "finish" and (pid, rest[0]) in self.tasks:
                self.progress.finish(self.tasks.pop((pid, rest[0])))
            elif kind == "log":
                self.progress.log(f"[{pid}] {rest[0]}")


_WORKER: dict[str, Any] = {}  # set in each worker process by _init_worker


def _init_worker(queue: Channel, parent: int, run_dir: str) -> None:
    # Held (shared) for the worker's life: a rerun after a SIGKILL waits until orphans are gone.
    fd = os.open(os.path.join(run_dir, ".workers.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)
    _WORKER.update(queue=queue, lock_fd=fd)
    quiet.enable(Path(run_dir))  # timings wait for the other workers' batches, and they for timings
    threading.Thread(target=watch_parent, args=(parent,), daemon=True).start()


def watch_parent(parent: int) -> None:
    """An orphaned worker (the study was SIGKILLed) exits within a second, busy or idle, instead of
    racing the rerun for the same cache folders."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def wait_for_orphans(run_dir: Path, timeout: float = 300.0) -> None:
    """Workers of a killed study exit within a second (`watch_parent`); wait for them before starting."""
    fd = os.open(run_dir / ".workers.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise UserError(f"{run_dir}: worker processes of an earlier study are still running") from None
                time.sleep(0.5)
    finally:
        os.close(fd)  # closing releases the lock


def _run_relayed(recipe: Recipe, opts: StudyOptions, unit: Unit, done: frozenset[str], ensure: bool) -> UnitResult:
    return run_unit(recipe, opts, unit, done, ensure, QueueProgress(_WORKER["queue"]), None)
