"""The "never slower" deployment choice: an artifact's runtimes timed side by side on calibration
images, 1 thread, at batch 256 (the study's method) and batch 1, through the one timing loop
(measure/latency.py). What each batch deploys is recorded in the results row (`deployed_runtime`,
`deployed_runtime_b1`, `notes`) and runs the accuracy measurement.

Every timing-based choice keeps an incumbent unless a challenger beats it by a margin (`keep_unless`,
`[measure] choice_margin`, 3 % by default): two runtimes within a few percent of each other swap places
from run to run on a shared machine (13.83 vs 13.92 µs decided one variant), and a choice that flips on
noise makes two runs of one study disagree about what ships. Here the incumbent is ONNX Runtime, the
dense reference every artifact offers.
"""

import statistics
from collections.abc import Mapping, MutableMapping
from dataclasses import replace
from typing import Any

import numpy as np
import onnx
import torch

from deepshrink import quiet
from deepshrink.errors import UserError
from deepshrink.export.conv_pool import find_pairs
from deepshrink.export.runners import OrtRunner
from deepshrink.measure.latency import RunnerFactory, pinned, time_passes, time_singles

BATCH = 256
# One batch per timed pass, thirty passes per runner, interleaved; the median is taken. A short pass is
# preempted by another job less often than a long one, so more of the passes are clean; a pass is a
# few ms, so thirty cost little.
IMAGES = 256
REPEATS = 30
# Single calls: cheap (a few µs each), so many, interleaved in short chunks: in chunks of 50 (four per
# runner) a slow stretch of the machine landed on one runner, and an mlp-50's full INT8 timed 9.1 µs in
# one study and 13.7 µs in the next, flipping its INT8 mode.
SINGLES = 600
SINGLE_CHUNK = 10
DEFAULT_MARGIN = 0.03  # a challenger must be this much faster (fraction of the incumbent's time)
# A runtime over this many times the fastest after a few rounds is timed no more (latency.py `_racing`):
# no margin (< 1) lets it win, and a hopeless one (PyTorch's fp16 on a CPU) cost 90 % of a choice's time.
HOPELESS = 3.0


def calib_images(calib: np.ndarray, n: int = IMAGES) -> np.ndarray:
    """`n` images cycled from the calibration set (512 training images in a study)."""
    return np.resize(calib, (n, *calib.shape[1:]))


def time_runtimes(runners: Mapping[str, RunnerFactory], x: np.ndarray) -> dict[int, dict[str, float]]:
    """batch -> runtime -> µs per image, 1 thread, runtimes interleaved: the median of the batched passes
    (each led by an untimed batch, in a shuffled order per round) and of the single calls (hundreds: a
    preempted call barely moves it). Medians, not minima: a minimum is one lucky pass, and which runner
    gets it is itself noise."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with quiet.quiet(), pinned(1):  # in a study, no other worker trains or times meanwhile
            made = {k: f(1, "cpu") for k, f in runners.items()}
            xs = dict.fromkeys(made, x)
            batched = time_passes(made, xs, BATCH, REPEATS, drop_above=HOPELESS)
            single = time_singles(made, xs, SINGLES, chunk=SINGLE_CHUNK, drop_above=HOPELESS)
    finally:
        torch.set_num_threads(prev)
    return {BATCH: {k: statistics.median(v) for k, v in batched.items()},
            1: {k: statistics.median(v) for k, v in single.items()}}


def check_margin(margin: float, where: str = "choice_margin") -> float:
    if not 0.0 <= margin < 1.0:
        raise UserError(f"{where}: must be >= 0 and < 1 (a fraction of the incumbent's time), got {margin}")
    return margin


def keep_unless(times: Mapping[str, Mapping[int, float]], incumbent: str, margin: float) -> str:
    """The choice among timed candidates (candidate -> batch -> µs): the challenger whose worst batch
    gains most on the incumbent wins only when it is at least `margin` faster there, i.e. its time is at
    most (1 - margin) x the incumbent's at every batch; otherwise the incumbent stays."""
    check_margin(margin)
    best = best_challenger(times, incumbent)
    if best is None:
        return incumbent
    return best if _worst_ratio(times, best, incumbent) <= 1.0 - margin else incumbent


def _worst_ratio(times: Mapping[str, Mapping[int, float]], name: str, incumbent: str) -> float:
    """Challenger time / incumbent time at the challenger's least favourable batch."""
    inc = times[incumbent]
    return max(times[name][b] / inc[b] if inc[b] > 0 else float("inf") for b in inc)


def best_challenger(times: Mapping[str, Mapping[int, float]], incumbent: str) -> str | None:
    """The candidate other than the incumbent whose worst batch comes closest to (or beats) it."""
    return min((k for k in times if k != incumbent), key=lambda k: _worst_ratio(times, k, incumbent), default=None)


def choose_runtime(runners: Mapping[str, RunnerFactory], calib: np.ndarray, reference: str = "onnxruntime",
                   margin: float = DEFAULT_MARGIN) -> dict[str, Any]:
    """Info for the artifact: per batch (256 and 1), the runtime it deploys (`reference`, the dense ONNX
    Runtime model, unless another is `margin` faster at that batch), every runtime's µs per image and a
    note saying what was chosen against what."""
    if len(runners) < 2:
        only = next(iter(runners))
        return {"deployed_runtime": only, "deployed_runtime_b1": only}
    us = time_runtimes(runners, calib_images(calib))
    ref = reference if reference in runners else next(iter(runners))
    best = {b: keep_unless({k: {b: v} for k, v in t.items()}, ref, margin) for b, t in us.items()}
    info: dict[str, Any] = {"deployed_runtime": best[BATCH], "deployed_runtime_b1": best[1],
                            "deployed_by": f"measured (calibration images, 1 thread, medians; {ref} kept "
                                           f"unless another is {margin:.0%} faster)"}
    for b, t in us.items():
        info.update({f"deploy_us_b{b}_{k}": round(v, 3) for k, v in t.items()})
    info["notes"] = (f"deployed: {_verdict(us[BATCH], best[BATCH], ref)} at batch {BATCH}, "
                     f"{_verdict(us[1], best[1], ref)} at batch 1")
    return info


def _verdict(us: dict[str, float], chosen: str, ref: str) -> str:
    """The choice with both times: `sparse (2.10x onnxruntime: 1.2 vs 2.5 µs)`, or the incumbent beside the
    fastest challenger it kept out (`onnxruntime (kept: torch 0.98x, 10.1 vs 9.9 µs)`)."""
    if chosen != ref:
        return f"{chosen} ({us[ref] / us[chosen]:.2f}x {ref}: {us[chosen]:.3g} vs {us[ref]:.3g} µs)"
    rival = min((k for k in us if k != ref), key=lambda k: us[k])
    return f"{ref} (kept: {rival} {us[ref] / us[rival]:.2f}x, {us[ref]:.3g} vs {us[rival]:.3g} µs)"


def tune_onnxruntime(runners: MutableMapping[str, RunnerFactory], calib: np.ndarray,
                     margin: float = DEFAULT_MARGIN) -> dict[str, Any]:
    """The graph ONNX Runtime runs for an artifact: its file as written, or with its first k conv + max-pool
    pairs as polyphase convolutions (conv_pool.py), timed side by side like the runtimes (1 thread, batch
    256 and 1, medians). The file's own graph is kept unless a rewrite is `margin` faster at both batches;
    the winner replaces the `onnxruntime` runner, so every later timing and the accuracy run use it, and
    the info says what was chosen (empty when the graph has no such pair)."""
    ort = runners.get("onnxruntime")
    if not isinstance(ort, OrtRunner):
        return {}
    model = ort.loaded()
    n = len(find_pairs(onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(model)))
    if not n:
        return {}
    candidates = {str(k): replace(ort, fused=k) for k in range(n + 1)}
    us = time_runtimes(candidates, calib_images(calib))
    times = {k: {b: t[k] for b, t in us.items()} for k in candidates}
    best = keep_unless(times, "0", margin)
    runners["onnxruntime"] = candidates[best]
    info: dict[str, Any] = {"ort_conv_pool_pairs": n, "ort_conv_pool_fused": int(best)}
    info.update({f"ort_conv_pool_us_b{b}_{k}": round(v, 3) for b, t in us.items() for k, v in t.items()})
    speedup = times["0"][BATCH] / times[best][BATCH]
    info["notes"] = (f"onnxruntime runs {best} of {n} conv + max-pool pairs as polyphase convolutions "
                     f"({speedup:.2f}x the file's own graph at batch {BATCH}; kept unless {margin:.0%} faster "
                     f"at batch {BATCH} and 1)")
    return info
