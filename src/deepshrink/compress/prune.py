"""Registered compression steps: `prune.unstructured` and `prune.structured` (SPEC §5).

Unstructured: saliency-ranked weights are masked to zero and held there through retraining in the
shared loop; the variant ships as the `sparse` file (non-zeros + relative indices). Structured:
neurons/filters are removed physically and the smaller dense model is retrained.

`layers` (both steps): "" = every candidate layer, or `fc`/`conv`/`all` (structured), or a `+`
list of layer names each with an optional own fraction, e.g. `fc1=0.95+fc2=0.9+fc3`.
"""

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn

from deepshrink.compress import register_step
from deepshrink.compress.prune_structured import IMPORTANCES, LAYER_KINDS, candidate_layers, prune_units
from deepshrink.compress.prune_unstructured import (
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
from deepshrink.compress.sparse_format import EXPORTERS
from deepshrink.config import default_train
from deepshrink.data import DataSplits
from deepshrink.errors import UserError
from deepshrink.export import Deployment
from deepshrink.train import TrainConfig, TrainLog, fit
from deepshrink.variant import StepContext, Variant

SCOPES = ("layer", "global")
RETRAIN_LR_FACTOR = 0.2  # retraining starts from a good optimum: a fifth of the tuned training LR


def _check_fraction(value: float, key: str) -> None:
    if not 0.0 <= value < 1.0:
        raise UserError(f"{key}={value}: must be in [0, 1)")


def parse_layers(spec: str, key: str) -> dict[str, float | None]:
    """`fc1=0.9+fc2` -> {"fc1": 0.9, "fc2": None} (None = the step's global fraction)."""
    out: dict[str, float | None] = {}
    for part in filter(None, (p.strip() for p in spec.split("+"))):
        name, eq, value = part.partition("=")
        if not eq:
            out[name] = None
            continue
        try:
            out[name] = float(value)
        except ValueError:
            raise UserError(f"{key}: {part!r} is not name=fraction") from None
        _check_fraction(out[name], f"{key} {name}")  # type: ignore[arg-type]
    return out


def resolve_layers(model: nn.Module, spec: dict[str, float | None], candidates: list[str], default: float,
                   key: str) -> dict[str, float]:
    """Per-layer fractions for the named layers (all candidates when none are named)."""
    unknown = [n for n in spec if n not in candidates]
    if unknown:
        raise UserError(f"{key}: no prunable layer {unknown[0]!r} in this model (layers: {', '.join(candidates)})")
    names = list(spec) or candidates
    return {n: default if spec.get(n) is None else float(spec[n]) for n in names}  # type: ignore[arg-type]


def retrain_config(v: Variant, epochs: int, lr: float, seed: int) -> TrainConfig:
    base = default_train(v.manifest.dataset, v.manifest.model, seed=seed)
    return dataclasses.replace(base, epochs=epochs, lr=lr or base.lr * RETRAIN_LR_FACTOR)


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
        _check_fraction(self.sparsity, "prune.unstructured.sparsity")
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


@dataclass(frozen=True)
class PruneStructuredConfig:
    """`prune.structured:ratio=0.8,importance=l1,layers=fc,epochs=10` (layers: fc/conv/all or a list)."""

    ratio: float = 0.5
    importance: str = "l1"
    layers: str = "all"
    epochs: int = 10
    lr: float = 0.0

    def __post_init__(self) -> None:
        _check_fraction(self.ratio, "prune.structured.ratio")
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
    return ",".join(f"{n}={m.weight.shape[0]}" for n, m in model.named_modules()
                    if isinstance(m, (nn.Linear, nn.Conv2d)))


@register_step("prune.structured", PruneStructuredConfig)
def apply_prune_structured(v: Variant, cfg: PruneStructuredConfig, ctx: StepContext) -> Variant:
    model = v.model.to(ctx.device)
    ratios = structured_ratios(model, cfg)
    prune_units(model, ratios, cfg.importance, ctx.data, ctx.data.train_x[:1], "prune.structured.ratio")
    log = v.log
    if cfg.epochs:
        log = fit(model, ctx.data, retrain_config(v, cfg.epochs, cfg.lr, ctx.seed), progress=ctx.progress,
                  label="retrain structured", device=ctx.device)
    model.cpu()
    info = {**v.info, "pruned_widths": widths(model)}
    return Variant(v.id, model, copy.deepcopy(v.manifest), v.deployment, log=log,
                   train_seconds=v.train_seconds + (log.seconds if log and cfg.epochs else 0.0),
                   epochs=v.epochs + cfg.epochs, seed=v.seed, info=info)
