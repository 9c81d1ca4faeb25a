"""A search's constraint and objective (SPEC §13): `drop<=0.5,bytes<=20000` and `--minimize bytes` or
`--pareto bytes,drop`. Every metric is measured on the shipped artifact; lower is better for all of
them, so a budget term is a ceiling and an objective is minimized.
"""

import math
import re
from dataclasses import dataclass

from deepshrink.errors import UserError

# metric -> what it is (help text and error lines). `drop`: accuracy points below the baseline's own
# FP32 export on the same split; `us_*`: the fastest runtime, 1 thread; the rest need the §12 target.
METRICS: dict[str, str] = {
    "drop": "accuracy points lost against the baseline",
    "bytes": "size of the file that ships",
    "us_b1": "microseconds per image at batch 1 (fastest runtime, 1 thread)",
    "us_b256": "microseconds per image at batch 256 (fastest runtime, 1 thread)",
    "flash": "Cortex-M4 image flash bytes (SPEC §12)",
    "ram": "Cortex-M4 image RAM bytes (SPEC §12)",
    "instructions": "Cortex-M4 instructions per inference (SPEC §12)",
}
MCU_METRICS = frozenset({"flash", "ram", "instructions"})
TIMED_METRICS = frozenset({"us_b1", "us_b256"})
CLOSEST = 3  # trials a search that fits nothing returns, each with how much it misses by
_TERM = re.compile(r"^\s*([a-z_0-9]+)\s*<=\s*([-+0-9.eE]+)\s*$")


def _metric(name: str, where: str) -> str:
    if name not in METRICS:
        raise UserError(f"{where}: unknown metric {name!r} (known: {', '.join(METRICS)})")
    return name


@dataclass(frozen=True)
class Budget:
    """Ceilings per metric, and what to minimize (one metric, or two for a Pareto front)."""

    limits: tuple[tuple[str, float], ...]
    objectives: tuple[str, ...]

    @property
    def metrics(self) -> frozenset[str]:
        """Every metric a trial must measure: the budget's and the objectives' (and drop, always)."""
        return frozenset({"drop", *(m for m, _ in self.limits), *self.objectives})

    def violations(self, values: dict[str, float]) -> dict[str, float]:
        """metric -> how far over its ceiling (> 0 misses, <= 0 fits); a missing value misses."""
        return {m: (values[m] - cap if m in values and math.isfinite(values[m]) else math.inf)
                for m, cap in self.limits}

    def feasible(self, values: dict[str, float]) -> bool:
        return all(v <= 0 for v in self.violations(values).values())

    def misses(self, values: dict[str, float]) -> str:
        """`drop 0.21 over (0.91 > 0.7)`-style text for each term a trial misses; empty when it fits."""
        over = self.violations(values)
        caps = dict(self.limits)
        return "; ".join(f"{m} {v:.4g} over ({values.get(m, math.nan):.6g} > {caps[m]:.6g})"
                         for m, v in over.items() if v > 0)

    def describe(self) -> str:
        terms = ",".join(f"{m}<={c:g}" for m, c in self.limits)
        goal = f"pareto {'+'.join(self.objectives)}" if len(self.objectives) > 1 else f"minimize {self.objectives[0]}"
        return f"{terms or 'no budget'}; {goal}"


def parse_budget(text: str, minimize: str | None = None, pareto: str | None = None) -> Budget:
    """`drop<=0.5,bytes<=20000` + `--minimize bytes` (or `--pareto bytes,drop`); one line on bad input."""
    limits: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        m = _TERM.match(part)
        if m is None:
            raise UserError(f"--budget: {part!r} is not METRIC<=NUMBER (e.g. drop<=0.5,bytes<=20000)")
        name = _metric(m.group(1), "--budget")
        try:
            cap = float(m.group(2))
        except ValueError:
            raise UserError(f"--budget: {part!r}: {m.group(2)!r} is not a number") from None
        if not math.isfinite(cap) or (cap < 0 and name != "drop"):
            raise UserError(f"--budget: {part!r}: the ceiling must be a finite number >= 0")
        if name in limits:
            raise UserError(f"--budget: {name} given twice")
        limits[name] = cap
    if (minimize is None) == (pareto is None):
        raise UserError("search: give --minimize METRIC or --pareto A,B (one of them)")
    if pareto is not None:
        objectives = tuple(_metric(p.strip(), "--pareto") for p in pareto.split(","))
        if len(objectives) != 2 or objectives[0] == objectives[1]:
            raise UserError(f"--pareto {pareto!r}: two different metrics, e.g. bytes,drop")
    else:
        objectives = (_metric(str(minimize).strip(), "--minimize"),)
    return Budget(tuple(limits.items()), objectives)
