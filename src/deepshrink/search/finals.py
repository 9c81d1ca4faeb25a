"""The final of a speed search: the fastest feasible trials timed again, together, before one is chosen.

Each trial's us_b1/us_b256 was timed in its own run, beside the baseline but not beside its rivals,
and often while another trial trained (`--jobs 2`). On resnet8 (AMD EPYC, OpenVINO INT8, 1 thread)
that ranked the wrong trial first: the inner-halved pipeline measured 58.9 µs at batch 1 during the
search and the all-halved one 77.5, where one interleaved run put them the other way round. Times
that divide only within one run (README: "Measure timings as ratios within one run") are compared so.
"""

import math
import shutil
from typing import Any

from deepshrink.measure.latency import measure_latency
from deepshrink.progress import Progress
from deepshrink.search.budget import TIMED_METRICS, Budget
from deepshrink.search.trial import TIMING, Env, fastest
from deepshrink.study.variant import ship

# Rivals within this factor of the best search-time figure are raced; a trial 1.5x slower in its own
# run is past what load and one OpenVINO compile against another moved a figure (up to 1.3x seen).
WITHIN = 1.5
FINALISTS = 3  # at most: each costs an export and a few seconds of timing


def finalists(fit: list[dict[str, Any]], budget: Budget) -> list[dict[str, Any]]:
    """The feasible trials worth racing, best first; none unless the one objective is a time."""
    if len(budget.objectives) != 1 or budget.objectives[0] not in TIMED_METRICS or len(fit) < 2:
        return []
    key = budget.objectives[0]
    ranked = sorted((r for r in fit if math.isfinite(r[key])), key=lambda r: (r[key], r["drop"]))
    if not ranked:
        return []
    return [r for r in ranked if r[key] <= ranked[0][key] * WITHIN][:FINALISTS]


def race(env: Env, rivals: list[dict[str, Any]], progress: Progress) -> tuple[dict[str, Any], dict[str, float]]:
    """The rival fastest in one interleaved timing on validation images (each in its fastest runtime,
    1 thread), and every rival's time in it by trial number. The weights come from the step cache; only
    the artifact is made again (the trial measured its accuracy)."""
    batch = 1 if env.budget.objectives[0] == "us_b1" else TIMING.batch
    folder = env.out / ".trials" / "final"
    try:
        named = [(str(r["number"]), ship(env.variant(tuple(r["steps"])), env.val, folder / str(r["number"]))[0])
                 for r in rivals]
        rows = measure_latency([("baseline", env.base_val.artifact), *named], env.val.test_x[:1024].numpy(),
                               TIMING, progress)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    times = {name: fastest(rows, name, batch) for name, _ in named}
    best = min(rivals, key=lambda r: (times[str(r["number"])], r["drop"]))
    return best, times
