"""A run directory's result files, indexed the way the report looks them up: rows of one recipe
variant, the paired timing behind a speedup, per-layer weight counts, and how a table was timed.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepshrink.report.numbers import num

Row = dict[str, str]


def ok(row: Row | None) -> bool:
    return row is not None and row.get("status") == "ok"


@dataclass(frozen=True)
class Timing:
    """One latency.csv row: the variant's time and the baseline's time from the same paired run."""

    us: float
    speedup: float | None
    base_us: float | None  # the baseline timed interleaved with the variant: us * speedup
    runtime: str
    device: str
    threads: str
    batch: str
    reference: str

    def setting(self) -> str:
        return (f"{self.runtime} on {self.device.upper()}, {self.threads} thread{'s' if self.threads != '1' else ''}, "
                f"batch {self.batch}")


@dataclass(frozen=True)
class LayerCount:
    weights: int  # weights of the layer (the product of its weight shape)
    weights_nonzero: int
    biases: int
    biases_nonzero: int


@dataclass
class RunData:
    """results.csv / latency.csv / layers.csv (and the run directory, for artifact headers)."""

    results: list[Row]
    latency: list[Row]
    layers: list[Row]
    run_dir: Path | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def find(self, dataset: str, model: str, label: str) -> Row | None:
        hits = self.find_all(dataset, model, label)
        return hits[0] if hits else None

    def find_all(self, dataset: str, model: str, label: str) -> list[Row]:
        """Every seed's row of one recipe variant, lowest seed first."""
        hits = [r for r in self.results if r.get("dataset") == dataset and
                (r.get("base_model") or r.get("model")) == model and r.get("label") == label]
        return sorted(hits, key=lambda r: num(r.get("seed")) or 0.0)

    def timing(self, variant: str) -> Timing | None:
        """The study's method: batched, CPU, onnxruntime if measured, fewest threads."""
        rows = [r for r in self.latency if r["variant"] == variant and r["batch"] != "1" and r["device"] == "cpu"]
        rows = [r for r in rows if num(r.get("us_per_image_median")) is not None]
        if not rows:
            return None
        best = min(rows, key=lambda r: (r["runtime"] != "onnxruntime", int(num(r["threads"]) or 0)))
        us, speedup = num(best["us_per_image_median"]) or 0.0, num(best.get("speedup"))
        # latency.csv keeps one row per (variant, setting); the paired baseline's time is the ratio's
        # numerator, so it is recovered exactly as variant time x speedup (a later timing of the
        # baseline alone, in its own row, is another run and would not divide to this speedup).
        base = num(best.get("reference_us_per_image_median"))
        if base is None and speedup:
            base = us * speedup
        return Timing(us, speedup, base, best["runtime"], best["device"], best["threads"], best["batch"],
                      best.get("reference", ""))

    def time_us(self, variant: str) -> tuple[float | None, float | None]:
        t = self.timing(variant)
        return (t.us, t.speedup) if t else (None, None)

    def layer_counts(self, variant: str) -> dict[str, LayerCount]:
        """Per layer (e.g. `fc1`), weights and biases apart. Non-zero weights come from MACs: each
        weight is used `macs / weights` times per image (1 for Linear, H_out*W_out for Conv2d), so
        macs_nonzero / that is exact; layers.csv's params_nonzero counts weights and biases together."""
        out: dict[str, LayerCount] = {}
        for r in self.layers:
            if r["variant"] != variant:
                continue
            total, nonzero = int(num(r.get("params_total")) or 0), int(num(r.get("params_nonzero")) or 0)
            dims = [int(d) for d in (r.get("shape") or "").split("x") if d.isdigit()]
            weights = math.prod(dims) if dims else total
            macs, macs_nz = num(r.get("macs")), num(r.get("macs_nonzero"))
            if dims and macs and macs_nz is not None:
                w_nz = round(macs_nz * weights / macs)
            else:  # no MAC counts: biases are never pruned, so they are the non-zeros over the weights
                w_nz = max(0, nonzero - (total - weights))
            name = r["layer"].split(".")[0]
            prev = out.get(name, LayerCount(0, 0, 0, 0))
            out[name] = LayerCount(prev.weights + weights, prev.weights_nonzero + w_nz,
                                   prev.biases + total - weights, prev.biases_nonzero + nonzero - w_nz)
        return out

    def weights_nonzero(self, variant: str) -> int | None:
        counts = self.layer_counts(variant)
        return sum(c.weights_nonzero for c in counts.values()) if counts else None

    def has_conv(self, variant: str) -> bool:
        return any(r["variant"] == variant and len((r.get("shape") or "").split("x")) == 4 for r in self.layers)

    def measure_spec(self) -> dict[str, Any]:
        """The resolved recipe's [measure] section (repeats, images, ...) from provenance.json."""
        recipe = self.provenance.get("recipe") or {}
        return dict(recipe.get("measure") or {}) if isinstance(recipe, dict) else {}

    def timing_note(self, named: list[tuple[str, Timing]]) -> str:
        """How a table's times were taken: the setting most of its rows used, any row timed otherwise
        by name (e.g. FP64, which ONNX Runtime cannot run, in torch), repeats and images from provenance."""
        if not named:
            return ""
        by_setting: dict[str, list[str]] = {}
        for name, t in named:
            by_setting.setdefault(t.setting(), []).append(name)
        main = max(by_setting, key=lambda k: len(by_setting[k]))
        others = "".join(f"; {k} for {', '.join(v)}" for k, v in sorted(by_setting.items()) if k != main)
        spec = self.measure_spec()
        repeats, images = spec.get("repeats"), spec.get("images")
        how = f"median of {repeats} timed passes" if repeats else "median of the timed passes"
        over = f" over {images:,} test images" if isinstance(images, int) and images > 0 else " over the test set"
        cpu = (self.provenance.get("machine") or {}).get("cpu")
        where = f" on {cpu}" if cpu else " on this machine"
        return f"Timed{where}: {main}{others}; {how}{over} after a warm-up of up to 8 batches, per image."
