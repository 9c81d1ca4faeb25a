"""Figures: size-vs-accuracy and time-vs-accuracy Pareto plots per dataset/model, the reference's
Figure 1 (student accuracy against distillation temperature) and accuracy against weight bits.
PNGs via matplotlib Agg.
"""

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from deepshrink.report.seeds import column, groups, mean_std
from deepshrink.report.tables import RunData, _num, ok


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated by a smaller-or-equal cost with higher-or-equal accuracy, by cost."""
    front: list[tuple[float, float]] = []
    for cost, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or acc > front[-1][1]:
            front.append((cost, acc))
    return front


def _scatter(ax: plt.Axes, pts: list[tuple[float, float, str, float]], xlabel: str) -> None:
    """(cost, mean accuracy, label, accuracy std over seeds or 0) points, the std as an error bar."""
    front = pareto([(x, y) for x, y, _, _ in pts])
    on_front = set(front)
    for x, y, label, err in pts:
        color = "tab:red" if label == "baseline" else "tab:blue"
        ax.errorbar(x, y, yerr=err or None, fmt="o", markersize=4, color=color, capsize=2, zorder=3)
        if label == "baseline" or (x, y) in on_front:  # labelling every point would be unreadable
            ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="tab:green", lw=1, marker="o",
            markersize=7, markerfacecolor="none", label="Pareto front (labelled)")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def pareto_figures(data: RunData, out: Path) -> list[Path]:
    paths = []
    combos = sorted({(r["dataset"], r.get("base_model") or r["model"]) for r in data.results if ok(r)})
    for ds, model in combos:
        seeded = [(label, rows) for (d, m, label), rows in groups(data.results).items() if (d, m) == (ds, model)]
        size, time = [], []
        for label, rows in seeded:  # one point per pipeline: its seeds' mean, their std as the error bar
            acc, err, _ = mean_std(column(rows, "accuracy_pct"))
            size.append((mean_std(column(rows, "size_kb"))[0], acc, label, err or 0.0))
            time.append((mean_std([data.time_us(r["variant"])[0] for r in rows])[0], acc, label, err or 0.0))
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        _scatter(axes[0], [(x, y, lab, e) for x, y, lab, e in size if x and y is not None],
                 "size of the shipped artifact (kB)")
        _scatter(axes[1], [(x, y, lab, e) for x, y, lab, e in time if x and y is not None],
                 "time per image (µs, batched)")
        fig.suptitle(f"{ds} {model}: size and time against accuracy")
        fig.tight_layout()
        path = out / f"pareto-{ds}-{model}.png".replace(":", "_").replace("/", "_")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def temperature(row: dict[str, str]) -> float | None:
    m = re.search(r"distill:[^|]*temperature=([0-9.]+)", row.get("recipe_steps") or row.get("pipeline", ""))
    return float(m.group(1)) if m else None


def figure1(data: RunData, out: Path) -> Path | None:
    """Accuracy of the distilled student against temperature, per dataset and teacher."""
    by_t: dict[str, dict[float, list[float | None]]] = {}
    for r in data.results:
        lab = r.get("label", "")
        t = temperature(r)
        if ok(r) and t is not None and (lab == "distill" or lab.startswith("distill-T")):
            key = f"{r['dataset']} teacher {r.get('base_model') or r['model']}"
            by_t.setdefault(key, {}).setdefault(t, []).append(_num(r["accuracy_pct"]))
    series = {k: v for k, v in by_t.items() if len(v) > 1}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, accs in sorted(series.items()):
        temps = sorted(accs)
        stats = [mean_std(accs[t]) for t in temps]  # several seeds per temperature: mean, std as error bar
        ax.errorbar(temps, [m or 0.0 for m, _, _ in stats], yerr=[sd or 0.0 for _, sd, _ in stats], marker="o",
                    capsize=3, label=key)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("temperature T")
    ax.set_ylabel("student test accuracy (%)")
    ax.set_title("Figure 1. Effect of temperature on accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "figure1-temperature.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _weight_bits(row: dict[str, str]) -> int | None:
    """Weight bits of a quantize-only variant (its `weight_bits`, or 8 for the INT8 row), 32 for the
    baseline, None for anything else (pipelines mixing techniques would blur the curve)."""
    label = row.get("label", "")
    if label == "baseline":
        return 32
    if row.get("weight_bits"):
        return int(float(row["weight_bits"]))
    return 8 if label == "int8" else None


def bits_figure(data: RunData, out: Path) -> Path | None:
    """Accuracy against weight bits per dataset/model, from the run's quantize rows."""
    points: list[dict[str, Any]] = [
        {"series": f"{r['dataset']}-{r['model']}", "bits": b, "accuracy_pct": _num(r["accuracy_pct"])}
        for r in data.results if ok(r) and (b := _weight_bits(r)) is not None]
    points = [p for p in points if p["accuracy_pct"] is not None]
    series = {p["series"] for p in points if p["bits"] < 8}
    points = [p for p in points if p["series"] in series]
    return plot_accuracy_vs_bits(points, out / "accuracy-vs-bits.png") if points else None
