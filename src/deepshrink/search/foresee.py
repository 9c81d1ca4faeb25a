"""Before a trial trains: the objectives training does not move, measured on its pipeline run untrained.

File bytes, flash and RAM depend on which weights are kept and how they are coded, not on their
trained values; time per image and instruction counts on the shapes and formats. So the pipeline with
every step's retraining set to none (QAT as PTQ) ships an artifact whose objectives bound the trained
one's: LeNet-300-100's Deep Compression files were 3.5-10.6 % smaller untrained than trained in all 12
trials compared (retraining spreads the kept weights, so their cluster indices code longer).
A trial whose untrained artifact cannot beat the best feasible trial, or cannot fit a budget ceiling,
is stopped before it trains: on MNIST LeNet-300-100 most of a bytes search's sampled trials were
larger than the stretched seed's file, and each cost 30 epochs of retraining to learn it.

The check runs in the main process between batches (nothing else is training or timing then), so
the trials a batch holds depend on the seed and the batch size alone, as parallel.py wants.
"""

import math
from typing import Any

import optuna

from deepshrink.search.budget import CLOSEST, Budget
from deepshrink.search.space import step_keys
from deepshrink.search.trial import Env, measure_trial

# objective -> relative margin an untrained artifact's figure must exceed the reference by before the
# trial is stopped: sizes only grow with training (above), so a small margin; time moves with timing
# noise (1.03x on a quiet machine) and with the INT8 mode a timing picks.
MARGIN: dict[str, float] = {"bytes": 0.01, "flash": 0.01, "ram": 0.01, "instructions": 0.05,
                            "us_b1": 0.10, "us_b256": 0.10}
# Steps whose retraining is skipped by these keys (untrained: no epochs, QAT replaced by PTQ).
_UNTRAINED: dict[str, dict[str, str]] = {
    "prune.unstructured": {"epochs": "0"}, "prune.structured": {"epochs": "0"}, "cluster": {"epochs": "0"},
    "quantize": {"method": "ptq", "epochs": "", "lr": ""}, "encode": {},
}


def untrained(steps: tuple[str, ...]) -> tuple[str, ...] | None:
    """The pipeline with no retraining; None when a step's result depends on training (a distilled
    student is a different model until it has trained)."""
    out = []
    for text in steps:
        name, keys = step_keys(text)
        if name not in _UNTRAINED:
            return None
        keys.update(_UNTRAINED[name])
        body = ",".join(f"{k}={v}" for k, v in keys.items() if v != "")
        out.append(f"{name}:{body}" if body else name)
    return tuple(out)


def predictable(budget: Budget) -> bool:
    """Whether the objectives are all figures an untrained artifact shows."""
    return all(o in MARGIN for o in budget.objectives)


def complete(study: optuna.Study) -> list[tuple[int, dict[str, float]]]:
    """(number, metrics) of every complete trial."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return [(t.number, t.user_attrs["metrics"]) for t in done if t.user_attrs.get("metrics")]


def armed(budget: Budget, done: list[tuple[int, dict[str, float]]]) -> bool:
    """Whether trials may be stopped for missing the budget: once a trial fits or `CLOSEST` completed,
    so a search that fits nothing still returns its closest trials, measured."""
    return any(budget.feasible(m) for _, m in done) or len(done) >= CLOSEST


def hopeless(predicted: dict[str, float], budget: Budget, rivals: list[tuple[int, dict[str, float]]],
             ceilings: bool) -> str:
    """Why an untrained artifact with these figures cannot win (empty: it may). It cannot when it is over
    a budget ceiling training does not move, or when one feasible rival beats it on every objective."""
    for metric, cap in budget.limits if ceilings else ():
        if metric in MARGIN and predicted.get(metric, -math.inf) > cap * (1 + MARGIN[metric]):
            return f"{metric} {predicted[metric]:.6g} untrained > {cap:.6g} (budget; margin {MARGIN[metric]:.0%})"
    for number, values in sorted(rivals, key=lambda r: tuple(r[1][o] for o in budget.objectives)):  # best first
        if all(predicted[o] > values[o] * (1 + MARGIN[o]) for o in budget.objectives):
            said = ", ".join(f"{o} {predicted[o]:.6g} untrained vs {values[o]:.6g}" for o in budget.objectives)
            return f"cannot beat trial {number} ({said}; margin {MARGIN[budget.objectives[0]]:.0%})"
    return ""


def foresee(env: Env, study: optuna.Study, number: int, steps: tuple[str, ...]) -> dict[str, Any] | None:
    """The trial's untrained figures and why it stops before training, or None when it trains: nothing
    bounds its objectives yet, or the untrained artifact may win. Budget ceilings stop trials only once
    a trial fits or `CLOSEST` completed (a search that fits nothing returns its closest trials)."""
    budget = env.budget
    done = complete(study)
    feasible = [(n, m) for n, m in done if budget.feasible(m)]
    rivals = feasible if predictable(budget) else []
    ceilings = any(m in MARGIN for m, _ in budget.limits) and armed(budget, done)
    dry = untrained(steps) if rivals or ceilings else None
    if dry is None:
        return None
    predicted = measure_trial(env, env.variant(dry), number)
    why = hopeless(predicted, budget, rivals, ceilings)
    return {"stopped": f"before training: {why}", "untrained": predicted} if why else None
