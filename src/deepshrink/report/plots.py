"""Figures: size-vs-accuracy and time-vs-accuracy Pareto plots per dataset/model, the reference's
Figure 1 (student accuracy against distillation temperature) and accuracy against weight bits.
PNGs via matplotlib Agg.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from deepshrink.report.numbers import num as _num
from deepshrink.report.rundata import RunData, ok
from deepshrink.report.seeds import column, groups, mean_std
from deepshrink.report.specs import DS_NAME, MODEL_NAME


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated by a smaller-or-equal cost with higher-or-equal accuracy, by cost."""
    front: list[tuple[float, float]] = []
    for cost, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or acc > front[-1][1]:
            front.append((cost, acc))
    return front


@dataclass(frozen=True)
class Figure:
    path: Path
    caption: str


def save(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Lay out, write and close a figure (an open one would hold its memory for the whole report)."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


# Label offsets in points tried in turn, near ones first; a far one gets a leader line.
_OFFSETS = [(4, 4), (4, -10), (-10, 4), (-10, -10), (6, -3), (-14, -3), (0, 12), (0, -16),
            (16, 12), (16, -18), (-22, 12), (-22, -18), (24, -3), (-30, -3), (0, 22), (0, -26)]


def _place_labels(ax: plt.Axes, points: list[tuple[float, float, str]]) -> list[str]:
    """Each point's number at the first offset whose box overlaps no label placed before (boxes
    measured in display points); numbers with no free spot are left off the plot, the legend still
    lists them. Returns the numbers left off."""
    ax.autoscale_view()
    to_pts = 72.0 / ax.figure.dpi
    placed: list[tuple[float, float, float, float]] = []
    skipped = []
    for x, y, text in points:
        px, py = (v * to_pts for v in ax.transData.transform((x, y)))
        w, h = 4.3 * len(text) + 1, 8.0  # 7-point digits
        for dx, dy in _OFFSETS:
            box = (px + dx, py + dy, px + dx + w, py + dy + h)
            if all(box[2] <= b[0] or box[0] >= b[2] or box[3] <= b[1] or box[1] >= b[3] for b in placed):
                placed.append(box)
                far = abs(dx) > 10 or abs(dy) > 12
                ax.annotate(text, (x, y), fontsize=7, xytext=(dx, dy), textcoords="offset points",
                            arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.5"} if far else None)
                break
        else:
            skipped.append(text)
    return skipped


def _scatter(ax: plt.Axes, pts: list[tuple[float, float, str, float]], xlabel: str, numbers: dict[str, int]) -> None:
    """(cost, mean accuracy, label, accuracy std over seeds or 0) points, the std as an error bar.
    Points carry numbers, not names (names collide where points crowd); the legend maps each number
    to its pipeline, and `numbers` gives a pipeline one number in every panel of its figure."""
    front = set(pareto([(x, y) for x, y, _, _ in pts]))
    ordered = sorted(pts, key=lambda p: numbers[p[2]])
    for x, y, label, err in ordered:
        i = numbers[label]
        color = "tab:red" if label == "baseline" else ("tab:green" if (x, y) in front else "tab:blue")
        ax.errorbar(x, y, yerr=err or None, fmt="o", markersize=4, color=color, capsize=2, zorder=3,
                    label=f"{i} {label}")
    line = sorted(front)
    ax.step([p[0] for p in line], [p[1] for p in line], where="post", color="tab:green", lw=1, zorder=2)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    skipped = set(_place_labels(ax, [(x, y, str(numbers[lab])) for x, y, lab, _ in sorted(ordered)]))
    handles, labels = ax.get_legend_handles_labels()
    labels = [f"{lab} (crowded: not numbered)" if lab.split(" ")[0] in skipped else lab for lab in labels]
    ax.legend(handles, labels, fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
              handletextpad=0.2, markerscale=0.8)


def pareto_figures(data: RunData, out: Path) -> list[Figure]:
    figs = []
    combos = sorted({(r["dataset"], r.get("base_model") or r["model"]) for r in data.results if ok(r)})
    for ds, model in combos:
        seeded = [(label, rows) for (d, m, label), rows in groups(data.results).items() if (d, m) == (ds, model)]
        size, time = [], []
        for label, rows in seeded:  # one point per pipeline: its seeds' mean, their std as the error bar
            acc, err, _ = mean_std(column(rows, "accuracy_pct"))
            size.append((mean_std(column(rows, "size_bytes", 1 / 1024))[0], acc, label, err or 0.0))
            time.append((mean_std([data.time_us(r["variant"])[0] for r in rows])[0], acc, label, err or 0.0))
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
        # one number per pipeline in both panels, in order of size (a pipeline with no size goes last)
        numbers = {lab: i for i, (*_, lab, _) in enumerate(sorted(size, key=lambda p: (p[0] is None, p[0] or 0)), 1)}
        _scatter(axes[0], [(x, y, lab, e) for x, y, lab, e in size if x and y is not None],
                 "size of the shipped file (KiB, log scale)", numbers)
        _scatter(axes[1], [(x, y, lab, e) for x, y, lab, e in time if x and y is not None],
                 "time per image (µs as shipped, batched, log scale)", numbers)
        name = f"{DS_NAME.get(ds, ds)} {MODEL_NAME.get(model, model)}"
        fig.suptitle(f"{name}: size and time against accuracy")
        path = save(fig, out / f"pareto-{ds}-{model}.png".replace(":", "_").replace("/", "_"))
        figs.append(Figure(path, f"{name}: test accuracy against the shipped file's size "
                                 "(left) and time per image (right), one point per pipeline (mean over seeds, "
                                 "error bar their std). Red: baseline; green: on the Pareto front (nothing "
                                 "smaller or faster is as accurate), joined by the green step line. Numbers "
                                 "name the pipelines in the legend, the same number in both panels."))
    return figs


def temperature(row: dict[str, str]) -> float | None:
    m = re.search(r"distill:[^|]*temperature=([0-9.]+)", row.get("recipe_steps") or row.get("pipeline", ""))
    return float(m.group(1)) if m else None


def figure1(data: RunData, out: Path) -> Figure | None:
    """Accuracy of the distilled student against temperature: one panel per dataset, a line per
    teacher, each panel's y-axis fitted to its own points (MNIST near 98 % and CIFAR-10 near 50 % on
    one axis would flatten both curves)."""
    by_ds: dict[str, dict[str, dict[float, list[float | None]]]] = {}
    for r in data.results:
        lab = r.get("label", "")
        t = temperature(r)
        if ok(r) and t is not None and (lab == "distill" or lab.startswith("distill-T")):
            teacher = r.get("base_model") or r["model"]
            by_ds.setdefault(r["dataset"], {}).setdefault(teacher, {}).setdefault(t, []).append(
                _num(r["accuracy_pct"]))
    panels = {ds: {k: v for k, v in series.items() if len(v) > 1} for ds, series in sorted(by_ds.items())}
    panels = {ds: s for ds, s in panels.items() if s}
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (ds, series) in zip(axes[0], panels.items(), strict=True):
        for teacher, accs in sorted(series.items()):
            temps = sorted(accs)
            stats = [mean_std(accs[t]) for t in temps]  # several seeds per temperature: mean, std as error bar
            ax.errorbar(temps, [m or 0.0 for m, _, _ in stats], yerr=[sd or 0.0 for _, sd, _ in stats],
                        marker="o", capsize=3, label=f"teacher {MODEL_NAME.get(teacher, teacher)}")
        ax.set_xscale("log", base=2)
        ax.margins(y=0.15)
        ax.set_xlabel("temperature T")
        ax.set_ylabel("student test accuracy (%)")
        ax.set_title(DS_NAME.get(ds, ds))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Figure 1. Effect of temperature on accuracy")
    path = save(fig, out / "figure1-temperature.png")
    teachers = sorted({MODEL_NAME.get(t, t) for series in panels.values() for t in series})
    lines = (f"one line per teacher ({' and '.join(teachers)})" if len(teachers) > 1
             else f"one teacher only ({teachers[0]}: the run has no temperature sweep from another)")
    return Figure(path, "Effect of temperature on accuracy (the reference's Figure 1): test accuracy of the "
                        "distilled student against the distillation temperature, one panel per dataset (each "
                        f"with its own y-axis range, so the effect is visible), {lines}; error bars "
                        "are the std over seeds where there are several.")


def plot_accuracy_vs_bits(rows: Sequence[dict[str, Any]], path: Path, title: str = "Accuracy vs weight bits") -> Path:
    """PNG of test accuracy against weight bits, one line per (dataset, model) series.

    `rows`: dicts with `series`, `bits` and `accuracy_pct` (e.g. from results.csv; FP32 as bits=32).
    """
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for series in sorted({str(r["series"]) for r in rows}):
        pts = sorted((int(r["bits"]), float(r["accuracy_pct"])) for r in rows if str(r["series"]) == series)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=series)
    ax.set_xscale("log", base=2)
    ticks = sorted({int(r["bits"]) for r in rows})
    ax.set_xticks(ticks, [str(t) if t < 32 else "32 (FP32)" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("weight bits")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path, dpi=120)


def _weight_bits(row: dict[str, str]) -> int | None:
    """Weight bits of a quantize-only variant (its `weight_bits`, or 8 for the INT8 row), 32 for the
    baseline, None for anything else (pipelines mixing techniques would blur the curve)."""
    label = row.get("label", "")
    if label == "baseline":
        return 32
    if row.get("weight_bits"):
        return int(float(row["weight_bits"]))
    return 8 if label == "int8" else None


def bits_figure(data: RunData, out: Path) -> Figure | None:
    """Accuracy against weight bits per dataset/model, from the run's quantize rows."""
    points: list[dict[str, Any]] = [
        {"series": f"{DS_NAME.get(r['dataset'], r['dataset'])} {MODEL_NAME.get(r['model'], r['model'])}",
         "bits": b, "accuracy_pct": _num(r["accuracy_pct"])}
        for r in data.results if ok(r) and (b := _weight_bits(r)) is not None]
    points = [p for p in points if p["accuracy_pct"] is not None]
    series = {p["series"] for p in points if p["bits"] < 8}
    points = [p for p in points if p["series"] in series]
    if not points:
        return None
    return Figure(plot_accuracy_vs_bits(points, out / "accuracy-vs-bits.png"),
                  "Accuracy against weight bits: test accuracy of each baseline (32 bits, FP32) and its "
                  "quantized variants at 8 bits and below, one line per dataset and model.")
