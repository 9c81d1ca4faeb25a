"""What a study runs: every variant of a recipe (`plan`), grouped into units that run independently
— a baseline alone, or a tree of pipelines sharing (dataset, model, seed, first step) — and the
cache keys under which their outputs are kept.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from deepshrink import provenance
from deepshrink.codehash import code_version as code_version
from deepshrink.codehash import pin_code_version as pin_code_version
from deepshrink.errors import UserError
from deepshrink.models import is_reference, is_trained_file, source_sha256
from deepshrink.study.recipe import PipelineSpec, Recipe
from deepshrink.variant import slug, variant_id

BaseKey = tuple[str, str, int]  # (dataset, model, seed): which baseline a variant starts from


@dataclass(frozen=True)
class StudyOptions:
    """How to run a study, beside the recipe (what to run)."""

    out: Path
    data_dir: Path | None = None
    device: str = "cpu"
    quiet: bool = False
    threads: int = 0  # torch threads per job; 0 = leave torch's default
    code: str = ""  # the code version in cache keys, pinned by the parent for the whole study
    allow_empty_classes: bool = False  # generic data whose labels skip a class (data/__init__.num_classes_of)


@dataclass(frozen=True)
class Work:
    """One variant to produce: a baseline (no steps) or a pipeline applied to one."""

    vid: str
    dataset: str
    model: str
    seed: int
    label: str
    steps: tuple[str, ...] = ()
    base_seed: int | None = None  # the baseline's seed when it differs (a pipeline's extra seed)

    @property
    def base_group(self) -> BaseKey:
        return self.dataset, self.model, self.seed if self.base_seed is None else self.base_seed


@dataclass(frozen=True)
class Unit:
    """What one worker runs: a baseline alone (`tree` empty), or a tree of pipelines sharing it."""

    base: Work
    tree: tuple[Work, ...] = ()

    @property
    def works(self) -> tuple[Work, ...]:
        return self.tree or (self.base,)

    @property
    def label(self) -> str:
        return self.tree[0].label if self.tree else self.base.vid


def _vid(ds: str, model: str, p: PipelineSpec) -> str:
    # A named pipeline's id is its label (readable: mnist-lenet-5--prune80+int8).
    named = p.name != "+".join(p.steps) and len(p.name) <= 60
    return f"{variant_id(ds, model, [])}--{slug(p.name)}" if named else variant_id(ds, model, list(p.steps))


def _extra_seeds(recipe: Recipe, ds: str, model: str) -> list[Work]:
    """A pipeline's own seeds beyond the study's, each from the study's first seed's baseline."""
    first = recipe.seeds[0]
    return [Work(f"{_vid(ds, model, p)}--seed{seed}", ds, model, seed, p.name, p.steps, base_seed=first)
            for p in recipe.pipelines if p.applies(ds, model)
            for seed in p.seeds if seed not in recipe.seeds]


def plan(recipe: Recipe) -> list[Work]:
    """Every variant of the recipe, baselines first, in a deterministic order."""
    multi_seed = len(recipe.seeds) > 1
    out: list[Work] = []
    for ds in recipe.datasets:
        for model in recipe.models_for(ds):
            for seed in recipe.seeds:
                tail = f"--seed{seed}" if multi_seed else ""
                out.append(Work(variant_id(ds, model, []) + tail, ds, model, seed, "baseline"))
                out += [Work(_vid(ds, model, p) + tail, ds, model, seed, p.name, p.steps)
                        for p in recipe.pipelines if p.applies(ds, model)]
            out += _extra_seeds(recipe, ds, model)
    seen: set[str] = set()
    for w in out:
        if w.vid in seen:
            raise UserError(f"{recipe.source}: two pipelines give the same variant {w.vid!r}")
        seen.add(w.vid)
    return out


def trees(works: Iterable[Work]) -> list[list[Work]]:
    """Pipelines grouped by (dataset, model, baseline seed, seed, first step): each group shares its
    prefixes and one step seed."""
    groups: dict[tuple[str, str, int, int, str], list[Work]] = {}
    for w in works:
        if w.steps:
            groups.setdefault((*w.base_group, w.seed, w.steps[0]), []).append(w)
    return [sorted(g, key=lambda w: w.steps) for g in groups.values()]


def units(works: list[Work], parallel: int | None = None) -> list[Unit]:
    """Baselines alone first, then the pipeline trees with their baseline.

    `parallel` None: one unit per tree (a cluster spreads them). A number (the local pool's jobs): the
    trees of one baseline merged into one unit (and those of its pipelines' extra seeds into a second),
    largest first, split again only until there are `parallel` units. A unit times its variants together
    at its end with its baseline once; timed per tree, the paper study timed the baseline beside every
    variant (128 times instead of 12).
    """
    bases = {w.base_group: w for w in works if not w.steps}
    groups = trees(works)
    if parallel is not None:
        groups = _merged(groups, parallel)
    return [Unit(b) for b in bases.values()] + [Unit(bases[t[0].base_group], tuple(t)) for t in groups]


def _merged(groups: list[list[Work]], parallel: int) -> list[list[Work]]:
    # A baseline's own seed in one unit, its pipelines' extra seeds (new students, same baseline) in another:
    # each unit times the baseline once more.
    by_base: dict[tuple[BaseKey, bool], list[list[Work]]] = {}
    for t in groups:
        by_base.setdefault((t[0].base_group, t[0].base_seed is None), []).append(t)
    parts = list(by_base.values())  # each a list of trees
    while len(parts) < parallel and any(len(p) > 1 for p in parts):
        big = max((p for p in parts if len(p) > 1), key=lambda p: sum(map(len, p)))
        parts.remove(big)
        parts += [big[::2], big[1::2]]
    return sorted(([w for t in p for w in t] for p in parts), key=len, reverse=True)


def pending(works: Iterable[Work], done: set[str]) -> frozenset[BaseKey]:
    """Baselines (dataset, model, seed) that some unfinished pipeline still starts from."""
    return frozenset(w.base_group for w in works if w.steps and w.vid not in done)


def baseline_key(dataset: str, model: str, train: dict[str, object], fingerprint: str, val_size: int,
                 model_args: dict[str, object] | None = None) -> str:
    """A referenced model's source file is part of its key: editing it retrains the baseline."""
    extra = {"model_args": model_args, "model_source": source_sha256(model)} \
        if is_reference(model) or is_trained_file(model) else {}
    return provenance.config_hash({"dataset": dataset, "model": model, "train": train, "data": fingerprint,
                                   "val_size": val_size, "code": code_version(), **extra}, 16)


def step_key(parent: str, step: str, fingerprint: str, seed: int) -> str:
    """The cache key of a step's output: any change upstream (config, input, data, code) changes it."""
    return provenance.config_hash({"step": step, "input": parent, "data": fingerprint, "seed": seed,
                                   "code": code_version()}, 16)
