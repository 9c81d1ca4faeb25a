"""One trial: a pipeline realized through the study's step cache (a prefix another trial computed is
loaded, not retrained), stopped early when hopeless, exported and measured as shipped on the
validation split. Selection never sees the test set; the chosen pipelines are re-measured on it.
"""

import dataclasses
import hashlib
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from deepshrink.checkpoint import paths_for
from deepshrink.compress import apply, parse_step
from deepshrink.data import DataSplits
from deepshrink.errors import UserError
from deepshrink.export import Artifact
from deepshrink.measure.latency import RUNTIMES, LatencyConfig, measure_latency
from deepshrink.search.budget import MCU_METRICS, TIMED_METRICS, Budget
from deepshrink.study.cache import Prefixes, realize
from deepshrink.study.variant import Measured, measure_mcu, measure_variant
from deepshrink.train import evaluate
from deepshrink.variant import StepContext, Variant, variant_id

# A non-final step whose validation accuracy is this far below what the budget allows ends the trial:
# what follows (clustering's fine-tuning, INT8) recovers a few tenths at most, never a point.
HOPELESS_SLACK = 1.0
# Steps after which the model's own accuracy is worth checking (they train; the others only re-encode).
CHECKED = ("prune.unstructured", "prune.structured", "cluster", "distill")
# Every runtime an artifact offers but the host build of its C (`c`: `deepshrink mcu` measures that).
TIMING = LatencyConfig(runtimes=tuple(r for r in RUNTIMES if r != "c"), threads=(1,), repeats=5, single_calls=300)


class Hopeless(Exception):
    """Raised by the intermediate check; the search records the trial as stopped early (pruned)."""


class Outcome(TypedDict):
    """One evaluated trial as plain data, so it crosses a process or a Ray task: the main process
    alone talks to Optuna, replaying this onto the trial."""

    state: str  # complete, pruned or failed
    metrics: dict[str, float] | None  # measured on validation; None unless complete
    reports: list[tuple[int, float]]  # (step, validation accuracy) after each checked step
    attrs: dict[str, Any]  # stopped (why stopped early), error (why failed), seconds
    node: str  # where it ran: host (CPU model), for the provenance of its timings


def weights_hash(checkpoint: Path) -> str:
    return hashlib.sha256(paths_for(checkpoint)[0].read_bytes()).hexdigest()[:16]


def validation_view(data: DataSplits) -> DataSplits:
    """The data with the validation split in the test slot: what every trial is measured on."""
    return dataclasses.replace(data, test_x=data.val_x, test_y=data.val_y)


@dataclass
class Env:
    """What every trial shares: the baseline (measured once), the data, the step cache."""

    base: Variant
    base_key: str  # the baseline's cache key: the root of every trial's step keys
    data: DataSplits
    out: Path
    ctx: StepContext
    budget: Budget
    base_val: Measured
    mcu_target: str = "cortex-m4"
    memo: Prefixes = dataclasses.field(default_factory=Prefixes)

    def __post_init__(self) -> None:
        self.memo.done[()] = (self.base, self.base_key, 0.0)

    @property
    def val(self) -> DataSplits:
        return validation_view(self.data)

    def variant(self, steps: tuple[str, ...], check: Callable[[int, float], None] | None = None) -> Variant:
        """The pipeline's variant, computed only where no trial computed its prefix; `check(i, val_acc)`
        after each training step but the last (it raises Hopeless to stop the trial)."""
        v = self.base
        for i in range(1, len(steps) + 1):
            v, _ = realize(steps[:i], self.memo, self._apply, self.out / "cache", self._id, str,
                           self.data.fingerprint, self.ctx.seed, False)
            if check is not None and i < len(steps) and steps[i - 1].partition(":")[0] in CHECKED:
                check(i, evaluate(v.model, self.data.val_x, self.data.val_y))
        return v

    def _apply(self, v: Variant, text: str) -> Variant:
        return apply(v, parse_step(text), self.ctx)

    def _id(self, steps: tuple[str, ...]) -> str:
        m = self.base.manifest
        return variant_id(m.dataset, m.display, list(steps))

    def hopeless_below(self) -> float:
        """The validation accuracy under which a half-done trial cannot end within the drop budget."""
        cap = dict(self.budget.limits).get("drop")
        return -math.inf if cap is None else float(self.base_val.row["accuracy_pct"]) - cap - HOPELESS_SLACK


def evaluate_trial(env: Env, number: int, steps: tuple[str, ...], hopeless_below: float, node: str = "") -> Outcome:
    """Realize, check and measure one pipeline; a pipeline this model cannot take is a failed trial,
    not a failed search."""
    start = time.perf_counter()
    out = Outcome(state="complete", metrics=None, reports=[], attrs={}, node=node)

    def check(i: int, acc: float) -> None:
        out["reports"].append((i, acc))
        if acc < hopeless_below:
            out["attrs"]["stopped"] = f"after step {i}: validation {acc:.2f} % < {hopeless_below:.2f} %"
            raise Hopeless

    try:
        out["metrics"] = measure_trial(env, env.variant(steps, check), number)
    except Hopeless:
        out["state"] = "pruned"
    except (UserError, RuntimeError, ValueError) as e:
        out["state"], out["attrs"]["error"] = "failed", " ".join(str(e).split())[:300]
    out["attrs"]["seconds"] = round(time.perf_counter() - start, 2)
    return out


def measure_trial(env: Env, v: Variant, number: int) -> dict[str, float]:
    """The trial's metrics on the validation split, from the artifact that would ship."""
    folder = env.out / ".trials" / str(number)
    try:
        m = measure_variant(v, env.val, folder)
        acc = float(m.row["accuracy_pct"])
        values = {"bytes": float(m.row["size_bytes"]), "val_accuracy_pct": round(acc, 4),
                  "drop": round(float(env.base_val.row["accuracy_pct"]) - acc, 4)}
        if env.budget.metrics & TIMED_METRICS:
            values.update(fastest_us(env.base_val.artifact, m.artifact, env.val))
        if env.budget.metrics & MCU_METRICS:
            measure_mcu(m, env.val, folder, env.mcu_target)
            values.update({k: float(m.row[f"mcu_{c}"]) for k, c in
                           (("flash", "flash_bytes"), ("ram", "ram_bytes"), ("instructions", "instructions"))
                           if f"mcu_{c}" in m.row})
            for metric in env.budget.metrics & MCU_METRICS:  # not built (its notes say why): fits no budget
                values.setdefault(metric, math.inf)
        return values
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # the step cache keeps the weights; the files are re-made


def fastest_us(base: Artifact, art: Artifact, val: DataSplits) -> dict[str, float]:
    """µs per image at batch 256 and 1, each in the artifact's fastest runtime (1 thread), timed
    interleaved with the baseline so the figures of different trials divide alike."""
    rows = measure_latency([("baseline", base), ("trial", art)], val.test_x[:1024].numpy(), TIMING)
    return {key: fastest(rows, "trial", batch) for batch, key in ((TIMING.batch, "us_b256"), (1, "us_b1"))}


def fastest(rows: list[dict[str, object]], variant: str, batch: int) -> float:
    """The variant's median µs per image at `batch` in its fastest runtime (inf when it has no row)."""
    return min((float(r["us_per_image_median"]) for r in rows  # type: ignore[arg-type]
                if r["variant"] == variant and r["batch"] == batch), default=math.inf)
