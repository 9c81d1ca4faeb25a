"""The "never slower" deployment choice: an artifact's runtimes timed side by side on calibration
images, 1 thread, at batch 256 (the study's method) and batch 1, through the one timing loop
(measure/latency.py). The fastest at each batch is what the variant deploys; it is recorded in the
results row (`deployed_runtime`, `deployed_runtime_b1`, `notes`) and runs the accuracy measurement.
"""

import statistics
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from deepshrink import quiet
from deepshrink.measure.latency import RunnerFactory, time_passes, time_singles

BATCH = 256
IMAGES = 512  # calibration images per batched pass (2 batches; a study calibrates on 512)
REPEATS = 5
SINGLES = 200


def calib_images(calib: np.ndarray, n: int = IMAGES) -> np.ndarray:
    """`n` images cycled from the calibration set (512 training images in a study)."""
    return np.resize(calib, (max(n, len(calib)), *calib.shape[1:]))


def time_runtimes(runners: Mapping[str, RunnerFactory], x: np.ndarray) -> dict[int, dict[str, float]]:
    """batch -> runtime -> µs per image, 1 thread, runtimes interleaved: the fastest of the batched
    passes (a pass holds ~1 ms of work, so one preemption by another job moves a median of five; on
    a loaded 2-core machine that picked ONNX Runtime over a sparse kernel twice its speed) and the
    median of the single calls (hundreds: a preempted call barely moves it)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with quiet.quiet():  # in a study, no other worker trains or times meanwhile
            made = {k: f(1, "cpu") for k, f in runners.items()}
            xs = dict.fromkeys(made, x)
            batched = time_passes(made, xs, BATCH, REPEATS)
            single = time_singles(made, xs, SINGLES, chunk=50)
    finally:
        torch.set_num_threads(prev)
    return {BATCH: {k: min(v) for k, v in batched.items()}, 1: {k: statistics.median(v) for k, v in single.items()}}


def _faster(us: dict[str, float], name: str, ref: str) -> str:
    return f"{name} ({us[ref] / us[name]:.2f}x {ref})" if name != ref else name


def choose_runtime(runners: Mapping[str, RunnerFactory], calib: np.ndarray, reference: str = "onnxruntime",
                   ) -> dict[str, Any]:
    """Info for the artifact: the fastest runtime at batch 256 and at batch 1, each one's µs per image
    and a note saying what was chosen against `reference` (the dense ONNX Runtime model)."""
    if len(runners) < 2:
        only = next(iter(runners))
        return {"deployed_runtime": only, "deployed_runtime_b1": only}
    us = time_runtimes(runners, calib_images(calib))
    ref = reference if reference in runners else next(iter(runners))
    best = {b: min(t, key=lambda k: t[k]) for b, t in us.items()}
    info: dict[str, Any] = {"deployed_runtime": best[BATCH], "deployed_runtime_b1": best[1],
                            "deployed_by": "measured (calibration images, 1 thread)"}
    for b, t in us.items():
        info.update({f"deploy_us_b{b}_{k}": round(v, 3) for k, v in t.items()})
    info["notes"] = (f"deployed: {_faster(us[BATCH], best[BATCH], ref)} at batch {BATCH}, "
                     f"{_faster(us[1], best[1], ref)} at batch 1")
    return info
