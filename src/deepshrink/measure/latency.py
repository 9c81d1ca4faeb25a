"""Time per image, measured honestly (SPEC §6):

(a) the study's method: the whole test set in batches (default 256), median of `repeats` passes
    after a warm-up pass, divided by the image count;
(b) batch-1 latency: median of >= 1,000 single-image calls.

Artifacts measured together are interleaved pass by pass, so a speedup is a ratio taken within
one run under the same machine load.
"""

import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from deepshrink.export import Artifact, Runner
from deepshrink.progress import Progress, null_progress


@dataclass(frozen=True)
class LatencyConfig:
    runtimes: tuple[str, ...] = ("torch", "onnxruntime")
    threads: tuple[int, ...] = (1, 0)  # 0 = all cores
    batch: int = 256
    repeats: int = 10
    single_calls: int = 1000
    devices: tuple[str, ...] = ("cpu",)  # "cuda" added when present


def all_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _runs_on_cuda(runtime: str) -> bool:
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


def _singles(run: Runner, x: np.ndarray, calls: int, offset: int) -> list[float]:
    out = []
    for k in range(calls):
        i = (offset + k) % len(x)
        xi = x[i : i + 1]
        t0 = time.perf_counter_ns()
        run(xi)
        out.append((time.perf_counter_ns() - t0) / 1000.0)
    return out


def _summary(values_us: list[float]) -> dict[str, float]:
    return {"us_per_image_median": statistics.median(values_us), "us_per_image_min": min(values_us),
            "us_per_image_max": max(values_us)}


def measure_latency(named: Sequence[tuple[str, Artifact]], x: np.ndarray, cfg: LatencyConfig,
                    progress: Progress | None = None) -> list[dict[str, object]]:
    """Rows (variant, runtime, device, threads, batch, us_per_image_*) for each artifact and setting.

    The first artifact of `named` is the reference for `speedup` (baseline time / variant time).
    """
    progress = progress or null_progress()
    rows: list[dict[str, object]] = []
    settings = [(rt, dev, th) for dev in cfg.devices for rt in cfg.runtimes for th in cfg.threads
                if dev == "cpu" or (th == cfg.threads[0] and _runs_on_cuda(rt))]
    task = progress.add("latency", total=len(settings))
    prev_threads = torch.get_num_threads()
    try:
        for runtime, device, threads in settings:
            n_threads = threads or all_cores()
            torch.set_num_threads(n_threads)
            runners = [(v, a.runners[runtime](n_threads, device), a) for v, a in named if runtime in a.runners]
            if not runners:
                continue
            xs = {v: x.astype(a.input_dtype, copy=False) for v, _, a in runners}
            batched: dict[str, list[float]] = {v: [] for v, _, _ in runners}
            single: dict[str, list[float]] = {v: [] for v, _, _ in runners}
            for v, run, _ in runners:  # warm-up pass each (allocations, kernel selection)
                _pass(run, xs[v], cfg.batch)
            for _ in range(cfg.repeats):
                for v, run, _ in runners:
                    batched[v].append(_pass(run, xs[v], cfg.batch) / len(x) * 1e6)
            chunk = 100
            for start in range(0, cfg.single_calls, chunk):
                for v, run, _ in runners:
                    single[v] += _singles(run, xs[v], min(chunk, cfg.single_calls - start), start)
            thread_label = n_threads if device == "cpu" else 0
            for mode_batch, table in ((cfg.batch, batched), (1, single)):
                ref = statistics.median(table[runners[0][0]])
                for v, _, _ in runners:
                    s = _summary(table[v])
                    rows.append({"variant": v, "runtime": runtime, "device": device, "threads": thread_label,
                                 "batch": mode_batch, **s,
                                 "speedup": ref / s["us_per_image_median"] if s["us_per_image_median"] else 0.0,
                                 "reference": runners[0][0]})
            progress.update(task, advance=1, info=f"{runtime} {device} {n_threads}t")
    finally:
        torch.set_num_threads(prev_threads)
        progress.finish(task)
    return rows
