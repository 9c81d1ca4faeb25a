"""Temperature sweep (the reference study's Figure 1): student accuracy vs T for a teacher and dataset,
with T picked on the validation split. Teacher logits are cached after the first temperature, so
each further point costs one student training.
"""

import dataclasses
import io
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepshrink.checkpoint import atomic_write_bytes
from deepshrink.compress.distill import DistillConfig, apply_distill
from deepshrink.train import evaluate
from deepshrink.variant import StepContext, Variant

DEFAULT_TEMPERATURES: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 12.0, 20.0)


def temperature_sweep(teacher: Variant, cfg: DistillConfig, ctx: StepContext,
                      temperatures: Sequence[float] = DEFAULT_TEMPERATURES) -> list[dict[str, Any]]:
    """One row per temperature: validation accuracy (used to choose T) and test accuracy of the fp32
    student in torch (for the figure; shipped numbers come from measuring the chosen variant)."""
    rows = []
    name = cfg.teacher or f"{teacher.manifest.dataset}-{teacher.manifest.model}"
    for t in temperatures:
        start = time.perf_counter()
        out = apply_distill(teacher, dataclasses.replace(cfg, temperature=float(t)), ctx)
        assert out.log is not None
        rows.append({
            "teacher": name, "dataset": ctx.data.name, "student": out.manifest.model, "temperature": float(t),
            "alpha": cfg.alpha, "epochs": out.epochs, "val_acc_pct": out.log.best_val_acc,
            "test_acc_torch_pct": evaluate(out.model, ctx.data.test_x, ctx.data.test_y),
            "epochs_to_converge": out.log.epochs_to_converge(), "seconds": time.perf_counter() - start,
            "seed": ctx.seed, "chosen": False,
        })
    best = pick_temperature(rows)
    for r in rows:
        r["chosen"] = r["temperature"] == best
    return rows


def pick_temperature(rows: Sequence[dict[str, Any]]) -> float:
    """The temperature of the best validation accuracy; ties go to the lower T (listed first)."""
    if not rows:
        raise ValueError("pick_temperature: no sweep rows")
    return float(max(rows, key=lambda r: (r["val_acc_pct"], -r["temperature"]))["temperature"])


def plot_sweep(rows: Sequence[dict[str, Any]], path: Path, metric: str = "val_acc_pct") -> Path:
    """Accuracy vs T, one line per (teacher, dataset), the chosen T circled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((str(r["teacher"]), str(r["dataset"])), []).append(r)
    for (teacher, dataset), grp in groups.items():
        grp = sorted(grp, key=lambda r: r["temperature"])
        line, = ax.plot([r["temperature"] for r in grp], [r[metric] for r in grp], marker="o",
                        label=f"{dataset}: {teacher}")
        for r in grp:
            if r.get("chosen"):
                ax.plot(r["temperature"], r[metric], "o", ms=12, mfc="none", color=line.get_color())
    ax.set_xscale("log", base=2)
    ax.set_xlabel("temperature T")
    ax.set_ylabel("student accuracy (%) — " + ("validation" if metric.startswith("val") else "test"))
    ax.set_title("Effect of temperature on the distilled student's accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
