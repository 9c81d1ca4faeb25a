"""Study execution as a DAG: baselines, then pipelines as step chains whose outputs are cached under
a hash of (step, input's hash, data fingerprint, code version), so shared prefixes run once.

Work is grouped into trees (dataset, model, seed, first step): a tree runs in one process, which
keeps every prefix it computes in memory and on disk; independent trees run in parallel with
`--jobs`. Results rows are upserted after each variant under a file lock, so a killed study loses
at most the variant in progress.
"""

import copy
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from deepshrink import __version__, provenance
from deepshrink.checkpoint import atomic_write_bytes, load_checkpoint, paths_for, save_checkpoint
from deepshrink.errors import UserError
from deepshrink.export import Deployment
from deepshrink.progress import Progress
from deepshrink.recipes import BASELINE_PLACEHOLDER, Recipe
from deepshrink.results import read_rows
from deepshrink.train import TrainLog
from deepshrink.variant import Variant


@dataclass(frozen=True)
class Work:
    """One variant to produce: a baseline (no steps) or a pipeline applied to one."""

    vid: str
    dataset: str
    model: str
    seed: int
    label: str
    steps: tuple[str, ...] = ()

    @property
    def base_group(self) -> tuple[str, str, int]:
        return self.dataset, self.model, self.seed


def plan(recipe: Recipe) -> list[Work]:
    """Every variant of the recipe, baselines first, in a deterministic order."""
    from deepshrink.study import slug, variant_id

    multi_seed = len(recipe.seeds) > 1
    out: list[Work] = []
    for ds in recipe.datasets:
        for model in recipe.models:
            for seed in recipe.seeds:
                def vid(steps: tuple[str, ...], seed: int = seed, ds: str = ds, model: str = model) -> str:
                    return variant_id(ds, model, list(steps)) + (f"--seed{seed}" if multi_seed else "")

                out.append(Work(vid(()), ds, model, seed, "baseline"))
                for p in recipe.pipelines:
                    if p.applies(ds, model):
                        # A named pipeline's id is its label (readable: mnist-lenet-5--prune80+int8).
                        named = p.name != "+".join(p.steps) and len(p.name) <= 60
                        pid = f"{slug(f'{ds}-{model}')}--{slug(p.name)}" + (f"--seed{seed}" if multi_seed else "")
                        out.append(Work(pid if named else vid(p.steps), ds, model, seed, p.name, p.steps))
    seen: set[str] = set()
    for w in out:
        if w.vid in seen:
            raise UserError(f"{recipe.source}: two pipelines give the same variant {w.vid!r}")
        seen.add(w.vid)
    return out


def trees(works: Iterable[Work]) -> list[list[Work]]:
    """Pipelines grouped by (dataset, model, seed, first step): each group shares its prefixes."""
    groups: dict[tuple[Any, ...], list[Work]] = {}
    for w in works:
        if w.steps:
            groups.setdefault((*w.base_group, w.steps[0]), []).append(w)
    return [sorted(g, key=lambda w: w.steps) for g in groups.values()]


_CODE: list[str] = []  # pinned once per study: a commit landing mid-run must not change the keys


_DOWNSTREAM = ("report", "templates")  # readers of results, not producers


def code_version() -> str:
    """A hash of the package's own source (code, recipes): unlike the git commit it sees uncommitted
    edits and ignores commits that touch only docs or tests. The report and its templates are left out:
    they only read results, so editing them must not retrain anything."""
    if not _CODE:
        import hashlib

        root = Path(__file__).resolve().parent
        h = hashlib.sha256(__version__.encode())
        for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".toml") and p.is_file()
                           and p.relative_to(root).parts[0] not in _DOWNSTREAM):
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
        _CODE.append(f"{__version__}+src.{h.hexdigest()[:12]}")
    return _CODE[0]


def pin_code_version(version: str) -> None:
    """Workers use the parent's code version, read once when the study started."""
    _CODE[:] = [version]


def baseline_key(dataset: str, model: str, train: dict[str, Any], fingerprint: str, val_size: int) -> str:
    return provenance.config_hash({"dataset": dataset, "model": model, "train": train, "data": fingerprint,
                                   "val_size": val_size, "code": code_version()}, 16)


def step_key(parent: str, step: str, fingerprint: str, seed: int) -> str:
    """The cache key of a step's output: any change upstream (config, input, data, code) changes it."""
    return provenance.config_hash({"step": step, "input": parent, "data": fingerprint, "seed": seed,
                                   "code": code_version()}, 16)


# ---- step outputs on disk: safetensors + manifest + a sidecar with what the Variant carries ----

def save_cached(folder: Path, v: Variant, seconds: float) -> None:
    save_checkpoint(v.model, v.manifest, folder / "model")
    meta = {"deployment": {"name": v.deployment.name, "options": [list(o) for o in v.deployment.options]},
            "info": {k: x for k, x in v.info.items() if isinstance(x, int | float | str | bool)},
            "train_seconds": v.train_seconds, "epochs": v.epochs, "seed": v.seed, "seconds": seconds,
            "log": v.log.__dict__ if v.log else None}
    atomic_write_bytes(folder / "variant.json", json.dumps(meta, default=str).encode())


def _options(raw: list[list[Any]]) -> tuple[tuple[str, Any], ...]:
    return tuple((str(k), tuple(x) if isinstance(x, list) else x) for k, x in raw)


def load_cached(folder: Path, vid: str) -> tuple[Variant, float] | None:
    """The cached variant, or None when absent or not reloadable (then it is computed again)."""
    side = folder / "variant.json"
    if not side.exists() or not paths_for(folder / "model")[0].exists():
        return None
    try:
        meta = json.loads(side.read_text())
        model, manifest = load_checkpoint(folder / "model")
    except (UserError, json.JSONDecodeError, OSError, KeyError):
        return None
    log = TrainLog(**meta["log"]) if meta.get("log") else None
    dep = Deployment(meta["deployment"]["name"], _options(meta["deployment"]["options"]))
    v = Variant(vid, model, manifest, deployment=dep, log=log, train_seconds=meta["train_seconds"],
                epochs=meta["epochs"], seed=meta["seed"], info=dict(meta["info"]))
    return v, float(meta.get("seconds", 0.0))


def cached_or_compute(folder: Path, vid: str, compute: Callable[[], Variant], fresh: bool) -> tuple[Variant, float]:
    """Reuse a cached output, else compute and cache it. A computed output continues from its reloaded
    copy, so a fresh run and a resumed run feed identical weights downstream."""
    if not fresh:
        hit = load_cached(folder, vid)
        if hit is not None:
            return hit
    t0 = time.perf_counter()
    v = compute()
    seconds = time.perf_counter() - t0
    if folder.exists():
        shutil.rmtree(folder)
    save_cached(folder, v, seconds)
    again = load_cached(folder, vid)
    if again is None:  # e.g. a quantized model whose state dict the registry model cannot hold
        shutil.rmtree(folder, ignore_errors=True)
        return v, seconds
    return again


@dataclass
class Prefixes:
    """In-memory memo of a tree's prefixes: (steps) -> (variant, cache key, seconds) or the failure."""

    done: dict[tuple[str, ...], tuple[Variant, str, float]] = field(default_factory=dict)
    failed: dict[tuple[str, ...], str] = field(default_factory=dict)


def substitute(step: str, baseline_ckpt: Path, baseline_key: str) -> tuple[str, str]:
    """(step text to run, step text to hash): the placeholder hashes as the baseline's cache key."""
    return step.replace(BASELINE_PLACEHOLDER, str(baseline_ckpt)), step.replace(BASELINE_PLACEHOLDER,
                                                                                f"baseline:{baseline_key}")


def realize(steps: tuple[str, ...], memo: Prefixes, apply_step: Callable[[Variant, str], Variant],
            cache: Path, ids: Callable[[tuple[str, ...]], str], hash_text: Callable[[str], str],
            fingerprint: str, seed: int, fresh: bool) -> tuple[Variant, float]:
    """The variant for `steps`, computing only the suffix not yet in memory or on disk."""
    if steps in memo.failed:
        raise RuntimeError(memo.failed[steps])
    if steps in memo.done:
        v, _, seconds = memo.done[steps]
        return copy.deepcopy(v), seconds
    parent, parent_key, parent_seconds = memo.done[()] if len(steps) == 1 else (None, "", 0.0)
    if len(steps) > 1:
        realize(steps[:-1], memo, apply_step, cache, ids, hash_text, fingerprint, seed, fresh)
        parent, parent_key, parent_seconds = memo.done[steps[:-1]]
    assert parent is not None
    key = step_key(parent_key, hash_text(steps[-1]), fingerprint, seed)
    src = parent

    def compute() -> Variant:
        torch.manual_seed(seed)  # each step starts from the same RNG state whatever ran before it
        return apply_step(copy.deepcopy(src), steps[-1])

    try:
        v, seconds = cached_or_compute(cache / key, ids(steps), compute, fresh)
    except Exception as e:
        memo.failed[steps] = _reason(e)
        raise
    v.id = ids(steps)
    memo.done[steps] = (v, key, parent_seconds + seconds)
    return copy.deepcopy(v), parent_seconds + seconds


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if isinstance(e, UserError | RuntimeError) else f"{type(e).__name__}: {text}"


def failure_reason(e: BaseException) -> str:
    return _reason(e)[:300]


def finished(run_dir: Path) -> set[str]:
    """Variants whose row says `ok`: a resumed study skips them."""
    return {r["variant"] for r in read_rows(run_dir / "results.csv") if r.get("status") == "ok"}


def lock(run_dir: Path) -> FileLock:
    """One study per run directory; the lock file is released by the OS if the process is killed."""
    run_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(str(run_dir / ".study.lock"), timeout=0)


def results_lock(run_dir: Path) -> FileLock:
    return FileLock(str(run_dir / ".results.lock"))


# ---- scheduling ----

def _groups(works: list[Work]) -> list[tuple[Work, list[Work]]]:
    """(baseline, pipelines of one tree) units: baselines alone first, then every tree."""
    bases = {w.base_group: w for w in works if not w.steps}
    return [(b, []) for b in bases.values()] + [(bases[t[0].base_group], t) for t in trees(works)]


def _pending(works: Iterable[Work], done: set[str]) -> frozenset[tuple[str, str, int]]:
    """Baselines (dataset, model, seed) that some unfinished pipeline still starts from."""
    return frozenset(w.base_group for w in works if w.steps and w.vid not in done)


def _clear(run_dir: Path) -> None:
    for name in ("results.csv", "latency.csv", "layers.csv"):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "cache", ignore_errors=True)


def _write_provenance(run_dir: Path, recipe: Recipe, jobs: int, device: str) -> None:
    """The run's provenance as of this invocation; per-dataset entries written by the workers are kept."""
    from deepshrink.measure.latency import all_cores

    path = run_dir / "provenance.json"
    old = provenance.read(path)
    threads = max(1, all_cores() // jobs) if jobs > 1 else 0
    prov = provenance.collect(device, {"study": recipe.seeds[0]} if len(recipe.seeds) == 1 else
                              {f"seed{i}": s for i, s in enumerate(recipe.seeds)},
                              {"recipe": recipe.raw, "recipe_source": recipe.source, "jobs": jobs,
                               "torch_threads_per_job": threads, "cache_code_version": code_version()})
    prov["data"] = old.get("data", {})
    atomic_write_bytes(path, json.dumps(prov, indent=2, default=str).encode())


def _drop_stale(run_dir: Path, planned: set[str]) -> None:
    """Rows of variants the recipe no longer makes (edited recipe, --set) would mislead the report."""
    from deepshrink.results import remove_variant

    for r in read_rows(run_dir / "results.csv"):
        if r["variant"] not in planned:
            remove_variant(run_dir, r["variant"])


def execute(recipe: Recipe, opts: Any, jobs: int = 1, fresh: bool = False) -> dict[str, str]:
    """Run every variant of `recipe` not yet `ok` in the run directory; returns variant -> status."""
    from filelock import Timeout

    from deepshrink.measure.latency import all_cores

    works = plan(recipe)
    guard = lock(opts.out)
    try:
        guard.acquire()
    except Timeout:
        raise UserError(f"{opts.out}: another study is writing this run directory (lock {guard.lock_file})") from None
    try:
        import dataclasses

        opts = dataclasses.replace(opts, code=code_version())
        wait_for_orphans(opts.out)
        if fresh:
            _clear(opts.out)
        _drop_stale(opts.out, {w.vid for w in works})
        done = finished(opts.out)
        statuses = {w.vid: "ok" for w in works if w.vid in done}
        units = _groups(works)
        with Progress(enabled=not opts.quiet) as progress:
            overall = progress.add(f"study {recipe.name}", total=len(works))
            progress.update(overall, advance=len(statuses))
            _write_provenance(opts.out, recipe, jobs, opts.device)
            if jobs <= 1:
                for base, tree in units:
                    got = _run_unit(recipe, opts, base, tree, done, progress, overall, _pending(works, done))
                    statuses.update(got)
                    done |= {vid for vid, status in got if status == "ok"}
            else:
                statuses.update(_parallel(recipe, opts, units, done, jobs, all_cores(), progress, overall))
    finally:
        guard.release()
    return statuses


def _run_unit(recipe: Recipe, opts: Any, base: Work, tree: list[Work], done: set[str], progress: Any,
              overall: int | None, pending: frozenset[tuple[str, str, int]] = frozenset()) -> list[tuple[str, str]]:
    from deepshrink.study import run_group

    # A baseline unit whose pipelines are not all done makes sure the baseline is in the cache, so the
    # parallel trees that follow load it instead of each training it again.
    return run_group(recipe, opts, base, tree, done, progress, overall, ensure=base.base_group in pending)


def _parallel(recipe: Recipe, opts: Any, units: list[tuple[Work, list[Work]]], done: set[str], jobs: int,
              cores: int, progress: Any, overall: int) -> dict[str, str]:
    """Baselines in parallel, then trees in parallel; threads per job so jobs x threads <= cores."""
    import dataclasses
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    worker_opts = dataclasses.replace(opts, threads=max(1, cores // jobs), quiet=True)
    statuses: dict[str, str] = {}
    ctx = multiprocessing.get_context("spawn")  # no forked torch thread pools or locks
    queue = ctx.Queue()  # handed to workers at start-up: a plain Queue cannot travel with each task
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker,
                             initargs=(queue, os.getpid(), str(opts.out))) as pool, Relay(queue, progress):
        for name, phase in (("baselines", [u for u in units if not u[1]]), ("pipelines", [u for u in units if u[1]])):
            ok = done | {v for v, s in statuses.items() if s == "ok"}
            pending = _pending([w for _, t in units for w in t], ok)
            futures = {pool.submit(_run_relayed, recipe, worker_opts, b, t, ok, pending): (b, t) for b, t in phase}
            running = {f: (t[0].label if t else b.vid) for f, (b, t) in futures.items()}
            progress.update(overall, info=f"{name}: {len(futures)} units on {jobs} jobs")
            for fut in as_completed(futures):
                running.pop(fut)
                for vid, status in _unit_result(fut, *futures[fut], opts):
                    statuses[vid] = status
                    progress.update(overall, advance=1)
                progress.update(overall, info=f"{name}: running {', '.join(list(running.values())[:jobs]) or '-'}")
    return statuses


def _unit_result(fut: Any, base: Work, tree: list[Work], opts: Any) -> list[tuple[str, str]]:
    """A worker that died (or raised) fails its unit's variants; the study goes on."""
    from deepshrink.study import _record_failure

    try:
        return list(fut.result())
    except Exception as e:
        reason = failure_reason(e)
        for w in tree or [base]:
            _record_failure(opts.out, w, reason)
        return [(w.vid, f"failed: {reason}") for w in tree or [base]]


# ---- the live view from worker processes: their progress events relayed to the parent's bars ----

class QueueProgress(Progress):
    """A worker's Progress: every call becomes a message for the parent (epoch bars, latency)."""

    def __init__(self, queue: Any) -> None:
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

    def __init__(self, queue: Any, progress: Progress) -> None:
        self.queue, self.progress = queue, progress
        self.tasks: dict[tuple[int, int], int] = {}
        self.thread = threading.Thread(target=self._drain, daemon=True)

    def __enter__(self) -> "Relay":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
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


def _init_worker(queue: Any, parent: int, run_dir: str) -> None:
    import fcntl

    # Held (shared) for the worker's life: a rerun after a SIGKILL waits until orphans are gone.
    fd = os.open(os.path.join(run_dir, ".workers.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)
    _WORKER.update(queue=queue, lock_fd=fd)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _watch_parent(parent: int) -> None:
    """An orphaned worker (the study was SIGKILLed) exits within a second, busy or idle, instead of
    racing the rerun for the same cache folders."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def wait_for_orphans(run_dir: Path, timeout: float = 300.0) -> None:
    """Workers of a killed study exit within a second (`_watch_parent`); wait for them before starting."""
    import fcntl

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


def _run_relayed(recipe: Recipe, opts: Any, base: Work, tree: list[Work], done: set[str],
                 pending: frozenset[tuple[str, str, int]]) -> list[tuple[str, str]]:
    progress = QueueProgress(_WORKER["queue"])
    return _run_unit(recipe, opts, base, tree, done, progress, None, pending)
