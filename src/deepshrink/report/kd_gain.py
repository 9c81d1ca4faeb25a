"""The distillation gain a user can act on: the distilled student at its best effort against the same
student trained from scratch at its best effort (both `control=best`), paired by seed.

Uncertainty: the per-seed differences (distilled − scratch, same seed) give a mean ± sample std and a
95 % Student-t interval for the mean; "no measurable gain" when that interval covers 0.
"""

import math
import statistics

from deepshrink.report.numbers import num as _num
from deepshrink.report.rundata import Row, RunData, ok
from deepshrink.report.specs import DS_NAME, MODEL_NAME

SCRATCH_BEST, DISTILL_BEST = "student-best", "distill-best"
STUDENT_HOST = "lenet-5"  # the scratch rows run once, under this baseline (they need no teacher)
# Two-sided 95 % quantiles of Student's t by degrees of freedom (no SciPy dependency for ten numbers).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def paired_diffs(distilled: list[Row], scratch: list[Row]) -> list[float]:
    """distilled − scratch accuracy (points) for every seed both finished."""
    by_seed = {r.get("seed"): _num(r.get("accuracy_pct")) for r in scratch if ok(r)}
    out = []
    for r in distilled:
        a, b = _num(r.get("accuracy_pct")), by_seed.get(r.get("seed"))
        if ok(r) and a is not None and b is not None:
            out.append(a - b)
    return out


def interval(diffs: list[float]) -> tuple[float, float, float, float] | None:
    """(mean, sample std, 95 % t-interval low, high); None below two seeds (no spread to judge by)."""
    if len(diffs) < 2:
        return None
    mean, std = statistics.fmean(diffs), statistics.stdev(diffs)
    half = _T95.get(len(diffs) - 1, 1.96) * std / math.sqrt(len(diffs))
    return mean, std, mean - half, mean + half


def gain_sentence(teacher: str, diffs: list[float]) -> str:
    name = MODEL_NAME.get(teacher, teacher)
    if not diffs:
        return f"Teacher {name}: no seed has both best-effort rows, so no gain is stated."
    stats = interval(diffs)
    if stats is None:
        return (f"Teacher {name}: distillation gain over the best-effort scratch student {diffs[0]:+.2f} pt "
                f"(one seed: no uncertainty, so the gain cannot be judged).")
    mean, std, lo, hi = stats
    verdict = "no measurable gain" if lo <= 0 <= hi else ("a measurable gain" if lo > 0 else "a measurable loss")
    return (f"Teacher {name}: distillation gain over the best-effort scratch student {mean:+.2f} ± {std:.2f} pt "
            f"(mean ± sample std of the {len(diffs)} paired per-seed differences; 95 % t-interval "
            f"[{lo:+.2f}, {hi:+.2f}] pt): {verdict}.")


def gain_note(data: RunData, ds: str) -> str:
    """The sentences under a distillation table: one per teacher with a best-effort distilled row."""
    scratch = data.find_all(ds, STUDENT_HOST, SCRATCH_BEST)
    lines = [gain_sentence(t, paired_diffs(data.find_all(ds, t, DISTILL_BEST), scratch))
             for t in MODEL_NAME if data.find_all(ds, t, DISTILL_BEST)]
    if not lines:
        return ""
    return (f"{DS_NAME.get(ds, ds)}: " + " ".join(lines) + " Best effort: augmentation (none or the dataset's) "
            "chosen on the validation split at seed 0 and kept for every seed, epochs on validation under the "
            "same epoch cap, for the scratch and the distilled student alike.")
