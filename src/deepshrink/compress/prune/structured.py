"""The `prune.structured` step: whole neurons (fc) and filters (conv) removed physically (units.py,
Torch-Pruning's dependency graph), then the smaller dense model is retrained."""

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from deepshrink.compress.distill.loss import distill_objective
from deepshrink.compress.prune.layers import check_fraction, parse_layers, resolve_layers, retrain_config
from deepshrink.compress.prune.units import IMPORTANCES, LAYER_KINDS, candidate_layers, prune_coupled, prune_units
from deepshrink.compress.registry import register_step
from deepshrink.errors import UserError
from deepshrink.export.qgraph import expressible
from deepshrink.models import weight_of, weighted_layers
from deepshrink.train import fit
from deepshrink.variant import StepContext, Variant


@dataclass(frozen=True)
class PruneStructuredConfig:
    """`prune.structured:ratio=0.8,importance=l1,layers=fc,epochs=10[,alpha=0.5,temperature=2]` (layers:
    fc/conv/all or a list)."""

    ratio: float = 0.5
    importance: str = "l1"
    layers: str = "all"
    epochs: int = 10
    lr: float = 0.0
    # alpha > 0: the retraining also matches the model from before pruning (Hinton's loss, the unpruned
    # model as teacher run on each batch), which recovers more of what a deep cut removed.
    alpha: float = 0.0
    temperature: float = 2.0

    def __post_init__(self) -> None:
        check_fraction(self.ratio, "prune.structured.ratio")
        if not 0.0 <= self.alpha <= 1.0:
            raise UserError(f"prune.structured.alpha={self.alpha}: must be in [0, 1]")
        if not self.temperature > 0:
            raise UserError(f"prune.structured.temperature={self.temperature}: must be > 0")
        if self.importance not in IMPORTANCES:
            raise UserError(f"prune.structured.importance={self.importance!r}: unknown "
                            f"(known: {', '.join(IMPORTANCES.names())})")
        if self.epochs < 0 or self.lr < 0:
            raise UserError("prune.structured.epochs/lr: must be >= 0")
        if self.layers not in LAYER_KINDS:
            parse_layers(self.layers, "prune.structured.layers")


def structured_ratios(model: nn.Module, cfg: PruneStructuredConfig) -> dict[str, float]:
    if cfg.layers in LAYER_KINDS:
        return dict.fromkeys(candidate_layers(model, cfg.layers), cfg.ratio)
    spec = parse_layers(cfg.layers, "prune.structured.layers")
    return resolve_layers(model, spec, candidate_layers(model, "all"), cfg.ratio, "prune.structured.layers")


def widths(model: nn.Module) -> str:
    """`fc1=60,fc2=20,...`: output units per layer, for results.csv."""
    return ",".join(f"{n}={weight_of(model, n).shape[0]}" for n, _ in weighted_layers(model))


def _frozen(teacher: nn.Module) -> Callable[[Tensor], Tensor]:
    def run(x: Tensor) -> Tensor:
        with torch.no_grad():
            return teacher(x)

    return run


@register_step("prune.structured", PruneStructuredConfig)
def apply_prune_structured(v: Variant, cfg: PruneStructuredConfig, ctx: StepContext) -> Variant:
    model = v.model.to(ctx.device)
    ratios = structured_ratios(model, cfg)
    teacher = copy.deepcopy(model).eval() if cfg.alpha > 0 and cfg.epochs else None
    if expressible(model):  # a plain stack: each layer's own units, scored on the unpruned model
        prune_units(model, ratios, cfg.importance, ctx.data, ctx.data.train_x[:1], "prune.structured.ratio")
    else:  # residuals, depthwise pairs, batch norm: coupled channels go as one group
        prune_coupled(model, ratios, cfg.importance, ctx.data, ctx.data.train_x[:1])
    log = v.log
    if cfg.epochs:
        objective = distill_objective(_frozen(teacher), cfg.temperature, cfg.alpha) if teacher else None
        log = fit(model, ctx.data, retrain_config(v, cfg.epochs, cfg.lr, ctx.seed), objective=objective,
                  progress=ctx.progress, label="retrain structured", device=ctx.device)
    model.cpu()
    info = {**v.info, "pruned_widths": widths(model)}
    return Variant(v.id, model, copy.deepcopy(v.manifest), v.deployment, log=log,
                   train_seconds=v.train_seconds + (log.seconds if log and cfg.epochs else 0.0),
                   epochs=v.epochs + cfg.epochs, seed=v.seed, info=info)
