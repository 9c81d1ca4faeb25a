"""The `prune.unstructured` step: saliency-ranked weights are masked to zero and held there through
retraining in the shared loop (schedules: oneshot, iterative, AGP); the variant ships as the `sparse`
file (non-zeros + relative indices)."""

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn

from deepshrink.compress.prune.layers import check_fraction, parse_layers, resolve_layers, retrain_config
from deepshrink.compress.prune.masks import (
    SALIENCIES,
    SCHEDULES,
    MaskCallback,
    Masks,
    Round,
    apply_masks,
    compute_masks,
    mask_sparsity,
    prunable_layers,
)
from deepshrink.compress.registry import register_step
from deepshrink.data import DataSplits
from deepshrink.errors import UserError
from deepshrink.export import EXPORTERS
from deepshrink.train import TrainConfig, TrainLog, fit
from deepshrink.variant import Deployment, StepContext, Variant

SCOPES = ("layer", "global")


@dataclass(frozen=True)
class PruneUnstructuredConfig:
    """`prune.unstructured:sparsity=0.92,saliency=magnitude,scope=global,schedule=iterative,rounds=3`.

    sparsity: fraction of the pruned layers' weights removed; epochs: total retraining epochs over all
    rounds; lr 0 = a fifth of the tuned training LR; deploy: `sparse` file or `fp32` (dense ONNX).
    """

    sparsity: float = 0.9
    saliency: str = "magnitude"
    scope: str = "global"
    schedule: str = "iterative"
    rounds: int = 3
    epochs: int = 9
    lr: float = 0.0
    layers: str = ""
    deploy: str = "sparse"

    def __post_init__(self) -> None:
        check_fraction(self.sparsity, "prune.unstructured.sparsity")
        for key, reg in (("saliency", SALIENCIES), ("schedule", SCHEDULES), ("deploy", EXPORTERS)):
            if getattr(self, key) not in reg:
                raise UserError(f"prune.unstructured.{key}={getattr(self, key)!r}: unknown "
                                f"(known: {', '.join(reg.names())})")
        if self.scope not in SCOPES:
            raise UserError(f"prune.unstructured.scope={self.scope!r}: unknown (known: {', '.join(SCOPES)})")
        if self.rounds < 1:
            raise UserError(f"prune.unstructured.rounds={self.rounds}: must be >= 1")
        if self.epochs < 0 or self.lr < 0:
            raise UserError("prune.unstructured.epochs/lr: must be >= 0")
        spec = parse_layers(self.layers, "prune.unstructured.layers")
        if self.scope == "global" and any(s is not None for s in spec.values()):
            raise UserError("prune.unstructured.layers: per-layer fractions need scope=layer")


class _Plan:
    """Per-layer schedules merged: the sparsity target (one number, or one per layer) of each epoch."""

    def __init__(self, cfg: PruneUnstructuredConfig, fractions: dict[str, float]) -> None:
        sched = SCHEDULES.get(cfg.schedule)
        self.glob = cfg.scope == "global"
        self.rounds: list[Round] = sched(cfg.sparsity, cfg.rounds, cfg.epochs)
        self.per_layer = {n: sched(s, cfg.rounds, cfg.epochs) for n, s in fractions.items()}

    def target(self, r: int, e: int) -> float | dict[str, float]:
        if self.glob:
            return self.rounds[r].targets[e]
        return {n: rounds[r].targets[e] for n, rounds in self.per_layer.items()}


def prune_unstructured(model: nn.Module, cfg: PruneUnstructuredConfig, data: DataSplits, train: TrainConfig,
                       fractions: dict[str, float], ctx: StepContext) -> tuple[Masks, list[TrainLog]]:
    """Run the schedule: prune to each round's first target, retrain with masks held (re-pruning at
    epoch starts where the target rises), and return the final masks and training logs."""
    plan, layers = _Plan(cfg, fractions), list(fractions)
    masks: Masks | None = None
    logs = []
    for r, rnd in enumerate(plan.rounds):
        masks = compute_masks(model, cfg.saliency, plan.target(r, 0), cfg.scope, layers, data, masks)
        apply_masks(model, masks)
        if not rnd.epochs:
            continue

        cb = MaskCallback(masks)

        def reprune(m: nn.Module, epoch: int, r: int = r, cb: MaskCallback = cb) -> Masks | None:
            if epoch == 1 or plan.target(r, epoch - 1) == plan.target(r, epoch - 2):
                return None
            return compute_masks(m, cfg.saliency, plan.target(r, epoch - 1), cfg.scope, layers, data, cb.masks)

        cb.reprune = reprune
        logs.append(fit(model, data, dataclasses.replace(train, epochs=rnd.epochs), callbacks=[cb],
                        progress=ctx.progress, label=f"prune round {r + 1}/{len(plan.rounds)}", device=ctx.device))
        masks = cb.masks
        apply_masks(model, masks)  # fit restores the best epoch's weights: keep the latest masks on them
    assert masks is not None
    return masks, logs


@register_step("prune.unstructured", PruneUnstructuredConfig)
def apply_prune_unstructured(v: Variant, cfg: PruneUnstructuredConfig, ctx: StepContext) -> Variant:
    model = v.model.to(ctx.device)
    spec = parse_layers(cfg.layers, "prune.unstructured.layers")
    fractions = resolve_layers(model, spec, prunable_layers(model), cfg.sparsity, "prune.unstructured.layers")
    train = retrain_config(v, cfg.epochs, cfg.lr, ctx.seed)
    masks, logs = prune_unstructured(model, cfg, ctx.data, train, fractions, ctx)
    model.cpu()
    info: dict[str, Any] = {**v.info, "pruned_weight_sparsity": mask_sparsity(masks)}
    seconds = sum(log.seconds for log in logs)
    return Variant(v.id, model, copy.deepcopy(v.manifest), Deployment(cfg.deploy), log=logs[-1] if logs else v.log,
                   train_seconds=v.train_seconds + seconds, epochs=v.epochs + cfg.epochs, seed=v.seed, info=info)
