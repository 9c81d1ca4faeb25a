"""trials.csv (one row per trial: pipeline, keys, every measured objective, feasible or by how much
it misses) and pareto.csv (the non-dominated completed trials), rewritten after every trial."""

import json
import math
from pathlib import Path
from typing import Any

import optuna

from deepshrink.results import write_rows
from deepshrink.search.budget import METRICS, Budget

TRIAL_COLUMNS = ["number", "state", "template", "seeded_from", "pipeline", "val_accuracy_pct", *METRICS,
                 "feasible", "misses", "pareto", "seconds", "notes", "params"]


STARTED = tuple(s for s in optuna.trial.TrialState if s != optuna.trial.TrialState.WAITING)


def pareto_numbers(points: dict[int, tuple[float, ...]]) -> set[int]:
    """Trials no other trial beats on every objective while strictly beating on one (all minimized)."""
    def dominated(a: tuple[float, ...]) -> bool:
        return any(all(x <= y for x, y in zip(b, a, strict=True)) and b != a for b in points.values())

    return {n for n, p in points.items() if not dominated(p)}


def trial_rows(study: optuna.Study, budget: Budget) -> list[dict[str, Any]]:
    rows = []
    # A queued trial not yet started (a killed batch re-queued beyond what the count still asked for)
    # has nothing to show; a later resume with more --trials runs it.
    for t in study.get_trials(deepcopy=False, states=STARTED):
        metrics: dict[str, float] = t.user_attrs.get("metrics") or {}
        done = t.state == optuna.trial.TrialState.COMPLETE
        rows.append({
            "number": t.number, "state": t.state.name, "template": t.params.get("template", ""),
            "seeded_from": t.user_attrs.get("seeded_from", ""), "steps": t.user_attrs.get("steps", []),
            "pipeline": " | ".join(t.user_attrs.get("steps", [])),
            **{m: metrics.get(m, math.nan) for m in ("val_accuracy_pct", *METRICS)},
            "feasible": done and budget.feasible(metrics), "misses": budget.misses(metrics) if done else "",
            "seconds": t.user_attrs.get("seconds", ""),
            "notes": t.user_attrs.get("stopped") or t.user_attrs.get("error") or
            ("interrupted (the search was killed); queued again" if t.user_attrs.get("interrupted") else "") or
            (f"queued: {t.user_attrs['stretched_from']}" if t.user_attrs.get("stretched_from") else ""),
            "params": json.dumps({k: v for k, v in t.params.items() if k != "template"}, sort_keys=True),
        })
    # Two objectives: their front; one: the objective against the accuracy drop, what a reader trades.
    axes = budget.objectives if len(budget.objectives) > 1 else (budget.objectives[0], "drop")
    points = {r["number"]: tuple(float(r[a]) for a in axes) for r in rows
              if r["state"] == "COMPLETE" and all(math.isfinite(float(r[a])) for a in axes)}
    front = pareto_numbers(points)
    for r in rows:
        r["pareto"] = r["number"] in front
    return rows


def write_tables(out: Path, study: optuna.Study, budget: Budget) -> list[dict[str, Any]]:
    rows = trial_rows(study, budget)
    flat = [{k: v for k, v in r.items() if k != "steps"} for r in rows]  # the pipeline column says them
    write_rows(out / "trials.csv", flat, TRIAL_COLUMNS)
    write_rows(out / "pareto.csv", [r for r in flat if r["pareto"]], TRIAL_COLUMNS)
    return rows
