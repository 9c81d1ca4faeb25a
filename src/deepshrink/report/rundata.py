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


def paired_base_us(r: Row) -> float | None:
    """The baseline's median from the run that timed this latency.csv row's variant beside it (older run
    directories lack the column: variant time x the row's speedup, which that run computed); None for a
    baseline's own row, which was timed beside nothing."""
    if (r.get("reference") or r["variant"]) == r["variant"]:
        return None
    base = num(r.get("reference_us_per_image_median"))
    us, speedup = num(r.get("us_per_image_median")), num(r.get("speedup"))
    return base if base is not None else (us * speedup if us and speedup else None)


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

    def base_runtime(self) -> str:
        """The runtime the paired baseline ran in: `<baseline> (onnxruntime)` when it lacks this one."""
        return self.reference[self.reference.rindex("(") + 1 : -1] if self.reference.endswith(")") else self.runtime

    def setting(self) -> str:
        return (f"{self.runtime} on {self.device.upper()}, {self.threads} thread{'s' if self.threads != '1' else ''}, "
                f"batch {self.batch}")


@dataclass(frozen=True)
class Noise:
    """One file timed in several runs of a study: the spread (slowest / fastest median) of its times."""

    spread: float
    file: str  # the baseline variant whose file it is
    runs: int
    setting: str
    files: int  # how many (file, setting) groups were timed more than once

    def within(self, ratio: float | None) -> bool:
        """A speedup (or a ratio of two) no further from 1 than the spread: not a measured difference."""
        return ratio is not None and ratio > 0 and max(ratio, 1 / ratio) <= self.spread


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

    def row(self, variant: str) -> Row | None:
        return next((r for r in self.results if r.get("variant") == variant), None)

    def _batched(self, variant: str) -> list[Row]:
        rows = [r for r in self.latency if r["variant"] == variant and r["batch"] != "1" and r["device"] == "cpu"]
        return [r for r in rows if num(r.get("us_per_image_median")) is not None]

    def timing(self, variant: str, runtime: str | None = None) -> Timing | None:
        """The study's method (batched, CPU, fewest threads) in the runtime the file ships on
        (`deployed_runtime`), or in `runtime`; ONNX Runtime first where the deployed one was not timed."""
        rows = self._batched(variant)
        want = runtime or (self.row(variant) or {}).get("deployed_runtime", "")
        if runtime is not None:
            rows = [r for r in rows if r["runtime"] == runtime]
        if not rows:
            return None
        best = min(rows, key=lambda r: (r["runtime"] != want, r["runtime"] != "onnxruntime",
                                        int(num(r["threads"]) or 0)))
        us, speedup = num(best["us_per_image_median"]) or 0.0, num(best.get("speedup"))
        # latency.csv keeps one row per (variant, setting); the paired baseline's time is the ratio's
        # numerator, so it is recovered exactly as variant time x speedup (a later timing of the
        # baseline alone, in its own row, is another run and would not divide to this speedup).
        base = paired_base_us(best)
        speedup = speedup if base is not None else None
        return Timing(us, speedup, base, best["runtime"], best["device"], best["threads"], best["batch"],
                      best.get("reference", ""))

    def dense_timing(self, variant: str) -> Timing | None:
        """ONNX Runtime's time of the file (a sparse or .dsq file decoded to a dense model), only where
        the file ships on another runtime."""
        shipped = self.timing(variant)
        dense = self.timing(variant, "onnxruntime")
        return dense if shipped and dense and dense.runtime != shipped.runtime else None

    def noise(self) -> Noise | None:
        """The widest spread of one file's batched, fewest-thread median over the runs that timed it: each
        baseline is timed in its own run and again in every unit beside that unit's variants (its median
        from that unit's interleaved passes is each variant's `reference_us_per_image_median`)."""
        runs: dict[tuple[str, str, str, str], set[float]] = {}
        fewest = min((int(num(r["threads"]) or 0) for r in self.latency if r.get("device") == "cpu"), default=0)
        for r in self.latency:
            if r["batch"] == "1" or r.get("device") != "cpu" or int(num(r["threads"]) or 0) != fewest:
                continue
            ref, runtime = r.get("reference") or r["variant"], r["runtime"]
            if ref.endswith(")"):  # `<baseline> (onnxruntime)`: the baseline borrowed for the sparse runtime
                ref, runtime = ref[: ref.rindex(" (")], ref[ref.rindex("(") + 1 : -1]
            us = num(r.get("us_per_image_median")) if ref == r["variant"] else paired_base_us(r)
            if us:
                runs.setdefault((ref, runtime, r["threads"], r["batch"]), set()).add(us)
        # in the runtime each baseline ships on (the one the tables' Original rows and most speedups use)
        shipped = {k: v for k, v in runs.items() if (self.row(k[0]) or {}).get("deployed_runtime", k[1]) == k[1]}
        spreads = [(max(v) / min(v), k, len(v)) for k, v in (shipped or runs).items() if len(v) > 1]
        if not spreads:
            return None
        spread, (ref, runtime, threads, batch), n = max(spreads)
        return Noise(spread, ref, n, f"{runtime}, {threads} thread{'s' if threads != '1' else ''}, batch {batch}",
                     len(spreads))

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
