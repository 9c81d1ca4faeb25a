"""The report's "Search under a budget" section (a run directory `deepshrink search` wrote): the
trials on the validation split, the objective against the accuracy drop with the Pareto front, the
hand-tuned recipes' pipelines (the seeded trials) marked, and what each chosen pipeline is, re-measured
on the test set (results.csv). A pure function of trials.csv, results.csv and provenance.json."""

import math
from pathlib import Path

import matplotlib.pyplot as plt

from deepshrink.report.plots import Figure, save
from deepshrink.report.rundata import RunData
from deepshrink.report.tables import Table
from deepshrink.results import read_rows

Row = dict[str, str]
COLUMNS = ["trial", "pipeline", "seeded from", "bytes", "val accuracy (%)", "drop (pt)", "test accuracy (%)",
           "artifact bytes (test run)", "fits"]


# objective -> (divisor, axis label) of the search figure's x axis
AXES: dict[str, tuple[float, str]] = {
    "bytes": (1000.0, "file that ships (kB)"), "flash": (1000.0, "Cortex-M4 flash (kB)"),
    "ram": (1000.0, "Cortex-M4 RAM (kB)"), "instructions": (1e6, "Cortex-M4 instructions (millions)"),
    "us_b1": (1.0, "µs per image at batch 1"), "us_b256": (1.0, "µs per image at batch 256"),
}


def _objective(budget: str) -> str:
    """The first objective of a `Budget.describe()` text ("drop<=1; minimize us_b1", "...; pareto bytes+drop")."""
    goal = budget.rpartition("; ")[2].split(" ")
    return goal[1].split("+")[0] if len(goal) == 2 and goal[1].split("+")[0] in AXES else "bytes"


def _trials(data: RunData) -> list[Row]:
    return read_rows(data.run_dir / "trials.csv") if data.run_dir is not None else []


def _f(row: Row, key: str) -> float:
    try:
        return float(row.get(key, "nan"))
    except ValueError:
        return math.nan


def _num(row: Row, key: str, fmt: str) -> str:
    x = _f(row, key)
    return format(x, fmt) if math.isfinite(x) else "-"


def search_table(data: RunData) -> Table | None:
    trials = _trials(data)
    if not trials:
        return None
    info = data.provenance.get("search") or {}
    chosen = {int(n) for n in info.get("chosen_trials", [])}
    variants = info.get("chosen_variants", {})
    by_variant = {r.get("variant", ""): r for r in data.results}
    rows = []
    for t in trials:
        if int(t["number"]) not in chosen and t.get("seeded_from", "") == "":
            continue
        test = by_variant.get(variants.get(t["number"], ""), {})
        rows.append([f"{t['number']}{' (chosen)' if int(t['number']) in chosen else ''}", t["pipeline"],
                     t.get("seeded_from") or "-", _num(t, "bytes", ",.0f"), _num(t, "val_accuracy_pct", ".2f"),
                     _num(t, "drop", ".2f"), f"{_f(test, 'accuracy_pct'):.2f}" if test else "-",
                     f"{int(_f(test, 'size_bytes')):,}" if test else "-",
                     "yes" if t.get("feasible") == "True" else (t.get("misses") or t.get("state", "").lower())])
    done = sum(t["state"] == "COMPLETE" for t in trials)
    untrained = sum(t["state"] == "PRUNED" and t.get("notes", "").startswith("before training") for t in trials)
    stopped = sum(t["state"] == "PRUNED" for t in trials) - untrained
    note = (f"Budget: {info.get('budget', '?')}. {len(trials)} trials: {done} measured as shipped on the validation "
            f"split, {untrained} stopped before training (their untrained artifact could not win), {stopped} "
            "stopped early (hopeless after a training step), the rest failed (trials.csv says why). Rows: the "
            "chosen trial(s), re-measured on the test set beside the baseline, and the hand-tuned recipes' "
            "pipelines, which run first.")
    if not info.get("feasible", True):
        note += " No trial fit the budget: the chosen rows are the closest, and the last column says by how much."
    return Table("search", "Search under a budget", COLUMNS, rows, note)


def search_figure(data: RunData, out: Path) -> Figure | None:
    trials = [t for t in _trials(data) if t["state"] == "COMPLETE"]
    if not trials:
        return None
    info = data.provenance.get("search") or {}
    metric = _objective(str(info.get("budget", "")))
    scale, axis = AXES.get(metric, (1.0, metric))
    fig, ax = plt.subplots(figsize=(6.5, 4.4))
    for label, pick, style in (("trial", lambda t: not t.get("seeded_from"), dict(marker="o", color="0.6")),
                               ("hand-tuned recipe", lambda t: bool(t.get("seeded_from")),
                                dict(marker="s", color="tab:orange")),
                               ("Pareto front", lambda t: t.get("pareto") == "True",
                                dict(marker="o", facecolors="none", edgecolors="tab:blue", s=90))):
        pts = [(_f(t, metric) / scale, _f(t, "drop")) for t in trials if pick(t)]
        if pts:
            ax.scatter(*zip(*pts, strict=True), label=label, **style)
    for t in trials:
        if int(t["number"]) in {int(n) for n in info.get("chosen_trials", [])}:
            ax.annotate(f"chosen #{t['number']}", (_f(t, metric) / scale, _f(t, "drop")), fontsize=8,
                        xytext=(5, 5), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel(f"{axis} (log scale)")
    ax.set_ylabel("accuracy drop on the validation split (points)")
    ax.legend(fontsize=8)
    path = save(fig, out / "search_pareto.png")
    return Figure(path, f"Search under a budget: every measured trial's {axis} against its accuracy drop "
                        "(validation split), the hand-tuned recipes' pipelines and the Pareto front marked.")
