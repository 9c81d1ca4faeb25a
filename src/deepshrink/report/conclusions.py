"""The generated "Conclusions" at the top of the report: per technique family (quantization, pruning,
distillation, pipelines of several), what its variants bought against their own baselines — bytes,
accuracy points and speed as shipped (the deployed runtime's paired speedup) — judged against the timing
noise measured in the same run, and the distillation verdict (report/kd_gain.py). Every number is read
from the run's files; sentences are templates.
"""

import statistics
from collections.abc import Callable

from deepshrink.report.kd_gain import gain_note
from deepshrink.report.numbers import DASH, num, sig
from deepshrink.report.rundata import Noise, Row, RunData, ok
from deepshrink.report.specs import DS_NAME
from deepshrink.report.tables import Table, noise_note

FAMILIES = {"quantize": "quantization", "prune": "pruning", "distill": "distillation", "cluster": "clustering",
            "encode": "clustering"}
ORDER = ["quantization", "pruning", "distillation", "clustering", "pipelines"]
ACC_KEPT = 1.0  # points: "kept its accuracy" within this of its baseline


def family(row: Row) -> str | None:
    """The technique family of a variant's steps; `pipelines` when they mix families; None for a baseline."""
    steps = [s.strip() for s in (row.get("recipe_steps") or row.get("pipeline") or "").split("|") if s.strip()]
    kinds = {FAMILIES.get(s.split(":")[0].split(".")[0], "other") for s in steps}
    if not kinds:
        return None
    return kinds.pop() if len(kinds) == 1 else "pipelines"


def _span(values: list[float], show: Callable[[float], str]) -> str:
    if not values:
        return DASH
    lo, hi, mid = min(values), max(values), statistics.median(values)
    return show(mid) if lo == hi else f"{show(mid)} (median; {show(lo)} to {show(hi)})"


def _speed_verdict(speedups: list[float], noise: Noise | None) -> str:
    if not speedups:
        return "no variant timed beside its baseline"
    within = sum(1 for s in speedups if noise and noise.within(s))
    faster = sum(1 for s in speedups if s > 1 and not (noise and noise.within(s)))
    slower = len(speedups) - within - faster
    return f"{faster} faster, {within} within noise, {slower} slower"


def _best(rows: list[tuple[Row, float, float, float | None]]) -> str:
    """The smallest file that kept its accuracy (within ACC_KEPT points of its own baseline)."""
    kept = [r for r in rows if r[2] >= -ACC_KEPT]
    if not kept:
        return f"no variant kept its accuracy within {ACC_KEPT:g} point of its baseline"
    row, smaller, delta, speedup = max(kept, key=lambda r: r[1])
    speed = f"{sig(speedup)}x as shipped" if speedup else "no paired speedup"
    return (f"smallest that kept its accuracy: {row['variant']}, {sig(smaller)}x smaller, {delta:+.2f} points, "
            f"{speed}")


def _measured(data: RunData, row: Row) -> tuple[Row, float, float, float | None] | None:
    base = data.row(row.get("baseline_variant", ""))
    size, base_size = num(row.get("size_bytes")), num(base.get("size_bytes")) if base else None
    acc, base_acc = num(row.get("accuracy_pct")), num(row.get("baseline_accuracy_pct"))
    if not size or not base_size or acc is None or base_acc is None:
        return None
    tm = data.timing(row["variant"])
    if tm and tm.speedup is not None:  # name the runtime it ships on beside its speedup
        row = {**row, "variant": f"{row['variant']} ({tm.runtime})"}
    return row, base_size / size, acc - base_acc, tm.speedup if tm else None


def distill_verdict(data: RunData) -> str:
    datasets = dict.fromkeys(r.get("dataset", "") for r in data.results)
    notes = [gain_note(data, ds).split(" Best effort:")[0] for ds in datasets]
    notes = [n for n in notes if n]
    return " ".join(notes) if notes else "no best-effort distilled and scratch students in this run, so no verdict"


def conclusions_table(data: RunData) -> Table:
    t = Table("conclusions", "Conclusions", ["technique", "variants", "× smaller", "accuracy change, points",
                                             "speedup as shipped (paired)", "faster / within noise / slower",
                                             "what it bought"])
    noise = data.noise()
    by_family: dict[str, list[tuple[Row, float, float, float | None]]] = {}
    for r in data.results:
        fam = family(r)
        if fam and ok(r) and (m := _measured(data, r)):
            by_family.setdefault(fam, []).append(m)
    for fam in sorted(by_family, key=lambda f: ORDER.index(f) if f in ORDER else len(ORDER)):
        rows = by_family[fam]
        speedups = [s for *_, s in rows if s is not None]
        bought = _best(rows) + (f". Verdict: {distill_verdict(data)}" if fam == "distillation" else "")
        t.rows.append([fam, str(len(rows)), _span([r[1] for r in rows], sig),
                       _span([r[2] for r in rows], lambda v: f"{v:+.2f}"), _span(speedups, sig),
                       _speed_verdict(speedups, noise), bought])
    sets = ", ".join(DS_NAME.get(d, d) for d in dict.fromkeys(r.get("dataset", "") for r in data.results))
    t.note = (f"Each variant against its own baseline ({sets}): bytes of the file that ships, accuracy points, "
              "and the speedup of the runtime it ships on, from the one run that timed it interleaved with its "
              "baseline (a variant without one counts in no speedup). " + noise_note(data))
    return t
