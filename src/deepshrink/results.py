"""The result files of SPEC §7: results.csv, latency.csv, layers.csv. Rows are upserted by key and
written atomically (temp file + rename), so a killed run never leaves a half-written table.
"""

import csv
import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock

from deepshrink.checkpoint import atomic_write_bytes

RESULTS_COLUMNS = [
    "variant", "dataset", "model", "pipeline", "precision", "sparsity", "params_total", "params_nonzero",
    "size_bytes", "size_kb", "artifact", "accuracy_pct", "baseline_accuracy_pct", "energy_nj_est",
    "train_seconds", "epochs", "seed", "checkpoint", "status", "notes",
    # Beyond the contract: more measured facts the report uses.
    "baseline_variant", "runtime", "deployment", "checkpoint_bytes", "macs", "macs_nonzero",
    "energy_memory", "energy_nj_measured", "energy_source", "val_accuracy_pct", "epochs_to_converge", "best_epoch",
    "accuracy_torch_pct",
]
LATENCY_COLUMNS = ["variant", "runtime", "device", "threads", "batch", "us_per_image_median",
                   "us_per_image_min", "us_per_image_max", "speedup", "reference",
                   "us_per_image_mean", "reference_us_per_image_median"]
LAYERS_COLUMNS = ["variant", "layer", "shape", "params_total", "params_nonzero", "macs", "macs_nonzero"]

RESULTS_KEY = ("variant",)
LATENCY_KEY = ("variant", "runtime", "device", "threads", "batch")
LAYERS_KEY = ("variant", "layer")
# The three tables of a run directory: file name -> (columns, row key).
TABLES = {"results.csv": (RESULTS_COLUMNS, RESULTS_KEY), "latency.csv": (LATENCY_COLUMNS, LATENCY_KEY),
          "layers.csv": (LAYERS_COLUMNS, LAYERS_KEY)}


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(round(v, 6))
    return str(v)


def write_rows(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    extra = sorted({k for r in rows for k in r} - set(columns))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[*columns, *extra], lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r.get(k)) for k in [*columns, *extra]})
    atomic_write_bytes(path, buf.getvalue().encode())


def upsert(path: Path, rows: Iterable[dict[str, Any]], columns: Sequence[str], key: Sequence[str]) -> None:
    """Replace rows with the same key, append new ones, keep everything else as it was."""
    existing = read_rows(path)
    new = [{k: _fmt(v) for k, v in r.items()} for r in rows]
    new_keys = {tuple(r.get(k, "") for k in key) for r in new}
    kept = [r for r in existing if tuple(r.get(k, "") for k in key) not in new_keys]
    write_rows(path, kept + new, columns)


def remove_variant(run_dir: Path, variant: str) -> None:
    for name, (cols, _) in TABLES.items():
        p = run_dir / name
        if p.exists():
            write_rows(p, [r for r in read_rows(p) if r.get("variant") != variant], cols)


def finished(run_dir: Path) -> set[str]:
    """Variants whose row says `ok`: a resumed study skips them."""
    return {r["variant"] for r in read_rows(run_dir / "results.csv") if r.get("status") == "ok"}


def lock(run_dir: Path) -> FileLock:
    """Held while rows are upserted: parallel workers of one study write the same tables."""
    return FileLock(str(run_dir / ".results.lock"))
