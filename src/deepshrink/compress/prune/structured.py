"""The `prune.structured` step: whole neurons (fc) and filters (conv) removed physically (units.py,
Torch-Pruning's dependency graph), then the smaller dense model is retrained."""

import copy
import dataclasses
from contextlib import nullcontext
from dataclasses import dataclass

from torch import Tensor, nn

from deepshrink.compress.distill.loss import distill_objective, frozen_teacher
from deepshrink.compress.prune.layers import RETRAIN_LR_FACTOR, check_fraction, parse_layers, resolve_layers
from deepshrink.compress.prune.reconstruct import prune_refitting
from deepshrink.compress.prune.units import (
    IMPORTANCES,
    LAYER_KINDS,
    candidate_layers,
    prune_coupled,
    prune_units,
    rounded_ratios,
    untied_layers,
)
from deepshrink.compress.registry import register_step
from deepshrink.compress.renorm import batch_norm_restored
from deepshrink.config import default_train
from deepshrink.errors import UserError
from deepshrink.models import weight_of, weighted_layers
from deepshrink.quant.plan import expressible
from deepshrink.train import TrainConfig, fit
from deepshrink.variant import StepContext, Variant

INNER = "inner"


@dataclass(frozen=True)
class PruneStructuredConfig:
    """`prune.structured:ratio=0.8,importance=l1,layers=fc,epochs=10[,alpha=0.5,temperature=2,round_to=8]`
    (layers: fc/conv/all, inner (the layers whose units no other layer's are tied to: a residual block's
    inner convolutions), or a list). epochs/lr/alpha left unset follow the graph (`retraining`).
    reconstruct: after each layer's cut, the layer reading its units is refitted by least squares
    (reconstruct.py); importance=output ranks units by what they give that layer. renorm: the retraining runs
    with batch norm put back after each convolution, folded in again after it (compress/renorm.py)."""

    ratio: float = 0.5
    importance: str = "l1"
    layers: str = "all"
    epochs: int = -1  # -1: 10 for a plain stack, 40 for a coupled graph (10 for its inner layers alone)
    lr: float = 0.0  # 0: a fifth of the tuned LR for a plain stack, the tuned LR for a coupled graph
    # alpha > 0: the retraining also matches the model from before pruning (Hinton's loss, the unpruned
    # model as teacher run on each batch), which recovers more of what a deep cut removed.
    alpha: float = -1.0  # -1: 0 for a plain stack, 0.5 for a coupled graph
    temperature: float = 2.0
    round_to: int = 1  # the units each layer keeps: the nearest multiple of this (SIMD blocks of channels)
    reconstruct: bool = False
    renorm: bool = False

    def __post_init__(self) -> None:
        check_fraction(self.ratio, "prune.structured.ratio")
        if not (0.0 <= self.alpha <= 1.0 or self.alpha == -1.0):
            raise UserError(f"prune.structured.alpha={self.alpha}: must be in [0, 1]")
        if not self.temperature > 0:
            raise UserError(f"prune.structured.temperature={self.temperature}: must be > 0")
        if self.importance not in IMPORTANCES:
            raise UserError(f"prune.structured.importance={self.importance!r}: unknown "
                            f"(known: {', '.join(IMPORTANCES.names())})")
        if self.epochs < -1 or self.lr < 0:
            raise UserError("prune.structured.epochs/lr: must be >= 0")
        if self.round_to < 1:
            raise UserError(f"prune.structured.round_to={self.round_to}: must be >= 1")
        if self.layers not in (*LAYER_KINDS, INNER):
            parse_layers(self.layers, "prune.structured.layers")


def structured_ratios(model: nn.Module, cfg: PruneStructuredConfig, example: Tensor) -> dict[str, float]:
    if cfg.layers == INNER:
        ratios = dict.fromkeys(untied_layers(model, example), cfg.ratio)
        if not ratios:
            raise UserError("prune.structured.layers=inner: every prunable layer's units are tied to another's")
    elif cfg.layers in LAYER_KINDS:
        ratios = dict.fromkeys(candidate_layers(model, cfg.layers), cfg.ratio)
    else:
        spec = parse_layers(cfg.layers, "prune.structured.layers")
        ratios = resolve_layers(model, spec, candidate_layers(model, "all"), cfg.ratio, "prune.structured.layers")
    return rounded_ratios(model, ratios, cfg.round_to)


def widths(model: nn.Module) -> str:
    """`fc1=60,fc2=20,...`: output units per layer, for results.csv."""
    return ",".join(f"{n}={weight_of(model, n).shape[0]}" for n, _ in weighted_layers(model))


@dataclass(frozen=True)
class Retraining:
    epochs: int
    lr_factor: float  # of the tuned training LR, when the config leaves lr unset
    alpha: float


# Measured on ResNet-8 / CIFAR-10 at ratio=0.5 (74 % of the weights gone): the plain-stack schedule
# (10 epochs, a fifth of the LR, no teacher) lost 4.76 pt, 20 epochs at full LR with the unpruned model
# as teacher lost 2.32, 40 epochs lost 0.84. A LeNet stack recovers within 10 epochs at the low LR.
# With the residual stream kept (layers=inner), the cut is shallower: ResNet-8 (12 epochs, 76.73 % test) with its
# inner convs halved recovered to 76.68 % in 10 epochs with the teacher (INT8 after it, test set).
_STACK = Retraining(epochs=10, lr_factor=RETRAIN_LR_FACTOR, alpha=0.0)
_COUPLED = Retraining(epochs=40, lr_factor=1.0, alpha=0.5)
_INNER = Retraining(epochs=10, lr_factor=1.0, alpha=0.5)


def retraining(cfg: PruneStructuredConfig, coupled: bool, v: Variant, seed: int) -> tuple[TrainConfig, float]:
    """The retraining run and its KD weight: the config's own values, the graph's defaults where unset."""
    auto = (_INNER if cfg.layers == INNER else _COUPLED) if coupled else _STACK
    base = default_train(v.manifest.dataset, v.manifest.model, seed=seed)
    run = dataclasses.replace(base, epochs=auto.epochs if cfg.epochs == -1 else cfg.epochs,
                              lr=cfg.lr or base.lr * auto.lr_factor)
    return run, auto.alpha if cfg.alpha == -1.0 else cfg.alpha



@register_step("prune.structured", PruneStructuredConfig)
def apply_prune_structured(v: Variant, cfg: PruneStructuredConfig, ctx: StepContext) -> Variant:
    model = v.model.to(ctx.device)
    ratios = structured_ratios(model, cfg, ctx.data.train_x[:1])
    coupled = not expressible(model)
    run, alpha = retraining(cfg, coupled, v, ctx.seed)
    teacher = copy.deepcopy(model).eval() if alpha > 0 and run.epochs else None
    if cfg.reconstruct:  # one layer at a time, its reader refitted: needs one reader per pruned layer
        prune_refitting(model, ratios, cfg.importance, ctx.data, ctx.data.train_x[:1])
    elif coupled:  # residuals, depthwise pairs, batch norm: coupled channels go as one group
        prune_coupled(model, ratios, cfg.importance, ctx.data, ctx.data.train_x[:1])
    else:  # a plain stack: each layer's own units, scored on the unpruned model
        prune_units(model, ratios, cfg.importance, ctx.data, ctx.data.train_x[:1], "prune.structured.ratio")
    log = v.log
    if run.epochs:
        objective = distill_objective(frozen_teacher(teacher), cfg.temperature, alpha) if teacher else None
        with batch_norm_restored(model, ctx.data.train_x) if cfg.renorm else nullcontext():
            log = fit(model, ctx.data, run, objective=objective,
                      progress=ctx.progress, label="retrain structured", device=ctx.device)
    model.cpu()
    info = {**v.info, "pruned_widths": widths(model)}
    return Variant(v.id, model, copy.deepcopy(v.manifest), v.deployment, log=log,
                   train_seconds=v.train_seconds + (log.seconds if log and run.epochs else 0.0),
                   epochs=v.epochs + run.epochs, seed=v.seed, info=info)
