"""Sensitivity analysis (Han et al. 2015, Fig. 6): prune one layer at a time to each sparsity, without
retraining, and measure validation accuracy. The curves say how hard each layer can be pruned.
"""

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from deepshrink.compress.prune.masks import apply_masks, compute_masks, prunable_layers
from deepshrink.data import DataSplits
from deepshrink.progress import Progress, null_progress
from deepshrink.train import evaluate

DEFAULT_SPARSITIES = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98)


def sensitivity(model: nn.Module, data: DataSplits, layers: Sequence[str] | None = None,
                sparsities: Sequence[float] = DEFAULT_SPARSITIES, saliency: str = "magnitude",
                split: str = "val", progress: Progress | None = None) -> list[dict[str, Any]]:
    """Rows {layer, sparsity, accuracy_pct, saliency, split}: one layer pruned, the others intact.

    Validation split by default: these curves pick per-layer ratios, which is tuning.
    """
    x, y = (data.val_x, data.val_y) if split == "val" else (data.test_x, data.test_y)
    names = list(layers or prunable_layers(model))
    progress = progress or null_progress()
    task = progress.add("sensitivity", total=len(names) * len(sparsities))
    rows = []
    for layer in names:
        for s in sparsities:
            pruned = copy.deepcopy(model)
            apply_masks(pruned, compute_masks(pruned, saliency, s, "layer", [layer], data))
            rows.append({"layer": layer, "sparsity": s, "accuracy_pct": evaluate(pruned, x, y),
                         "saliency": saliency, "split": split})
            progress.update(task, advance=1)
    progress.finish(task)
    return rows


def plot_sensitivity(rows: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """One accuracy-vs-sparsity curve per layer, written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for layer in dict.fromkeys(r["layer"] for r in rows):
        pts = [(r["sparsity"] * 100, r["accuracy_pct"]) for r in rows if r["layer"] == layer]
        ax.plot(*zip(*pts, strict=True), marker="o", label=layer)
    ax.set_xlabel("weights removed in the layer (%)")
    ax.set_ylabel("accuracy without retraining (%)")
    ax.set_title(title or "per-layer pruning sensitivity")
    ax.grid(alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def pick_layer_sparsities(rows: list[dict[str, Any]], max_drop: float = 1.0) -> dict[str, float]:
    """Per layer, the highest tested sparsity whose accuracy stays within `max_drop` points of the
    layer's unpruned accuracy: a starting point for `prune.unstructured:scope=layer,layers=...`."""
    out: dict[str, float] = {}
    for layer in dict.fromkeys(r["layer"] for r in rows):
        mine = sorted((r for r in rows if r["layer"] == layer), key=lambda r: r["sparsity"])
        ref = mine[0]["accuracy_pct"]
        ok = [r["sparsity"] for r in mine if r["accuracy_pct"] >= ref - max_drop]
        out[layer] = max(ok) if ok else 0.0
    return out
