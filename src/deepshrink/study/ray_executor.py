"""The Ray executor (SPEC §11): each unit of a study is one Ray task on a cluster.

Worker nodes need no data files and no shared filesystem: each dataset is loaded once on the driver
and put in Ray's object store; a task pre-fills the worker's dataset memo from it and runs `run_unit`
in a fresh temporary run directory seeded with what the unit reads from the real one (its baseline's
cache folder and results row). The task returns what it wrote there; the driver alone writes the run
directory (files atomically, csv rows upserted under the results lock), so resume, locking, the cache
and the report work as with the local executor.

`ray` is an optional extra: it is imported only when a study runs here, never by `import deepshrink`.
"""

import dataclasses
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepshrink import provenance
from deepshrink.checkpoint import atomic_write_bytes
from deepshrink.data import DataSplits, load_dataset
from deepshrink.errors import UserError
from deepshrink.progress import Progress
from deepshrink.provenance import all_cores
from deepshrink.results import RESULTS_COLUMNS, TABLES, read_rows, upsert, write_rows
from deepshrink.results import lock as results_lock
from deepshrink.study import unit as unit_module
from deepshrink.study.cache import failure_reason
from deepshrink.study.executor import Executor
from deepshrink.study.plan import StudyOptions, Unit, pending
from deepshrink.study.recipe import Recipe
from deepshrink.study.unit import UnitResult, baseline_config, run_unit
from deepshrink.study.variant import record_failure

# A task whose worker process or node dies is run again this many times before its unit fails. A task
# that raises is not retried: run_unit records step failures itself, so what escapes it is a bug.
MAX_RETRIES = 2
_MERGED = {*TABLES, "provenance.json"}  # merged row by row / entry by entry by the driver, never copied

Files = dict[str, bytes]  # path relative to the run directory -> content
# Ray picks the machine's outward address for its nodes unless this flag (meant for laptops) is off:
# then every node of a Ray started here listens on 127.0.0.1 only. Read when `ray` is first imported.
LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray: Ray is not installed (pip install -e .[ray])") from None
    return ray


@dataclass(frozen=True)
class Shipment:
    """What one task sends back to the driver: everything it produced for the run directory."""

    statuses: UnitResult
    files: Files
    rows: dict[str, list[dict[str, str]]]  # csv name -> rows of this unit's variants
    datasets: tuple[str, ...]  # datasets whose provenance entry the unit wrote


# ---- worker side ----

_FILLED: dict[tuple[str, int], str] = {}  # (dataset, val_size) -> the object that filled unit._DATA here


def _fill_data(name: str, val_size: int, box: list[Any]) -> None:
    """Worker processes live on between tasks: fetch (and unpickle) a dataset once per process and
    study, not once per task. The ref travels in a list so Ray does not fetch it before we look."""
    ref = box[0]
    if _FILLED.get((name, val_size)) != ref.hex():
        unit_module._DATA[name, val_size] = import_ray().get(ref)
        _FILLED[name, val_size] = ref.hex()


def _files(root: Path) -> dict[str, Path]:
    """Files under a run directory, without locks and temporary files (dot-names)."""
    return {str(p.relative_to(root)): p for p in root.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)}


def _stamp(p: Path) -> tuple[int, int]:
    st = p.stat()
    return st.st_size, st.st_mtime_ns


def _collect(run_dir: Path, before: dict[str, tuple[int, int]], statuses: UnitResult) -> Shipment:
    vids = {vid for vid, _ in statuses}
    files = {rel: p.read_bytes() for rel, p in _files(run_dir).items()
             if rel not in _MERGED and before.get(rel) != _stamp(p)}
    rows = {name: [r for r in read_rows(run_dir / name) if r.get("variant") in vids] for name in TABLES}
    datasets = tuple(provenance.read(run_dir / "provenance.json").get("data", {}))
    return Shipment(statuses, files, rows, datasets)


def run_task(recipe: Recipe, opts: StudyOptions, unit: Unit, done: frozenset[str], ensure: bool, box: list[Any],
             base_rows: list[dict[str, str]]) -> Shipment:
    """One unit on a worker, in a private temporary run directory (removed afterwards).
    `box`: [dataset ref, ref of the baseline's cache files], fetched here, not by Ray before the call."""
    _fill_data(unit.base.dataset, recipe.val_size, box)
    tmp = Path(tempfile.mkdtemp(prefix="deepshrink-unit-"))
    try:
        seed: Files = import_ray().get(box[1])
        for rel, blob in seed.items():
            atomic_write_bytes(tmp / rel, blob)
        if base_rows:  # `pipelines()` reads the baseline's accuracy from results.csv
            write_rows(tmp / "results.csv", base_rows, RESULTS_COLUMNS)
        before = {rel: _stamp(p) for rel, p in _files(tmp).items()}
        statuses = run_unit(recipe, dataclasses.replace(opts, out=tmp), unit, done, ensure)
        return _collect(tmp, before, statuses)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- driver side ----

def _inside(run_dir: Path, rel: str) -> Path:
    path = run_dir / rel
    if Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise RuntimeError(f"a Ray task returned a file outside the run directory: {rel!r}")
    return path


def merge(run_dir: Path, shipment: Shipment, data: dict[str, DataSplits]) -> None:
    """Files first, then rows: a row never names an artifact that is not there yet."""
    for rel, blob in shipment.files.items():
        atomic_write_bytes(_inside(run_dir, rel), blob)
    with results_lock(run_dir):
        for name, (columns, key) in TABLES.items():
            if shipment.rows[name]:
                upsert(run_dir / name, shipment.rows[name], columns, key)
        for name in shipment.datasets:
            if name in data:
                provenance.write(run_dir, data=data[name])


def _reason(e: BaseException) -> str:
    """A task error's cause (the exception raised in the task), not Ray's wrapper with its traceback."""
    cause = getattr(e, "cause", None)
    return failure_reason(cause if isinstance(cause, BaseException) else e)


class _Driver:
    """One study on a connected Ray: baselines first, then trees, so no two tasks train one baseline."""

    def __init__(self, ray: Any, recipe: Recipe, opts: StudyOptions, progress: Progress, overall: int) -> None:
        self.ray, self.recipe, self.opts, self.progress, self.overall = ray, recipe, opts, progress, overall
        # A task's device follows its resources: a CPU-only task on a GPU node must not grab the GPU.
        self.task_opts = dataclasses.replace(opts, threads=max(1, math.ceil(recipe.cpus_per_task)), quiet=True,
                                             device="cuda" if recipe.gpus_per_task > 0 else "cpu")
        self.remote = ray.remote(run_task).options(num_cpus=recipe.cpus_per_task, num_gpus=recipe.gpus_per_task,
                                                   max_retries=MAX_RETRIES, retry_exceptions=False)
        self.data: dict[str, tuple[DataSplits, Any]] = {}  # recipe dataset -> (splits, object ref)
        self.seeds: dict[str, Any] = {}  # baseline cache key -> ref of its files, put once per phase
        self.rows: dict[str, dict[str, str]] = {}  # results.csv of the driver's run directory, by variant

    def run(self, units: list[Unit], done: set[str]) -> dict[str, str]:
        statuses: dict[str, str] = {}
        works = [w for u in units for w in u.tree]
        for phase, group in (("baselines", [u for u in units if not u.tree]),
                             ("pipelines", [u for u in units if u.tree])):
            ok = frozenset(done | {v for v, s in statuses.items() if s == "ok"})
            waiting = pending(works, set(ok))
            # The baseline phase wrote cache folders and rows the trees are seeded with.
            self.seeds, self.rows = {}, {r["variant"]: r for r in read_rows(self.opts.out / "results.csv")}
            tasks = {}
            for u in group:
                ref = self._submit(u, ok, u.base.base_group in waiting, statuses)
                if ref is not None:
                    tasks[ref] = u
            self._wait(phase, tasks, statuses)
        return statuses

    def _dataset(self, name: str) -> tuple[DataSplits, Any]:
        if name not in self.data:
            splits = load_dataset(name, self.opts.data_dir, val_size=self.recipe.val_size,
                                  allow_empty_classes=self.opts.allow_empty_classes)
            self.data[name] = splits, self.ray.put(splits)
        return self.data[name]

    def _seed(self, u: Unit, splits: DataSplits) -> Any:
        """The baseline's cache folder, so the worker loads it instead of training it again; put in the
        object store once, so trees of one baseline on one node fetch it once."""
        key = baseline_config(self.recipe, u.base, splits.fingerprint)[1]
        if key not in self.seeds:
            folder = self.opts.out / "cache" / key
            self.seeds[key] = self.ray.put({f"cache/{key}/{rel}": p.read_bytes() for rel, p in _files(folder).items()}
                                           if folder.is_dir() else {})
        return self.seeds[key]

    def _submit(self, u: Unit, ok: frozenset[str], ensure: bool, statuses: dict[str, str]) -> Any:
        if all(w.vid in ok for w in u.tree) and u.base.vid in ok and not ensure:
            return None  # nothing to do (run_unit would return at once): no need to ship anything
        try:
            splits, ref = self._dataset(u.base.dataset)
        except Exception as e:  # e.g. missing data: this unit's variants fail, the study goes on
            statuses.update(self._fail(u, failure_reason(e)))
            return None
        base_rows = [self.rows[u.base.vid]] if u.base.vid in self.rows else []
        return self.remote.remote(self.recipe, self.task_opts, u, ok, ensure, [ref, self._seed(u, splits)],
                                  base_rows)

    def _fail(self, u: Unit, reason: str) -> UnitResult:
        for w in u.works:
            record_failure(self.opts.out, w, reason)
        self.progress.update(self.overall, advance=len(u.works))
        return [(w.vid, f"failed: {reason}") for w in u.works]

    def _finish(self, ref: Any, u: Unit) -> UnitResult:
        try:
            shipment: Shipment = self.ray.get(ref)
        except Exception as e:  # retries spent, its node died, or a bug: its unit fails, the study goes on
            return self._fail(u, _reason(e))
        merge(self.opts.out, shipment, {s.name: s for s, _ in self.data.values()})
        self.progress.update(self.overall, advance=len(shipment.statuses))
        return shipment.statuses

    def _wait(self, phase: str, tasks: dict[Any, Unit], statuses: dict[str, str]) -> None:
        """Collect tasks as they finish (any order), so the overall bar moves with the cluster."""
        left = list(tasks)
        while left:
            labels = ", ".join(tasks[r].label for r in left[:3]) + (", ..." if len(left) > 3 else "")
            self.progress.update(self.overall, info=f"{phase} on Ray: {len(left)} running or queued ({labels})")
            ready, left = self.ray.wait(left, num_returns=1)
            for ref in ready:
                for vid, status in self._finish(ref, tasks[ref]):
                    statuses[vid] = status
                    if status != "ok":
                        self.progress.log(f"{vid}: {status}")

    def check_resources(self) -> None:
        """A task no node can hold waits forever in Ray's queue: say so (an autoscaler may still add one)."""
        cpus, gpus = self.recipe.cpus_per_task, self.recipe.gpus_per_task
        nodes = [n.get("Resources", {}) for n in self.ray.nodes() if n.get("Alive")]
        if not any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
            self.progress.log(f"warning: no node of the Ray cluster has {cpus:g} CPUs and {gpus:g} GPUs free "
                              "(study.cpus_per_task, study.gpus_per_task): tasks wait until one joins")


class RayExecutor(Executor):
    """Units as Ray tasks on a cluster at `address` (else $RAY_ADDRESS, else a local Ray on this machine)."""

    name = "ray"

    def __init__(self, address: str | None = None) -> None:
        import_ray()  # a missing extra is one line before any work, not a failure mid-study
        self.address = address or os.environ.get("RAY_ADDRESS") or None

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name, "ray_address": self.address or "local"}

    def run(self, recipe: Recipe, opts: StudyOptions, units: list[Unit], done: set[str], progress: Progress,
            overall: int) -> dict[str, str]:
        ray = ray_for(self.address)
        started = connect(ray, self.address)
        try:
            driver = _Driver(ray, recipe, opts, progress, overall)
            driver.check_resources()
            return driver.run(units, done)
        finally:
            if started:  # a Ray the caller (a notebook, a test) connected stays connected
                ray.shutdown()


def ray_for(address: str | None) -> Any:
    """The `ray` module, imported after choosing where a Ray of our own listens."""
    if not address and not os.environ.get("RAY_ADDRESS"):
        os.environ.setdefault(LOOPBACK_ONLY, "0")  # a Ray of our own stays on 127.0.0.1
    return import_ray()


def connect(ray: Any, address: str | None) -> bool:
    """Connect (or start a local Ray with this machine's cores); False when already connected."""
    if ray.is_initialized():
        return False
    where: dict[str, Any] = {"address": address} if address else {
        "address": "local", "num_cpus": all_cores(), "include_dashboard": False}
    try:  # worker output would tear the live view; a task's error comes back with its result
        ray.init(**where, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, TimeoutError, ValueError) as e:
        raise UserError(f"--address {address}: cannot connect to a Ray cluster ({e})") from None
    return True
