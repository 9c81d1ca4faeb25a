"""The `finetune` step: the model trained further as it is, uncompressed. A study's dense control: a model brought
from elsewhere (MLPerf Tiny's ResNet-8, trained on the original CIFAR-10 pixels) also adapts to the data here when
a compressed variant is retrained, so the control trained for the same epochs with the same objective says what the
compression itself cost, apart from what the adaptation gained."""

import copy
import dataclasses
from contextlib import nullcontext
from dataclasses import dataclass

from deepshrink.compress.distill.loss import distill_objective, frozen_teacher
from deepshrink.compress.registry import register_step
from deepshrink.compress.renorm import batch_norm_restored
from deepshrink.config import default_train
from deepshrink.errors import UserError
from deepshrink.train import fit
from deepshrink.variant import StepContext, Variant


@dataclass(frozen=True)
class FinetuneConfig:
    """`finetune:epochs=10[,lr=0.01,alpha=0.5,temperature=2,renorm=1]`: lr 0 = the tuned training LR; alpha > 0
    also matches the model as it came (Hinton's loss, as prune.structured's retraining does); renorm trains with
    batch norm put back after each convolution and folds it in again (compress/renorm.py)."""

    epochs: int = 10
    lr: float = 0.0
    alpha: float = 0.0
    temperature: float = 2.0
    renorm: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise UserError(f"finetune.epochs={self.epochs}: must be >= 1")
        if self.lr < 0:
            raise UserError(f"finetune.lr={self.lr}: must be >= 0")
        if not 0.0 <= self.alpha <= 1.0:
            raise UserError(f"finetune.alpha={self.alpha}: must be in [0, 1]")
        if not self.temperature > 0:
            raise UserError(f"finetune.temperature={self.temperature}: must be > 0")



@register_step("finetune", FinetuneConfig)
def apply_finetune(v: Variant, cfg: FinetuneConfig, ctx: StepContext) -> Variant:
    model = v.model.to(ctx.device)
    base = default_train(v.manifest.dataset, v.manifest.model, seed=ctx.seed)
    run = dataclasses.replace(base, epochs=cfg.epochs, lr=cfg.lr or base.lr)
    teacher = copy.deepcopy(model).eval() if cfg.alpha > 0 else None
    objective = distill_objective(frozen_teacher(teacher), cfg.temperature, cfg.alpha) if teacher else None
    with batch_norm_restored(model, ctx.data.train_x) if cfg.renorm else nullcontext():
        log = fit(model, ctx.data, run, objective=objective, progress=ctx.progress, label="finetune",
                  device=ctx.device)
    model.cpu()
    return Variant(v.id, model, copy.deepcopy(v.manifest), v.deployment, log=log,
                   train_seconds=v.train_seconds + log.seconds, epochs=v.epochs + run.epochs, seed=v.seed,
                   info=dict(v.info))
