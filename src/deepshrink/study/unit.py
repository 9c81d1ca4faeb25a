"""One unit of study work, as an executor runs it: a baseline (trained or loaded from the cache,
measured) and the tree of pipelines that start from it, each measured and timed beside it."""

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepshrink import provenance
from deepshrink.compress import apply, parse_step, step_names
from deepshrink.config import default_train
from deepshrink.data import DataSplits, load_dataset
from deepshrink.data.normalize import renormalize
from deepshrink.export import Artifact, ExportContext, export
from deepshrink.measure import energy
from deepshrink.measure.latency import measure_latency
from deepshrink.models import is_trained_file
from deepshrink.progress import Progress
from deepshrink.results import lock as results_lock
from deepshrink.results import read_rows
from deepshrink.study.cache import Prefixes, cached_or_compute, failure_reason, realize, substitute
from deepshrink.study.plan import StudyOptions, Unit, Work, baseline_key, pin_code_version
from deepshrink.study.recipe import CANONICAL_STEPS, Recipe
from deepshrink.study.trained import file_baseline
from deepshrink.study.variant import Measured, measure_mcu, measure_variant, record, record_failure, train_baseline
from deepshrink.train import TrainConfig
from deepshrink.variant import Deployment, StepContext, Variant, variant_id

UnitResult = list[tuple[str, str]]  # (variant id, status)

_DATA: dict[tuple[str, int], DataSplits] = {}  # per process: each dataset is decoded once


def study_data(name: str, opts: StudyOptions, val_size: int) -> DataSplits:
    """The dataset as this process decoded it once (the driver checks it before any work; a serial study
    then reuses it)."""
    if (name, val_size) not in _DATA:
        _DATA[name, val_size] = load_dataset(name, opts.data_dir, val_size=val_size,
                                             allow_empty_classes=opts.allow_empty_classes)
    return _DATA[name, val_size]


def _step_applier(ctx: StepContext, base_ckpt: Path, on_step: Callable[[str], None]) -> Callable[[Variant, str],
                                                                                                 Variant]:
    def apply_step(v: Variant, text: str) -> Variant:
        run_text, _ = substitute(text, base_ckpt, "")
        name = run_text.partition(":")[0].strip()
        if name in CANONICAL_STEPS and name not in step_names():
            raise RuntimeError(f"step {name!r} is not implemented in this build")
        on_step(text)
        return apply(v, parse_step(run_text), ctx)

    return apply_step


def baseline_config(recipe: Recipe, base_work: Work, fingerprint: str) -> tuple[TrainConfig, str]:
    """A baseline's training config and cache key (the Ray executor ships that cache folder to workers)."""
    overrides = recipe.train_overrides(base_work.dataset, base_work.model)
    cfg = default_train(base_work.dataset, base_work.model, **{**overrides, "seed": base_work.seed})
    return cfg, baseline_key(base_work.dataset, base_work.model, cfg.to_dict(), fingerprint, recipe.val_size,
                             recipe.model_args.get(base_work.model))


def _baseline(recipe: Recipe, opts: StudyOptions, base_work: Work, data: DataSplits,
              progress: Progress) -> tuple[Variant, str, bool, DataSplits]:
    """The baseline (trained, or a trained file loaded), its cache key, whether it was computed now, and the
    data normalized as the baseline takes it (a trained file's own preprocessing)."""
    cfg, key = baseline_config(recipe, base_work, data.fingerprint)
    cached = (opts.out / "cache" / key / "variant.json").exists()
    args = recipe.model_args.get(base_work.model)
    if is_trained_file(base_work.model):
        def compute() -> Variant:
            return file_baseline(base_work.model, data, args or {}, base_work.seed)[0]
    else:
        def compute() -> Variant:
            return train_baseline(data.name, base_work.model, cfg, data, opts.device, progress, base_work.vid, args)
    v, _ = cached_or_compute(opts.out / "cache" / key, base_work.vid, compute, fresh=False)
    return v, key, not cached, renormalize(data, (v.manifest.mean, v.manifest.std))


class _Group:
    """The running state of one unit: its progress line and the statuses of its variants."""

    def __init__(self, recipe: Recipe, opts: StudyOptions, base_work: Work, progress: Progress,
                 overall: int | None) -> None:
        self.recipe, self.opts, self.base_work = recipe, opts, base_work
        self.progress, self.overall = progress, overall
        self.statuses: UnitResult = []
        self.sram = recipe.measure.sram_kb * 1024 or energy.DEFAULT_SRAM_BUDGET_BYTES
        self.margin = recipe.measure.choice_margin
        self.lat_cfg = recipe.measure.latency(opts.device)

    def say(self, info: str, advance: int = 0) -> None:
        if self.overall is not None:
            self.progress.update(self.overall, advance=advance, info=info)

    def tick(self, vid: str, status: str) -> None:
        self.statuses.append((vid, status))
        self.say(f"{vid}: {status[:40]}", advance=1)

    def fail(self, work: Work, e: BaseException) -> None:
        reason = failure_reason(e)
        record_failure(self.opts.out, work, reason)
        self.progress.log(f"{work.vid}: failed: {reason}")
        self.tick(work.vid, f"failed: {reason}")

    def measure_baseline(self, base: Variant, data: DataSplits, x_time: np.ndarray) -> None:
        m = measure_variant(base, data, self.opts.out, sram_budget=self.sram, choice_margin=self.margin)
        lat = measure_latency([(base.id, m.artifact)], x_time, self.lat_cfg, self.progress)
        record(self.opts.out, [m], lat, {"label": "baseline", "base_model": self.base_work.model,
                                         "recipe_steps": "", "pipeline_seconds": 0.0})
        with results_lock(self.opts.out):
            provenance.write(self.opts.out, data=data)
        self.tick(base.id, "ok")

    def pipelines(self, base: Variant, key: str, data: DataSplits, x_time: np.ndarray, works: tuple[Work, ...],
                  todo: list[Work]) -> None:
        """Each pipeline from the shared prefixes, measured (and timed interleaved) beside the baseline."""
        out = self.opts.out
        base_acc = next(float(r["accuracy_pct"]) for r in read_rows(out / "results.csv") if r["variant"] == base.id)
        ctx_export = ExportContext(example=data.test_x[:1].clone(), calib=data.train_x[:512].clone(),
                                   choice_margin=self.margin)
        # One folder per process (parallel trees of one baseline must not share export temp files), outside
        # the baseline's cache folder, which a recomputation replaces.
        base_art = export(base.model, Deployment(), out / "cache" / "exports" / f"{key}-{os.getpid()}" / "model",
                          ctx_export)
        measured: list[tuple[Work, Measured, float]] = []
        # Pipelines of one seed share prefixes and a step seed (the baseline's, or a pipeline's extra seed:
        # same baseline, new student); a unit may hold several seeds.
        for seed in dict.fromkeys(w.seed for w in todo):
            measured += self._seed_pipelines(base, key, base_acc, data, [w for w in works if w.seed == seed],
                                             [w for w in todo if w.seed == seed])
        self.time_and_record(base.id, base_art, measured, x_time)

    def _seed_pipelines(self, base: Variant, key: str, base_acc: float, data: DataSplits, works: list[Work],
                        todo: list[Work]) -> list[tuple[Work, Measured, float]]:
        out = self.opts.out
        ctx = StepContext(data=data, device=self.opts.device, seed=works[0].seed, progress=self.progress,
                          cache_dir=out / "cache" / "steps")
        base_ckpt = out / "cache" / key / "model.safetensors"
        current = [""]
        apply_step = _step_applier(ctx, base_ckpt, lambda text: self.say(f"{current[0]} > {text}"))
        memo = Prefixes()
        memo.done[()] = (base, key, 0.0)
        ids = {w.steps[:i]: w.vid if i == len(w.steps) else variant_id(w.dataset, w.model, list(w.steps[:i]))
               for w in works for i in range(1, len(w.steps) + 1)}
        measured: list[tuple[Work, Measured, float]] = []
        for w in todo:
            current[0] = w.vid
            self.say(f"{w.vid} ({len(w.steps)} steps)")
            try:
                v, seconds = realize(w.steps, memo, apply_step, out / "cache", lambda s: ids.get(s, "prefix"),
                                     lambda t: substitute(t, base_ckpt, key)[1], data.fingerprint, w.seed,
                                     fresh=False)
                v.id = w.vid
                m = measure_variant(v, data, out, baseline=(base.id, base_acc), sram_budget=self.sram,
                                    choice_margin=self.margin)
                if self.recipe.measure.mcu:
                    measure_mcu(m, data, out, self.recipe.measure.mcu, self.recipe.measure.mcu_clock_mhz,
                                self.recipe.measure.mcu_optimize)
                measured.append((w, m, seconds))
            except Exception as e:  # a failed variant is a result too; the study goes on
                self.fail(w, e)
        return measured

    def time_and_record(self, base_id: str, base_art: Artifact, measured: list[tuple[Work, Measured, float]],
                        x_time: np.ndarray) -> None:
        """Every variant of the unit timed in one interleaved run with the baseline once; rows are written
        only now (the steps' outputs are in the cache, so a killed unit redoes exports, not training)."""
        if not measured:
            return
        self.say(f"timing {len(measured)} variants beside {base_id}")
        named = [(base_id, base_art), *((w.vid, m.artifact) for w, m, _ in measured)]
        try:
            lat: list[dict[str, Any]] | None = measure_latency(named, x_time, self.lat_cfg, self.progress)
        except Exception:  # one artifact a runtime cannot run must not fail its siblings: each alone
            lat = None
        for w, m, seconds in measured:
            try:
                own = lat if lat is not None else measure_latency([named[0], (w.vid, m.artifact)], x_time,
                                                                  self.lat_cfg, self.progress)
                record(self.opts.out, [m], [r for r in own if r["variant"] == w.vid],
                       {"label": w.label, "base_model": w.model, "recipe_steps": " | ".join(w.steps),
                        "pipeline_seconds": seconds})
                self.tick(w.vid, "ok")
            except Exception as e:
                self.fail(w, e)


def run_unit(recipe: Recipe, opts: StudyOptions, unit: Unit, done: frozenset[str], ensure: bool = False,
             progress: Progress | None = None, overall: int | None = None) -> UnitResult:
    """Produce a baseline (if needed) and the pipelines of one tree, measuring each beside the baseline.
    `ensure`: train (or load) the baseline into the cache even when its own row is done."""
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.code:
        pin_code_version(opts.code)
    base_work = unit.base
    group = _Group(recipe, opts, base_work, progress or Progress(enabled=False), overall)
    todo = [w for w in unit.tree if w.vid not in done]
    need_base = base_work.vid not in done
    if not todo and not need_base and not ensure:
        return group.statuses
    group.say(f"{base_work.vid}: baseline")
    try:
        data = study_data(base_work.dataset, opts, recipe.val_size)
        base, key, retrained, data = _baseline(recipe, opts, base_work, data, group.progress)
    except Exception as e:  # no baseline: every variant of the group is recorded as failed
        for w in [base_work] * need_base + todo:
            group.fail(w, e)
        return group.statuses
    x_time = data.test_x[: recipe.measure.images or None].numpy()
    # A baseline trained again (its cache was gone or the code changed) is measured again too, so its
    # row always describes the model the pipelines start from.
    if need_base or retrained:
        try:
            group.measure_baseline(base, data, x_time)
        except Exception as e:  # an unmeasured baseline leaves nothing to compare the pipelines with
            for w in [base_work, *todo]:
                group.fail(w, e)
            return group.statuses
    if todo:
        try:
            group.pipelines(base, key, data, x_time, unit.tree, todo)
        except Exception as e:  # set-up shared by the tree failed (e.g. the paired baseline export)
            finished = {vid for vid, _ in group.statuses}
            for w in todo:
                if w.vid not in finished:
                    group.fail(w, e)
    return group.statuses
