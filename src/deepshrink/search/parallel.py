"""Trials evaluated concurrently (SPEC §13, §11): in this process (`jobs=1`), in a pool of spawned
processes (`--executor local --jobs N`), or as Ray tasks (`--executor ray`).

The main process asks Optuna for a batch of `jobs` trials, hands each worker a `Job` (steps drawn,
the hopeless threshold) and tells the outcomes in trial-number order. The batch size alone decides
which trials the sampler sees before drawing the next ones, so one seed and one `jobs` draw the same
trials on every executor.

A worker builds its `Env` (checkpoint, data, baseline measured on validation) once per process and
search, then evaluates trials through the shared step cache (`study.cache.realize` locks each key, so
two trials reaching one prefix compute it once). Workers join the run directory's quiet lock: a trial
being timed never overlaps another worker's training. Ray workers read the checkpoint, the data and
the run directory by path: the nodes must share the filesystem that holds them.
"""

import dataclasses
import math
import multiprocessing
import os
import platform
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from deepshrink import quiet
from deepshrink.checkpoint import Manifest, load_checkpoint
from deepshrink.data import DataSplits, load_dataset
from deepshrink.data.normalize import renormalize
from deepshrink.errors import UserError
from deepshrink.progress import Progress
from deepshrink.provenance import all_cores, cpu_model
from deepshrink.search.budget import Budget
from deepshrink.search.trial import Env, Outcome, evaluate_trial, validation_view, weights_hash
from deepshrink.study.cache import failure_reason
from deepshrink.study.executor import watch_parent
from deepshrink.study.ray_executor import connect, import_ray, ray_for
from deepshrink.study.variant import measure_variant
from deepshrink.variant import StepContext, Variant, variant_id

EXECUTORS = ("local", "ray")
# A Ray task whose worker or node dies runs again this many times before its trial fails (as a study's).
MAX_RETRIES = 2


def check_executor(name: str, jobs: int, address: str | None) -> None:
    """Bad options are one line before anything is read; a missing Ray extra too."""
    if jobs < 1:
        raise UserError(f"--jobs {jobs}: must be >= 1")
    if name not in EXECUTORS:
        raise UserError(f"--executor {name!r}: unknown (known: {', '.join(EXECUTORS)})")
    if name == "ray":
        import_ray()
    elif address:
        raise UserError(f"--address {address}: only with --executor ray")


@dataclass(frozen=True)
class Setup:
    """Everything a worker's Env is built from: a worker keeps one Env per distinct Setup."""

    checkpoint: str
    dataset: str
    data_dir: str | None
    out: str
    seed: int
    device: str
    budget: Budget
    mcu_target: str
    threads: int  # torch threads per worker, so workers x threads stays within the cores they were given


@dataclass(frozen=True)
class Job:
    number: int
    steps: tuple[str, ...]
    hopeless_below: float


def node() -> str:
    return f"{platform.node()} ({cpu_model()})"


# ---- worker side ----

_ENV: dict[Setup, Env] = {}  # this worker process's Env: loading data and checkpoint per trial is slow


def run_job(setup: Setup, job: Job) -> Outcome:
    """One trial in a worker process (a pool's or Ray's)."""
    return evaluate_trial(_env(setup), job.number, job.steps, job.hopeless_below, node())


def _env(setup: Setup) -> Env:
    if setup not in _ENV:
        _ENV.clear()  # a Ray worker outlives a search: the previous one's Env is dead weight
        torch.set_num_threads(setup.threads)
        quiet.enable(Path(setup.out))  # a timed trial waits for the others' training, and they for it
        _ENV[setup] = _build(setup)
    return _ENV[setup]


def model_data(dataset: str, data_dir: Path | None, manifest: Manifest) -> DataSplits:
    """The data normalized as the checkpoint's model takes it (a converted .tflite: the raw pixel values), the
    way `deepshrink compress` and a study hand it over; the dataset's own statistics otherwise."""
    data = load_dataset(dataset, data_dir, allow_empty_classes=True)
    return renormalize(data, (manifest.mean, manifest.std))


def _build(setup: Setup) -> Env:
    checkpoint, out = Path(setup.checkpoint), Path(setup.out)
    model, manifest = load_checkpoint(checkpoint)
    data = model_data(setup.dataset, Path(setup.data_dir) if setup.data_dir else None, manifest)
    base = Variant(variant_id(manifest.dataset, manifest.display, []), model, manifest, seed=setup.seed)
    ctx = StepContext(data=data, device=setup.device, seed=setup.seed, progress=Progress(enabled=False),
                      cache_dir=out / "cache" / "steps")
    # Its own folder: workers measure the baseline at the same time (node and pid: nodes may share `out`).
    folder = out / ".trials" / f"baseline-{platform.node()}-{os.getpid()}"
    base_val = measure_variant(base, validation_view(data), folder)
    return Env(base, f"weights:{weights_hash(checkpoint)}", data, out, ctx, setup.budget, base_val,
               setup.mcu_target)


# ---- main process side ----

class Evaluator(Protocol):
    """Evaluates a batch of trials; outcomes come back in the batch's order, each as soon as it and
    those before it are done."""

    def map(self, jobs: list[Job]) -> Iterator[Outcome]: ...
    def close(self) -> None: ...
    def describe(self) -> dict[str, Any]: ...


class InProcess:
    """`jobs=1` on the local executor: the search's own Env, one trial after another, as always."""

    def __init__(self, env: Env) -> None:
        self.env = env

    def map(self, jobs: list[Job]) -> Iterator[Outcome]:
        for job in jobs:
            yield evaluate_trial(self.env, job.number, job.steps, job.hopeless_below)

    def close(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"executor": "local", "jobs": 1}


def failed(e: BaseException) -> Outcome:
    """A worker that died or raised: its trial fails, the search goes on."""
    return Outcome(state="failed", metrics=None, reports=[], attrs={"error": failure_reason(e)}, node="")


class LocalPool:
    """`jobs` spawned processes on this machine (spawn: no forked torch thread pools or locks)."""

    def __init__(self, setup: Setup, jobs: int) -> None:
        self.setup = dataclasses.replace(setup, threads=max(1, all_cores() // jobs))
        self.jobs = jobs
        self.pool: ProcessPoolExecutor | None = None

    def _pool(self) -> ProcessPoolExecutor:
        if self.pool is None or getattr(self.pool, "_broken", False):  # a dead worker breaks the whole pool
            self.close()
            self.pool = ProcessPoolExecutor(max_workers=self.jobs, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_watch, initargs=(os.getpid(),))
        return self.pool

    def map(self, jobs: list[Job]) -> Iterator[Outcome]:
        futures: list[Future[Outcome]] = [self._pool().submit(run_job, self.setup, job) for job in jobs]
        for fut in futures:
            try:
                yield fut.result()
            except Exception as e:
                yield failed(e)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def describe(self) -> dict[str, Any]:
        return {"executor": "local", "jobs": self.jobs, "torch_threads_per_job": self.setup.threads}


def _watch(parent: int) -> None:
    """A worker of a killed search exits within a second instead of training on beside its resume."""
    threading.Thread(target=watch_parent, args=(parent,), daemon=True).start()


class RayTasks:
    """Each trial one Ray task of `cpus_per_task` CPUs; a Ray this object started is shut down on close."""

    def __init__(self, setup: Setup, jobs: int, address: str | None, cpus_per_task: float) -> None:
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.ray = ray_for(self.address)
        self.started = connect(self.ray, self.address)
        # A CPU-only task on a GPU node must not grab the GPU (as a study's tasks).
        self.setup = dataclasses.replace(setup, threads=max(1, math.ceil(cpus_per_task)), device="cpu")
        self.jobs, self.cpus = jobs, cpus_per_task
        self.remote = self.ray.remote(run_job).options(num_cpus=cpus_per_task, max_retries=MAX_RETRIES,
                                                       retry_exceptions=False)

    def map(self, jobs: list[Job]) -> Iterator[Outcome]:
        refs = [self.remote.remote(self.setup, job) for job in jobs]
        for ref in refs:
            try:
                yield self.ray.get(ref)
            except Exception as e:  # retries spent, its node died, or a bug: the cause, not Ray's wrapper
                cause = getattr(e, "cause", None)
                yield failed(cause if isinstance(cause, BaseException) else e)

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
            self.started = False

    def describe(self) -> dict[str, Any]:
        return {"executor": "ray", "jobs": self.jobs, "ray_address": self.address or "local",
                "cpus_per_task": self.cpus}


def evaluator(name: str, jobs: int, env: Env, setup: Setup, address: str | None, cpus_per_task: float) -> Evaluator:
    if name == "ray":
        return RayTasks(setup, jobs, address, cpus_per_task)
    return InProcess(env) if jobs == 1 else LocalPool(setup, jobs)
