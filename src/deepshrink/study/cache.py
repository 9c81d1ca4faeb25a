"""Step outputs on disk (safetensors + manifest + a sidecar with what the Variant carries), keyed by
`plan.step_key`, and `realize`: a pipeline's variant computed from the longest prefix already in
memory or on disk, so pipelines sharing a prefix compute it once.
"""

import copy
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from deepshrink.checkpoint import atomic_write_bytes, load_checkpoint, paths_for, save_checkpoint
from deepshrink.errors import UserError
from deepshrink.study.plan import step_key
from deepshrink.study.recipe import BASELINE_PLACEHOLDER
from deepshrink.train import TrainLog
from deepshrink.variant import Deployment, Variant


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
        with key_lock(cache, key):
            v, seconds = cached_or_compute(cache / key, ids(steps), compute, fresh)
    except Exception as e:
        memo.failed[steps] = _reason(e)
        raise
    v.id = ids(steps)
    memo.done[steps] = (v, key, parent_seconds + seconds)
    return copy.deepcopy(v), parent_seconds + seconds


def key_lock(cache: Path, key: str) -> FileLock:
    """One step output computed by one process at a time: a search's concurrent trials (or a resumed
    search and an orphan of the killed one) may reach the same prefix together; the second waits and
    loads what the first saved, instead of deleting the folder the first is writing. Held only around
    one step, never while waiting for another, so two holders cannot deadlock."""
    cache.mkdir(parents=True, exist_ok=True)
    return FileLock(str(cache / f".{key}.lock"))


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if isinstance(e, UserError | RuntimeError) else f"{type(e).__name__}: {text}"


def failure_reason(e: BaseException) -> str:
    return _reason(e)[:300]
