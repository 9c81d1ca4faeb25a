"""Whole-study validation before any work (SPEC §2): every dataset found and readable, every model
reference importable and buildable for its data, every checkpoint a step names (a distillation teacher or
student) readable. The recipe itself (keys, types, steps) is validated by `recipe.load_recipe`; what is
checked here needs the files. The first problem is one UserError: exit 2, nothing trained.
"""

import dataclasses
from pathlib import Path

from deepshrink.checkpoint import load_checkpoint
from deepshrink.compress import STEP_CONFIGS, parse_step
from deepshrink.compress.distill.teacher import split_teacher_spec
from deepshrink.errors import UserError
from deepshrink.models import create_model, is_reference, is_trained_file
from deepshrink.study.plan import StudyOptions
from deepshrink.study.recipe import BASELINE_PLACEHOLDER, Recipe
from deepshrink.study.trained import file_baseline
from deepshrink.study.unit import study_data

_CHECKPOINT_SUFFIXES = (".safetensors", ".json")


def check_study(recipe: Recipe, opts: StudyOptions) -> None:
    """Raise the first problem with the study's inputs, before the run directory is even locked."""
    for name in recipe.datasets:
        try:
            data = study_data(name, opts, recipe.val_size)  # decoded once; a serial study reuses it
        except UserError as e:
            raise UserError(f"{recipe.source}: study.datasets: {e}") from None
        for model in recipe.models_for(name):
            try:
                if is_trained_file(model):  # read, converted and run once on this data
                    file_baseline(model, data, recipe.model_args.get(model, {}))
                elif is_reference(model):  # imported, called and run once on this data's shape
                    create_model(model, data, **recipe.model_args.get(model, {}))
            except UserError as e:
                raise UserError(f"{recipe.source}: study.models: {e}") from None
    checked: set[str] = set()
    for spec in recipe.pipelines:
        for text in spec.steps:
            for path in step_checkpoints(text):
                if path not in checked:
                    checked.add(path)
                    try:
                        load_checkpoint(Path(path))
                    except UserError as e:
                        raise UserError(f"{recipe.source}: pipeline {spec.name!r}: step {text!r}: {e}") from None


def step_checkpoints(text: str) -> list[str]:
    """Checkpoint paths a step's keys name (ensembles `a.safetensors+b.safetensors` included); the
    `{baseline}` placeholder does not exist before the study runs, and a step not built yet names none."""
    if text.partition(":")[0].strip() not in STEP_CONFIGS:
        return []
    cfg = parse_step(_without_placeholders(text))
    out = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, str):
            out += [p for p in split_teacher_spec(value) if p.endswith(_CHECKPOINT_SUFFIXES)]
    return out


def _without_placeholders(text: str) -> str:
    name, _, keys = text.partition(":")
    kept = [kv for kv in keys.split(",") if kv.strip() and BASELINE_PLACEHOLDER not in kv]
    return f"{name}:{','.join(kept)}" if kept else name
