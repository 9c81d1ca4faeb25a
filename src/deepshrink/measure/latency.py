"""Time per image, measured honestly (SPEC §6), through ONE timing loop (`time_passes`) that every
timing in deepshrink uses — the study's tables, the INT8 "never slower" choice, the sparse-kernel check:

(a) the study's method: the whole test set in batches (default 256), median of `repeats` passes
    after a warm-up (the first batches), divided by the image count;
(b) batch-1 latency: median of >= 1,000 single-image calls.

Runners timed together are interleaved pass by pass, so a speedup is a ratio taken within one run
under the same machine load.
"""

import math
import os
import random
import statistics
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from deepshrink import quiet
from deepshrink.progress import Progress, null_progress
from deepshrink.provenance import all_cores

# A runner maps an input batch to logits; a factory makes one per (threads, device).
Runner = Callable[[np.ndarray], np.ndarray]
RunnerFactory = Callable[[int, str], Runner]

# Runtimes an artifact may offer: "sparse" is deepshrink's own kernels for unstructured-pruned Linear
# chains (export/runtimes/sparse.py), "c" the microcontroller target's C built for this host (deepshrink.mcu);
# both CPU only.
RUNTIMES = ("torch", "onnxruntime", "openvino", "sparse", "c")
CPU_ONLY = frozenset({"sparse", "c", "openvino"})


class Timeable(Protocol):
    """What can be timed: an exported artifact's runners and the input dtype they take."""

    runners: dict[str, RunnerFactory]
    input_dtype: Any


@dataclass(frozen=True)
class LatencyConfig:
    """The measurement defaults (recipes' `[measure]` section extends this, see study.recipe)."""

    runtimes: tuple[str, ...] = RUNTIMES  # each artifact is timed in those it offers
    threads: tuple[int, ...] = (1, 0)  # 0 = all cores
    batch: int = 256
    repeats: int = 10
    single_calls: int = 1000
    devices: tuple[str, ...] = ("cpu",)  # "cuda" added when present


@contextmanager
def pinned(threads: int) -> Iterator[None]:
    """A 1-thread timing on one core: the calling thread pinned to the last core it may use, then
    released. Left to migrate, one file's median varied 1.11x between processes (cifar10 LeNet-300-100,
    ONNX Runtime, 10.65-11.82 µs); pinned, 1.03x (10.56-10.87). The last core, because Linux steers
    device interrupts and housekeeping to CPU 0 (the same file on CPU 0: 2.80-3.72 µs, on CPU 1:
    2.85-2.93). A process spinning on that core is moved off it by the scheduler, which sees an idle one."""
    if threads != 1 or not hasattr(os, "sched_setaffinity"):
        yield
        return
    allowed = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {max(allowed)})
    except OSError:  # a container may forbid it: time unpinned rather than not at all
        yield
        return
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


def _runs_on_cuda(runtime: str) -> bool:
    if runtime in CPU_ONLY:
        return False
    if runtime != "onnxruntime":
        return True
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def _pass(run: Runner, x: np.ndarray, batch: int) -> float:
    """Seconds for one pass over `x` in batches."""
    t0 = time.perf_counter()
    for i in range(0, len(x), batch):
        run(x[i : i + batch])
    return time.perf_counter() - t0


# A warm-up needs the first batches (allocations, kernel selection), not the whole test set: a full pass
# was a tenth of every timing, 30 s of the paper study.
WARMUP_BATCHES = 8


# A race (`drop_above`): after this many rounds, a runner whose median is over `drop_above` times the
# fastest one's is timed no more. A choice's margin is a few percent, so such a runner cannot win it,
# and timing it out costs most of the choice: PyTorch's fp16 kernels on this CPU took 100 s of a 110 s
# runtime choice for resnet8.
RACE_ROUNDS = 3


def _racing(out: dict[str, list[float]], live: list[str], drop_above: float, keep: Collection[str] = ()) -> list[str]:
    """The runners still in the race: within `drop_above` times the fastest median so far, and those in `keep`
    (a choice's incumbent: what every challenger is compared with round by round)."""
    medians = {k: statistics.median(out[k]) for k in live}
    fastest = min(medians.values())
    return [k for k in live if k in keep or medians[k] <= drop_above * fastest]


def time_passes(runners: Mapping[str, Runner], xs: Mapping[str, np.ndarray], batch: int,
                repeats: int, drop_above: float = math.inf, keep: Collection[str] = ()) -> dict[str, list[float]]:
    """µs per image of each of `repeats` batched passes per runner, after a warm-up of up to
    `WARMUP_BATCHES` batches each, each pass led by one untimed batch. Passes are interleaved runner by
    runner, so load hits all alike, in an order shuffled every round (`_order`); a runner far behind
    after `RACE_ROUNDS` rounds stops there (`drop_above`, for choices, never one in `keep`; the tables time
    every round)."""
    for k, run in runners.items():
        _pass(run, xs[k][: batch * WARMUP_BATCHES], batch)
    out: dict[str, list[float]] = {k: [] for k in runners}
    live = list(runners)
    for r in range(repeats):
        for k in _order(live, r):
            # One untimed batch first: the pass before evicted this runner's weights from the caches, which
            # a deployed model running alone never sees (an INT8 mlp-50 timed 14 % slower after a LeNet-5
            # than after a LeNet-300-100 in the same study; a pass of it is only 2.6 ms).
            runners[k](xs[k][:batch])
            out[k].append(_pass(runners[k], xs[k], batch) / len(xs[k]) * 1e6)
        if r + 1 >= RACE_ROUNDS:
            live = _racing(out, live, drop_above, keep)
    return out


def _order(keys: list[str], r: int) -> list[str]:
    """Round r's order: the given one first, then a fixed shuffle per round. The passes right after a
    big model's run slow (an mlp-50 student timed after its LeNet-5 teacher: 0.455 µs, then 0.444, 0.437,
    0.432 for the next students, each 0.43 alone), so a fixed order charges that to the same runners in
    every round; shuffled, each gets it in few rounds, which the median drops."""
    return keys if r == 0 else random.Random(r).sample(keys, len(keys))


def median_us(runners: Mapping[str, Runner], x: np.ndarray, batch: int = 256, repeats: int = 7) -> dict[str, float]:
    """Median batched µs/image per runner on one input, through `time_passes`."""
    times = time_passes(runners, dict.fromkeys(runners, x), batch, repeats)
    return {k: statistics.median(v) for k, v in times.items()}


def _singles(run: Runner, x: np.ndarray, calls: int, offset: int) -> list[float]:
    out = []
    for k in range(calls):
        i = (offset + k) % len(x)
        xi = x[i : i + 1]
        t0 = time.perf_counter_ns()
        run(xi)
        out.append((time.perf_counter_ns() - t0) / 1000.0)
    return out


def time_singles(runners: Mapping[str, Runner], xs: Mapping[str, np.ndarray], calls: int,
                 chunk: int = 100, drop_above: float = math.inf, keep: Collection[str] = ()) -> dict[str, list[float]]:
    """µs of each of `calls` batch-1 calls per runner, interleaved in chunks of `chunk` calls; a runner
    far behind after `RACE_ROUNDS` chunks stops there (`drop_above` and `keep`, as in `time_passes`)."""
    out: dict[str, list[float]] = {k: [] for k in runners}
    live = list(runners)
    for r, start in enumerate(range(0, calls, chunk)):
        for k in _order(live, r):
            out[k] += _singles(runners[k], xs[k], min(chunk, calls - start), start)
        if r + 1 >= RACE_ROUNDS:
            live = _racing(out, live, drop_above, keep)
    return out


def _summary(values_us: list[float]) -> dict[str, float]:
    return {"us_per_image_median": statistics.median(values_us), "us_per_image_mean": statistics.fmean(values_us),
            "us_per_image_min": min(values_us), "us_per_image_max": max(values_us)}


def _with_reference(named: Sequence[tuple[str, Timeable]], runners: dict[str, Runner], runtime: str, threads: int,
                    device: str) -> tuple[dict[str, Runner], str]:
    """The runners, led by the reference artifact's. A runtime the reference lacks (the sparse kernels
    of a pruned variant) is compared with the reference's ONNX Runtime model, timed in the same run;
    returns the reference label for the rows."""
    ref, art = named[0]
    if ref in runners or len(named) < 2 or not art.runners:
        return runners, ref
    borrowed = "onnxruntime" if "onnxruntime" in art.runners else next(iter(art.runners))
    return {ref: art.runners[borrowed](threads, device), **runners}, f"{ref} ({borrowed})"


def _setting_rows(named: Sequence[tuple[str, Timeable]], x: np.ndarray, cfg: LatencyConfig, runtime: str,
                  device: str, n_threads: int) -> list[dict[str, object]]:
    """One (runtime, device, threads): every artifact offering the runtime timed interleaved with the
    reference, batched and at batch 1; each row carries the reference's median from the same passes."""
    own = {v: a.runners[runtime](n_threads, device) for v, a in named if runtime in a.runners}
    if not own:
        return []
    runners, ref_label = _with_reference(named, own, runtime, n_threads, device)
    dtypes = {v: a.input_dtype for v, a in named}
    xs = {v: x.astype(dtypes[v], copy=False) for v in runners}
    batched = time_passes(runners, xs, cfg.batch, cfg.repeats)
    single = time_singles(runners, xs, cfg.single_calls)
    reference = next(iter(runners))
    rows: list[dict[str, object]] = []
    for mode_batch, table in ((cfg.batch, batched), (1, single)):
        ref = statistics.median(table[reference])
        for v in own:
            s = _summary(table[v])
            rows.append({"variant": v, "runtime": runtime, "device": device,
                         "threads": n_threads if device == "cpu" else 0, "batch": mode_batch, **s,
                         "speedup": ref / s["us_per_image_median"] if s["us_per_image_median"] else 0.0,
                         "reference": ref_label, "reference_us_per_image_median": ref})
    return rows


def measure_latency(named: Sequence[tuple[str, Timeable]], x: np.ndarray, cfg: LatencyConfig,
                    progress: Progress | None = None) -> list[dict[str, object]]:
    """Rows (variant, runtime, device, threads, batch, us_per_image_*) for each artifact and setting.

    The first artifact of `named` is the reference for `speedup` (baseline time / variant time), in
    the same runtime, or in its ONNX Runtime model where it lacks the runtime (it gets no row then).
    In a study, nothing else of the study runs meanwhile (deepshrink.quiet).
    """
    progress = progress or null_progress()
    rows: list[dict[str, object]] = []
    settings = [(rt, dev, th) for dev in cfg.devices for rt in cfg.runtimes for th in cfg.threads
                if dev == "cpu" or (th == cfg.threads[0] and _runs_on_cuda(rt))]
    task = progress.add("latency", total=len(settings))
    prev_threads = torch.get_num_threads()
    with quiet.quiet():
        try:
            for runtime, device, threads in settings:
                n_threads = threads or all_cores()
                torch.set_num_threads(n_threads)
                with pinned(n_threads if device == "cpu" else 0):
                    rows += _setting_rows(named, x, cfg, runtime, device, n_threads)
                progress.update(task, advance=1, info=f"{runtime} {device} {n_threads}t")
        finally:
            torch.set_num_threads(prev_threads)
            progress.finish(task)
    return rows
