"""Knowledge distillation (Hinton et al. 2015) as a compression step: `distill`.

The student is trained by the shared loop (`train.fit`) with a different objective:
    loss = alpha * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)) + (1 - alpha) * CE(z_s, y).
alpha=0 is plain cross-entropy and needs no teacher: that is how the control (the same student,
same budget, no teacher) is trained, through the very same code path.

Teacher logits: when the student trains on un-augmented images (`augment=none`, the tuned default
for `mlp-50`) they are looked up from a per-(teacher, dataset) cache by the batch's indices; with
augmentation the cached logits would describe other inputs, so the teacher runs on each augmented
batch instead (exact, slower). `info["distill_teacher_logits"]` says which was used.
"""

import copy
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepshrink.checkpoint import Manifest, load_checkpoint, read_manifest
from deepshrink.codehash import code_version
from deepshrink.compress.distill import best
from deepshrink.compress.distill.loss import distill_objective, hinton_loss
from deepshrink.compress.distill.teacher import (
    OnlineEnsemble,
    Teacher,
    check_fits,
    check_teacher_manifests,
    ensemble_train_logits,
    resolve_teachers,
)
from deepshrink.compress.registry import apply, register_step
from deepshrink.config import default_train, family_augment, parse_kwargs
from deepshrink.errors import UserError
from deepshrink.models import MODELS, canonical, check_model_name, create_model, is_reference
from deepshrink.train import AUGMENTS, Objective, TrainConfig, TrainLog, cross_entropy, evaluate, fit
from deepshrink.variant import Deployment, StepContext, Variant, variant_id

__all__ = [
    "CONTROLS",
    "DistillConfig",
    "apply_distill",
    "augment_candidates",
    "control_of",
    "distill_objective",
    "distill_with_control",
    "distillation_table",
    "hinton_loss",
    "scratch_config",
]

CONTROLS = ("same", "best")
INPUT_STUDENT = "input"  # the step's input model itself is the student (warm start), e.g. a pruned copy


def _is_path(spec: str) -> bool:
    """A checkpoint path (a model reference `PATH.py:CALLABLE` may hold slashes too)."""
    return spec.endswith((".safetensors", ".json")) or ("/" in spec and not is_reference(spec))


@dataclass(frozen=True)
class DistillConfig:
    """`distill:teacher=...,student=mlp-50,temperature=2,alpha=0.5,epochs=...`.

    teacher: "" = the step's input model; else a checkpoint, or an ensemble `a.safetensors+b.safetensors`.
    student: a registry model name or a model reference `PATH.py:CALLABLE` (fresh, seeded init), a
    checkpoint path (e.g. a structurally pruned copy), or "input" (the step's input model).
    student_args: a fresh reference student's constructor arguments, `;`-separated because `,` separates
    the step's keys: `student=examples/models.py:dwnet,student_args=width=16;depth=2`.
    epochs/lr/batch_size 0 and augment "" mean the tuned training defaults of the student's model and
    dataset (`config.default_train`).
    """

    teacher: str = ""
    student: str = "mlp-50"
    student_args: str = ""
    # T=2, alpha=0.5 won on the validation split for mlp-50 from LeNet-5 on both datasets (T in 1-16,
    # alpha in 0.3-0.9): a 10-class teacher at ~70% has little "dark knowledge" beyond the top classes.
    temperature: float = 2.0
    alpha: float = 0.5
    epochs: int = 0
    lr: float = 0.0
    batch_size: int = 0
    augment: str = ""
    # "same": train once with these settings (the control: the same settings, no teacher). "best": best
    # effort, the fair rival for "just train the small model well": train once per augmentation
    # candidate (none, the dataset family's) under the same epoch cap and keep the best validation run.
    control: str = "same"

    def __post_init__(self) -> None:
        if self.control not in CONTROLS:
            raise UserError(f"distill.control={self.control!r}: unknown (known: {', '.join(CONTROLS)})")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise UserError(f"distill.temperature={self.temperature}: must be a finite number > 0")
        if not 0.0 <= self.alpha <= 1.0:
            raise UserError(f"distill.alpha={self.alpha}: must be in [0, 1]")
        for key in ("epochs", "lr", "batch_size"):
            if getattr(self, key) < 0:
                raise UserError(f"distill.{key}={getattr(self, key)}: must be >= 0 (0 = tuned default)")
        if self.augment and self.augment not in AUGMENTS:
            raise UserError(f"distill.augment={self.augment!r}: unknown (known: {', '.join(AUGMENTS.names())})")
        self._check_student()
        if self.student_args and not (is_reference(self.student) and not _is_path(self.student)):
            raise UserError(f"distill.student_args: only a model reference student takes arguments "
                            f"(student={self.student!r})")
        self.model_args()
        if self.teacher:
            check_teacher_manifests(self.teacher)

    def model_args(self) -> dict[str, Any]:
        return parse_kwargs(list(filter(None, self.student_args.split(";"))), "distill.student_args")

    def _check_student(self) -> None:
        if self.student == INPUT_STUDENT or self.student in MODELS:
            return
        if is_reference(self.student) and not _is_path(self.student):
            try:
                check_model_name(self.student)
            except UserError as e:
                raise UserError(f"distill.student: {e}") from None
            return
        if not _is_path(self.student):
            raise UserError(f"distill.student={self.student!r}: unknown model (known: "
                            f"{', '.join(MODELS.names())}, '{INPUT_STUDENT}', or a checkpoint path)")
        try:
            read_manifest(Path(self.student))
        except UserError as e:
            raise UserError(f"distill.student: {e}") from None


def _student(v: Variant, cfg: DistillConfig, ctx: StepContext,
             seed: int) -> tuple[nn.Module, Manifest | None, Deployment]:
    """(model, the manifest it was loaded with or None for a fresh one, deployment). Fresh students
    are seeded so the control starts identical."""
    if cfg.student == INPUT_STUDENT:
        return copy.deepcopy(v.model).cpu(), v.manifest, v.deployment
    if not _is_path(cfg.student):
        torch.manual_seed(seed)
        return create_model(cfg.student, ctx.data, **cfg.model_args()), None, Deployment()
    try:
        model, manifest = load_checkpoint(Path(cfg.student))
    except UserError as e:
        raise UserError(f"distill.student: {e}") from None
    check_fits(manifest, ctx.data, "distill.student", cfg.student)
    return model, manifest, Deployment()


def student_train_config(cfg: DistillConfig, dataset: str, student_model: str, seed: int) -> TrainConfig:
    return default_train(dataset, student_model, epochs=cfg.epochs or None, lr=cfg.lr or None,
                         batch_size=cfg.batch_size or None, augment=cfg.augment or None, seed=seed)


def _teacher_objective(teachers: list[Teacher], cfg: DistillConfig, train_cfg: TrainConfig,
                       ctx: StepContext) -> tuple[Objective, str]:
    if train_cfg.augment == "none":
        logits = ensemble_train_logits(teachers, ctx.data, ctx.cache_dir, ctx.device)
        return distill_objective(logits, cfg.temperature, cfg.alpha), "cached"
    online = OnlineEnsemble(teachers).to(ctx.device)
    return distill_objective(online, cfg.temperature, cfg.alpha), "online"


def augment_candidates(cfg: DistillConfig, dataset: str, tuned: str) -> list[str]:
    """The augmentations a run tries: its own (tuned or set) for `same`; for `best`, none and the
    dataset family's (or the one set), so a scratch and a distilled student search the same space."""
    if cfg.control == "same":
        return [tuned]
    return list(dict.fromkeys(["none", cfg.augment or family_augment(dataset)]))


def _train_once(student: nn.Module, cfg: DistillConfig, train_cfg: TrainConfig, teachers: list[Teacher],
                ctx: StepContext, label: str) -> tuple[TrainLog, str]:
    """One run of the shared loop: (its log, how the teacher's logits were obtained)."""
    if cfg.alpha > 0:
        objective, mode = _teacher_objective(teachers, cfg, train_cfg, ctx)
    else:  # the control: the teacher plays no part
        objective, mode = cross_entropy(train_cfg.label_smoothing), "none"
    log = fit(student, ctx.data, train_cfg, objective=objective, progress=ctx.progress, label=label,
              device=ctx.device)
    return log, mode


def _run_context(cfg: DistillConfig, train_cfg: TrainConfig, teachers: list[Teacher],
                 ctx: StepContext) -> dict[str, Any]:
    """What determines a student run besides its initial weights, augmentation and seed (the code too: a
    changed training loop must not be answered from the memo)."""
    kd = {"alpha": cfg.alpha, "temperature": cfg.temperature, "teachers": [t.weights_hash for t in teachers]}
    return {"objective": kd if cfg.alpha > 0 else "cross-entropy",
            "train": {**train_cfg.to_dict(), "augment": None, "seed": None},
            "data": ctx.data.fingerprint, "device": str(ctx.device), "code": code_version()}


def train_best(make: best.MakeStudent, cfg: DistillConfig, train_cfg: TrainConfig, teachers: list[Teacher],
               ctx: StepContext, label: str) -> tuple[nn.Module, TrainConfig, TrainLog, dict[str, Any]]:
    """`same`: one run. `best`: one run per augmentation candidate at the selection seed, the best on
    validation kept (`fit` keeps each run's best validation epoch, so epochs are chosen on validation too,
    under the same cap); other seeds train once with that choice (compress/distill/best.py). Runs are
    memoized in the step cache. Returns (model, its config, log, info)."""
    candidates = augment_candidates(cfg, ctx.data.name, train_cfg.augment)

    def train_one(model: nn.Module, aug: str, seed: int) -> tuple[TrainLog, str]:
        run_cfg = dataclasses.replace(train_cfg, augment=aug, seed=seed)
        return _train_once(model, cfg, run_cfg, teachers, ctx, f"{label} aug={aug} seed={seed}")

    context, root = _run_context(cfg, train_cfg, teachers, ctx), ctx.cache_dir
    train = best.memoized(train_one, context, root and root / "student_runs")
    info: dict[str, Any] = {"distill_control": cfg.control}
    if cfg.control == "same":
        model = make(ctx.seed)
        log, mode = train(model, train_cfg.augment, ctx.seed)
        return model, train_cfg, log, {**info, "distill_teacher_logits": mode, "distill_train_seconds": log.seconds}
    choice = best.choose(make, train, candidates, ctx.seed, context, root and root / "best_effort")
    run = choice.run
    # The search's whole cost is the selection seed's training time: a best effort is not free.
    info.update({"distill_teacher_logits": run.mode, "distill_train_seconds": choice.seconds,
                 "distill_augment_val_acc": choice.val_acc, "distill_augment": run.augment,
                 "distill_augment_seed": best.SELECT_SEED})
    return run.model, dataclasses.replace(train_cfg, augment=run.augment), run.log, info


@register_step("distill", DistillConfig)
def apply_distill(v: Variant, cfg: DistillConfig, ctx: StepContext) -> Variant:
    """Train the student on the teacher's softened outputs (alpha > 0) or on labels alone (alpha = 0)."""
    data = ctx.data
    student, loaded, deployment = _student(v, cfg, ctx, ctx.seed)
    student_name = loaded.model if loaded else canonical(cfg.student)
    train_cfg = student_train_config(cfg, data.name, student_name, ctx.seed)
    info: dict[str, Any] = {"distill_role": "distilled" if cfg.alpha > 0 else "scratch",
                            "distill_student": student_name, "distill_temperature": cfg.temperature,
                            "distill_alpha": cfg.alpha,
                            "distill_teacher": (cfg.teacher or INPUT_STUDENT) if cfg.alpha > 0 else "none"}
    teachers: list[Teacher] = []
    if cfg.alpha > 0:
        teachers = resolve_teachers(cfg.teacher, v.model, v.manifest, data)
        info["distill_teacher_model"] = "+".join(t.manifest.model for t in teachers)
        info["distill_teacher_val_acc"] = evaluate(OnlineEnsemble(teachers), data.val_x, data.val_y)
    label = f"{info['distill_role']} {student_name} T={cfg.temperature:g}"

    def make(seed: int) -> nn.Module:  # a copy of this seed's student, or another seed's (RNG state kept)
        if seed == ctx.seed:
            return copy.deepcopy(student)
        with torch.random.fork_rng(devices=[]):
            return _student(v, cfg, ctx, seed)[0]

    trained, train_cfg, log, chosen = train_best(make, cfg, train_cfg, teachers, ctx, label)
    info.update(chosen)
    trained.cpu().eval()
    info["epochs_to_converge"] = log.epochs_to_converge()
    warm = cfg.student == INPUT_STUDENT  # only a warm-started student inherits its input's facts
    manifest = Manifest(model=student_name, dataset=v.manifest.dataset, input_shape=list(data.input_shape),
                        num_classes=data.num_classes, mean=list(v.manifest.mean), std=list(v.manifest.std),
                        pipeline=list(v.manifest.pipeline), train=train_cfg.to_dict(),
                        info={**(v.manifest.info if warm else {}), **info},
                        model_args=dict(loaded.model_args) if loaded else cfg.model_args())
    return Variant(v.id, trained, manifest, deployment=deployment, log=log,
                   train_seconds=info["distill_train_seconds"],
                   epochs=train_cfg.epochs, seed=ctx.seed, info={**(v.info if warm else {}), **info})


def scratch_config(cfg: DistillConfig) -> DistillConfig:
    """The control of `cfg`: same student, settings, budget and effort (`control`: `same` trains once,
    `best` searches the augmentations too), alpha=0 (no teacher). The one place a no-teacher control is
    built; every caller reporting a control goes through `control_of`."""
    return dataclasses.replace(cfg, alpha=0.0)


def control_of(steps: list[object]) -> DistillConfig | None:
    """The control a chain of steps is reported beside: a lone distill step with a teacher gets its
    no-teacher twin; anything else gets none."""
    if len(steps) == 1 and isinstance(steps[0], DistillConfig) and steps[0].alpha > 0:
        return scratch_config(steps[0])
    return None


def distill_with_control(v: Variant, cfg: DistillConfig, ctx: StepContext) -> tuple[Variant, Variant]:
    """(distilled, scratch): the student with the teacher and the same student without it, both through
    the registered step so their pipelines read `distill:...` and `distill:alpha=0.0,...`."""
    control = control_of([cfg])
    if control is None:
        raise UserError(f"distill.alpha={cfg.alpha}: a control needs a distilled student (alpha > 0)")
    pair = []
    for c in (cfg, control):
        out = apply(v, c, ctx)
        out.id = variant_id(v.manifest.dataset, v.manifest.display, out.manifest.pipeline)
        pair.append(out)
    return pair[0], pair[1]


def distillation_table(teachers: list[Variant], cfg: DistillConfig, ctx: StepContext) -> list[Variant]:
    """The reference's Tables 11-12 as variants to measure: the student from scratch (once: it does not
    depend on the teacher), then the student distilled from each teacher. Teachers themselves are
    measured by the caller as the baselines they are."""
    if not teachers:
        return []
    first = teachers[0]
    scratch = apply(first, scratch_config(cfg), ctx)
    scratch.id = variant_id(first.manifest.dataset, scratch.manifest.display, ["scratch", *scratch.manifest.pipeline])
    out = [scratch]
    for t in teachers:
        kd = apply(t, dataclasses.replace(cfg, teacher=""), ctx)
        kd.id = variant_id(t.manifest.dataset, t.manifest.display, kd.manifest.pipeline)
        out.append(kd)
    return out
