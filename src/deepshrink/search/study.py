"""The Optuna side of a search: a seeded multivariate TPE study whose storage is a journal file in the
run directory (a killed search resumes: finished trials are kept, an interrupted one runs again from
its cached prefix), the budget as constraints, and the hand-tuned recipes' pipelines as first trials.
"""

import contextlib
import math
import warnings
from pathlib import Path
from typing import Any

import optuna

from deepshrink.errors import UserError
from deepshrink.search.budget import Budget
from deepshrink.search.space import ModelInfo, SearchSpace, seed_params
from deepshrink.study.recipe import BASELINE_PLACEHOLDER, Recipe, load_recipe

STUDY_NAME = "search"
JOURNAL = "search.journal"
SEED_RECIPES = ("paper", "beyond")  # built-in recipes whose pipelines for this model start the search
STARTUP = 6  # random trials before TPE models the space (after the seeded ones)


class Draw:
    """A trial's suggest_* namespaced per template, so templates sharing a key name do not share its
    distribution (TPE's group mode then models each template's keys on their own)."""

    def __init__(self, trial: optuna.Trial, prefix: str) -> None:
        self.trial, self.prefix = trial, prefix

    def real(self, name: str, lo: float, hi: float, step: float) -> float:
        return self.trial.suggest_float(f"{self.prefix}.{name}", lo, hi, step=step)

    def integer(self, name: str, lo: int, hi: int) -> int:
        return self.trial.suggest_int(f"{self.prefix}.{name}", lo, hi)

    def choice(self, name: str, options: tuple[Any, ...]) -> Any:
        return self.trial.suggest_categorical(f"{self.prefix}.{name}", list(options))


def constraints(budget: Budget) -> Any:
    """Optuna's constraints_func: one value per budget term, <= 0 when it fits; a trial that measured
    nothing (stopped early, failed) counts as missing every term."""
    def fn(t: optuna.trial.FrozenTrial) -> list[float]:
        values = t.user_attrs.get("metrics") or {}
        return [v if math.isfinite(v) else 1e18 for v in budget.violations(values).values()] or [0.0]

    return fn


def open_study(out: Path, budget: Budget, seed: int) -> optuna.Study:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # multivariate, group and constraints_func are marked experimental (stable since Optuna 3): say it once
    # in docs, not on every search.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # Optuna 5 deprecates constraints_func for Trial.set_constraint (removal planned for 7), which Optuna 4,
    # still allowed by pyproject, lacks: the user can do nothing about the warning, so it is not printed.
    warnings.filterwarnings("ignore", message=".*constraints_func.*", category=FutureWarning)
    storage = JournalStorage(JournalFileBackend(str(out / JOURNAL)))
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=STARTUP,
                                         constraints_func=constraints(budget) if budget.limits else None)
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage, load_if_exists=True, sampler=sampler,
                                directions=["minimize"] * len(budget.objectives))
    _rerun_interrupted(study)
    return study


KEPT_ATTRS = ("seeded_from", "stretched_from", "steps")  # what a re-queued trial keeps


def _rerun_interrupted(study: optuna.Study) -> None:
    """A trial left running by a killed search fails, and its pipeline is queued again: its finished
    steps are in the cache, so only what was in flight is recomputed."""
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)  # not counted as a trial done
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={k: v for k, v in t.user_attrs.items() if k in KEPT_ATTRS})


def _builtin(name: str) -> Recipe | None:
    """A built-in recipe; it names example models by their path from the repository root (`beyond`'s
    examples/models.py:dwnet), so from another folder it is read there, and skipped where that is absent."""
    try:
        return load_recipe(name)
    except UserError:
        root = Path(__file__).resolve().parents[3]  # src/deepshrink/search/study.py
        if not (root / "examples").is_dir():
            return None
        try:
            with contextlib.chdir(root):
                return load_recipe(name)
        except UserError:
            return None


def hand_tuned(dataset: str, model: str) -> list[tuple[str, tuple[str, ...]]]:
    """(recipe/pipeline name, steps) of every built-in recipe pipeline made for this model."""
    found: dict[tuple[str, ...], str] = {}
    for name in SEED_RECIPES:
        recipe = _builtin(name)
        if recipe is None:
            continue
        if model not in recipe.models_for(dataset) and not any(model in p.models for p in recipe.pipelines):
            continue
        for p in recipe.pipelines:
            if p.applies(dataset, model) and not any(BASELINE_PLACEHOLDER in s for s in p.steps):
                found.setdefault(p.steps, f"{name}/{p.name}")
    return [(label, steps) for steps, label in found.items()]


def trials_done(study: optuna.Study) -> int:
    return sum(t.state.is_finished() and not t.user_attrs.get("interrupted") for t in study.trials)


PLAIN_INT8 = "quantize:precision=int8,method=ptq"  # the seed of a speed search whose model no recipe quantizes
INNER_HALVED = ("prune.structured:ratio=0.5,layers=inner,round_to=8", PLAIN_INT8)


def seeds(dataset: str, model: str, info: ModelInfo, space: SearchSpace,
          templates: tuple[str, ...]) -> list[tuple[str, tuple[str, ...], dict[str, Any]]]:
    """(label, steps, params) of the hand-tuned pipelines a template of the search expresses."""
    out = []
    for label, steps in hand_tuned(dataset, model):
        seeded = seed_params(steps, info, space)
        if seeded is not None and seeded[0] in templates:
            out.append((label, steps, {"template": seeded[0], **seeded[1]}))
    if "q" in templates and not any(p["template"] == "q" for _, _, p in out):
        # No recipe of this model quantizes it alone; the plain INT8 model is the speed search's first
        # rival to beat (every pruned one must first recover its accuracy).
        out.append(("INT8 alone", (PLAIN_INT8,), {"template": "q", "q.method": "ptq"}))
    if "sq" in templates and info.inner and not any(p["template"] == "sq" for _, _, p in out):
        # A residual graph's inner convs halved, the stream kept whole: resnet8 in INT8 ran 3.9x FP32 at batch 256
        # and 2.8x at batch 1 (OpenVINO, AMD EPYC, where INT8 alone gave 2.9x and 2.3x), 0.05 pt below it on test.
        # Batch norm folded away (info.folded): the template's own steps, which refit the layers reading the cut.
        out.append(("inner convs halved", () if info.folded else INNER_HALVED,
                    {"template": "sq", "sq.ratio": 0.5, "sq.layers": "inner"}))
    return out


# Densities (fractions of the hand-tuned one's) of the stretched seeds a bytes search queues next.
STRETCH = (0.8, 0.65)


def stretched(found: list[tuple[str, tuple[str, ...], dict[str, Any]]], space: SearchSpace, info: ModelInfo,
              objectives: tuple[str, ...]) -> list[tuple[str, tuple[str, ...], dict[str, Any]]]:
    """For a bytes (or flash) objective, each hand-tuned Deep Compression pipeline pushed toward it: every
    layer's density x0.8 and x0.65, float16 biases, with the space's most retraining (epochs, rounds), which buys back
    what the extra sparsity costs. A handful of sampled trials rarely combine the largest sparsities
    with the longest retraining (none of 40 did on LeNet-300-100), where the smallest files within the
    drop lie; these trials put the sampler there. Steps are left to the template (drawn from the params)."""
    if not {"bytes", "flash"} & set(objectives):
        return []
    out: list[tuple[str, tuple[str, ...], dict[str, Any]]] = []
    for label, _, params in found:
        if params.get("template") != "dc":
            continue
        for factor in STRETCH:
            # float16 biases: a relative change under 2^-11, and 2 bytes fewer per output
            moved = dict(params, **{"dc.prune_epochs": max(space.prune_epochs),
                                    "dc.prune_rounds": max(space.prune_rounds), "dc.bias_bits": 16})
            for key, value in params.items():
                if ".sparsity." in key:
                    lo, hi = space.layer_range(key.rpartition(".")[2], info)
                    target = 1.0 - (1.0 - float(value)) * factor
                    moved[key] = round(min(hi, max(lo, round(target / space.sparsity_step) * space.sparsity_step)), 4)
            if len(space.prune_rounds) < 2:
                moved.pop("dc.prune_rounds")
            out.append((f"{label} at {factor:g}x its density, most retraining", (), moved))
    return out


def enqueue_seeds(study: optuna.Study, found: list[tuple[str, tuple[str, ...], dict[str, Any]]]) -> int:
    """Queue the hand-tuned pipelines (and their stretched variants, with no steps of their own: the
    template draws them from the params), once, as the first trials."""
    if study.trials:
        return 0
    for label, steps, params in found:
        attrs = {"seeded_from": label, "steps": list(steps)} if steps else {"stretched_from": label}
        study.enqueue_trial(params, user_attrs=attrs)
    return len(found)


def check_resumable(out: Path, settings: dict[str, Any], fresh: bool) -> None:
    """A run directory holds one search: other settings need --fresh (which starts the trials over)."""
    import json

    path = out / "search.json"
    if fresh:
        (out / JOURNAL).unlink(missing_ok=True)
    elif path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{path}: unreadable ({e}); rerun with --fresh") from None
        if old != json.loads(json.dumps(settings)):
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != json.loads(json.dumps(settings)).get(k))
            raise UserError(f"{out}: holds a search with other settings ({', '.join(diff)}); "
                            "use another --out or --fresh")
    path.write_text(json.dumps(settings, indent=2))
