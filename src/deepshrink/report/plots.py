"""Figures: size-vs-accuracy and time-vs-accuracy Pareto plots per dataset/model, and the
reference's Figure 1 (student accuracy against distillation temperature). PNGs via matplotlib Agg.
"""

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from deepshrink.report.tables import RunData, _num, ok


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated by a smaller-or-equal cost with higher-or-equal accuracy, by cost."""
    front: list[tuple[float, float]] = []
    for cost, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or acc > front[-1][1]:
            front.append((cost, acc))
    return front


def _scatter(ax: plt.Axes, pts: list[tuple[float, float, str]], xlabel: str) -> None:
    front = pareto([(x, y) for x, y, _ in pts])
    on_front = set(front)
    for x, y, label in pts:
        ax.scatter(x, y, s=18, color="tab:red" if label == "baseline" else "tab:blue", zorder=3)
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
        rows = [r for r in data.results
                if ok(r) and r["dataset"] == ds and (r.get("base_model") or r["model"]) == model]
        size = [(_num(r["size_kb"]), _num(r["accuracy_pct"]), r.get("label", "")) for r in rows]
        time = [(data.time_us(r["variant"])[0], _num(r["accuracy_pct"]), r.get("label", "")) for r in rows]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        _scatter(axes[0], [(x, y, lab) for x, y, lab in size if x and y is not None],
                 "size of the shipped artifact (kB)")
        _scatter(axes[1], [(x, y, lab) for x, y, lab in time if x and y is not None], "time per image (µs, batched)")
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
    series: dict[str, list[tuple[float, float]]] = {}
    for r in data.results:
        lab = r.get("label", "")
        t = temperature(r)
        if ok(r) and t is not None and (lab == "distill" or lab.startswith("distill-T")):
            key = f"{r['dataset']} teacher {r.get('base_model') or r['model']}"
            series.setdefault(key, []).append((t, _num(r["accuracy_pct"]) or 0.0))
    series = {k: sorted(set(v)) for k, v in series.items() if len(set(v)) > 1}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, pts in sorted(series.items()):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=key)
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
