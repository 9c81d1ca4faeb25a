"""`deepshrink sensitivity`: per-layer accuracy against sparsity on the validation split, without
retraining (Han et al. 2015, Fig. 5), written as sensitivity.csv + sensitivity.png, with the per-layer
fractions it suggests in the syntax `prune.unstructured:layers=...` takes. The search shapes its
per-layer ranges with the same curves."""

from pathlib import Path
from typing import Any

from torch import nn

from deepshrink.compress.prune.sensitivity import DEFAULT_SPARSITIES, pick_layer_sparsities, plot_sensitivity
from deepshrink.compress.prune.sensitivity import sensitivity as curves
from deepshrink.data import DataSplits
from deepshrink.progress import Progress
from deepshrink.results import read_rows, write_rows
from deepshrink.search.space import DEPTHWISE_MAX, ModelInfo, model_info

COLUMNS = ["layer", "sparsity", "accuracy_pct", "saliency", "split"]
# Retraining recovers much of what a cut without it loses: the search lets a layer go this far past
# the sparsity at which its no-retraining curve lost `SHAPE_DROP` points.
SHAPE_DROP = 5.0
SHAPE_MARGIN = 0.15
# For a bytes objective, each layer's floor: the sparsity its no-retraining curve reaches within this
# many points, which retraining wins back; pruning a layer less only adds bytes. On LeNet-300-100 the
# floors are 0.8 where the default range starts at 0.5, and 8 of an unfloored 40-trial search's 34
# Deep Compression trials went to files 2-5x the hand-tuned one's bytes.
FLOOR_DROP = 1.0


def measure_curves(model: nn.Module, data: DataSplits, out: Path,
                   progress: Progress | None = None) -> list[dict[str, Any]]:
    """The curves, measured and written to `out/sensitivity.csv`."""
    rows = curves(model, data, sparsities=DEFAULT_SPARSITIES, progress=progress)
    write_rows(out / "sensitivity.csv", rows, COLUMNS)
    return rows


def layer_curves(model: nn.Module, data: DataSplits, out: Path) -> list[dict[str, Any]]:
    """The curves, read back from `out/sensitivity.csv` when a search resumes."""
    path = out / "sensitivity.csv"
    if not path.exists():
        return measure_curves(model, data, out)
    return [{**r, "sparsity": float(r["sparsity"]), "accuracy_pct": float(r["accuracy_pct"])} for r in read_rows(path)]


def suggest(rows: list[dict[str, Any]], info: ModelInfo, drop: float) -> dict[str, float]:
    """Per layer, the highest tested sparsity within `drop` points (depthwise kernels spared)."""
    picked = pick_layer_sparsities(rows, drop)
    return {k: min(v, DEPTHWISE_MAX) if k in info.depthwise else v for k, v in picked.items()}


def step_text(fractions: dict[str, float]) -> str:
    return "prune.unstructured:scope=layer,layers=" + "+".join(f"{k}={v:g}" for k, v in fractions.items())


def layer_caps(rows: list[dict[str, Any]], info: ModelInfo) -> dict[str, float]:
    """Per-layer ceilings of the search's sparsity ranges."""
    return {k: round(min(0.99, v + SHAPE_MARGIN), 2) for k, v in suggest(rows, info, SHAPE_DROP).items()}


def layer_floors(rows: list[dict[str, Any]], info: ModelInfo) -> dict[str, float]:
    """Per-layer floors of the search's sparsity ranges when it minimizes bytes (or flash)."""
    return suggest(rows, info, FLOOR_DROP)


def run_sensitivity(model: nn.Module, data: DataSplits, out: Path, drop: float, title: str = "",
                    progress: Progress | None = None) -> dict[str, Any]:
    """Curves, plot and the suggested step for `model`; {rows, suggested, step, csv, plot}."""
    out.mkdir(parents=True, exist_ok=True)
    rows = measure_curves(model, data, out, progress)  # the command always measures anew
    plot = plot_sensitivity(rows, out / "sensitivity.png", title)
    fractions = suggest(rows, model_info(model), drop)
    return {"rows": rows, "suggested": fractions, "step": step_text(fractions), "csv": out / "sensitivity.csv",
            "plot": plot}
