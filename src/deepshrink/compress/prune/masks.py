"""Unstructured pruning primitives, usable alone (Torch-Pruning style layering):

saliency functions (registry) -> `compute_masks` -> `MaskCallback` for the shared loop -> schedules
(registry) that say which sparsity holds at each retraining epoch.

Masks zero weights with `masked_fill` (+0.0, never -0.0) so the sparse file's zeros are exact.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from deepshrink.data import DataSplits
from deepshrink.errors import UserError
from deepshrink.models import weight_of, weighted_layers
from deepshrink.registry import Registry

Masks = dict[str, Tensor]  # layer name -> bool tensor shaped like its weight (True = kept)
# A saliency scores every weight of the given layers; low scores are pruned first.
SaliencyFn = Callable[[nn.Module, list[str], DataSplits | None], dict[str, Tensor]]
SALIENCIES: Registry[SaliencyFn] = Registry("saliency")


def prunable_layers(model: nn.Module) -> list[str]:
    """Names of the Linear/Conv2d layers, in model order."""
    return [n for n, _ in weighted_layers(model)]


@SALIENCIES.register("magnitude")
def magnitude_saliency(model: nn.Module, layers: list[str], data: DataSplits | None) -> dict[str, Tensor]:
    return {n: weight_of(model, n).detach().abs() for n in layers}


def fisher_diagonal(model: nn.Module, data: DataSplits, samples: int = 1024, chunk: int = 128,
                    seed: int = 0, sampled_labels: bool = False) -> dict[str, Tensor]:
    """Diagonal Fisher, E[g_i^2] over per-sample gradients (torch.func vmap of grad).

    Per-sample (not per-batch) squares: the mean of squared batch gradients would shrink by the
    batch size and mix in gradient correlations between samples. With `sampled_labels` the labels
    are drawn from the model's own softmax (the true Fisher, equal in expectation to the Gauss-Newton
    Hessian of cross-entropy); otherwise the data's labels (the empirical Fisher), which nearly
    vanishes on the well-fit training samples (Kunstner et al. 2019).
    """
    params = {k: v.detach() for k, v in model.named_parameters()}
    was_training = model.training
    model.eval()

    def loss_one(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = functional_call(model, p, (x.unsqueeze(0),))
        return F.cross_entropy(out, y.unsqueeze(0))

    per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0))
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.train_x), generator=gen)[:samples]
    device = next(iter(params.values())).device
    acc = {k: torch.zeros_like(v) for k, v in params.items()}
    for i in range(0, len(idx), chunk):
        sel = idx[i : i + chunk]
        x, y = data.train_x[sel].to(device), data.train_y[sel].to(device)
        if sampled_labels:
            with torch.no_grad():
                probs = F.softmax(model(x).float(), dim=1).cpu()
            y = torch.multinomial(probs, 1, generator=gen).squeeze(1).to(device)
        grads = per_sample(params, x, y)
        for k, g in grads.items():
            acc[k] += g.pow(2).sum(0)
    model.train(was_training)
    return {k: v / len(idx) for k, v in acc.items()}


def _obd(model: nn.Module, layers: list[str], data: DataSplits | None, sampled: bool) -> dict[str, Tensor]:
    if data is None:
        raise UserError("saliency=obd: needs training data for its Fisher estimate")
    fisher = fisher_diagonal(model, data, sampled_labels=sampled)
    return {n: 0.5 * fisher[f"{n}.weight"] * weight_of(model, n).detach().pow(2) for n in layers}


@SALIENCIES.register("obd")
def obd_saliency(model: nn.Module, layers: list[str], data: DataSplits | None) -> dict[str, Tensor]:
    """Optimal Brain Damage (LeCun et al. 1990): s_i = h_ii w_i^2 / 2, the diagonal Hessian h_ii
    estimated by the empirical Fisher of the training samples."""
    return _obd(model, layers, data, sampled=False)


@SALIENCIES.register("obd-fisher")
def obd_true_fisher_saliency(model: nn.Module, layers: list[str], data: DataSplits | None) -> dict[str, Tensor]:
    """OBD with h_ii from the true Fisher (labels sampled from the model): the Gauss-Newton diagonal."""
    return _obd(model, layers, data, sampled=True)


def _kth_threshold(scores: Tensor, k: int) -> float:
    """The score at or below which `k` entries are pruned (k >= 1)."""
    return float(torch.kthvalue(scores.flatten().float().cpu(), k).values)


def _mask_k_lowest(scores: Tensor, k: int) -> Tensor:
    """Exactly `k` lowest scores pruned (ties broken by position, stable across runs)."""
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    if k > 0:
        keep[torch.argsort(scores.flatten().float().cpu(), stable=True)[:k]] = False
    return keep.view(scores.shape).to(scores.device)


def compute_masks(model: nn.Module, saliency: str, sparsity: float | dict[str, float], scope: str = "layer",
                  layers: list[str] | None = None, data: DataSplits | None = None,
                  previous: Masks | None = None) -> Masks:
    """Masks removing `sparsity` of the weights of each layer (scope=layer; a dict gives per-layer
    fractions) or of all listed layers together (scope=global, one threshold).

    Already-pruned weights score -inf so masks only ever grow: a pruned weight never comes back.
    """
    layers = layers or prunable_layers(model)
    scores = SALIENCIES.get(saliency)(model, layers, data)
    for n, prev in (previous or {}).items():
        if n in scores:
            scores[n] = scores[n].masked_fill(~prev, -math.inf)
    if scope == "global":
        if isinstance(sparsity, dict):
            raise UserError("scope=global: takes one sparsity, not per-layer values")
        flat = torch.cat([scores[n].flatten().float().cpu() for n in layers])
        k = round(sparsity * flat.numel())
        if k == 0:
            return {n: torch.ones_like(scores[n], dtype=torch.bool) for n in layers}
        keep = _mask_k_lowest(flat, k)
        parts = keep.split([scores[n].numel() for n in layers])
        return {n: p.view(scores[n].shape).to(scores[n].device) for n, p in zip(layers, parts, strict=True)}
    per_layer = sparsity if isinstance(sparsity, dict) else dict.fromkeys(layers, sparsity)
    return {n: _mask_k_lowest(scores[n], round(per_layer.get(n, 0.0) * scores[n].numel())) for n in layers}


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks) -> None:
    for name, mask in masks.items():
        weight_of(model, name).masked_fill_(~mask, 0.0)


def mask_sparsity(masks: Masks) -> float:
    total = sum(m.numel() for m in masks.values())
    return 1.0 - sum(int(m.sum()) for m in masks.values()) / total if total else 0.0


class MaskCallback:
    """Keeps pruned weights at zero through retraining; optionally re-prunes at epoch starts (AGP)."""

    def __init__(self, masks: Masks, reprune: Callable[[nn.Module, int], Masks | None] | None = None) -> None:
        self.masks = masks
        self.reprune = reprune

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        if self.reprune is not None:
            new = self.reprune(model, epoch)
            if new is not None:
                self.masks = new
        apply_masks(model, self.masks)

    def on_step_end(self, model: nn.Module) -> None:
        apply_masks(model, self.masks)


@dataclass(frozen=True)
class Round:
    """One prune-retrain round: `targets[e]` is the sparsity holding during epoch e+1 (the first
    applies before training starts; a round of 0 epochs just prunes to targets[0])."""

    targets: tuple[float, ...]
    epochs: int


ScheduleFn = Callable[[float, int, int], list[Round]]  # (final sparsity, rounds, total epochs)
SCHEDULES: Registry[ScheduleFn] = Registry("schedule")


@SCHEDULES.register("oneshot")
def oneshot(sparsity: float, rounds: int, epochs: int) -> list[Round]:
    return [Round((sparsity,) * max(epochs, 1), epochs)]


@SCHEDULES.register("iterative")
def iterative(sparsity: float, rounds: int, epochs: int) -> list[Round]:
    """Han et al. 2015: k prune-retrain rounds. Density shrinks geometrically (the same fraction of the
    survivors goes each round); epochs are split evenly, the remainder to the last round."""
    rounds = max(rounds, 1)
    each, extra = divmod(epochs, rounds)
    out = []
    for r in range(1, rounds + 1):
        s = 1.0 - (1.0 - sparsity) ** (r / rounds)
        n = each + (extra if r == rounds else 0)
        out.append(Round((s,) * max(n, 1), n))
    return out


@SCHEDULES.register("agp")
def agp(sparsity: float, rounds: int, epochs: int) -> list[Round]:
    """Zhu & Gupta 2017: s_t = s_f (1 - (1 - t/n)^3) over the first ~2/3 of the epochs (pruned at
    epoch starts), then fine-tuning at s_f. One round: one LR schedule over the whole ramp."""
    if epochs < 2:
        return oneshot(sparsity, rounds, epochs)
    ramp = max(1, math.ceil(2 * epochs / 3))
    targets = [sparsity * (1.0 - (1.0 - min(e, ramp) / ramp) ** 3) for e in range(1, epochs + 1)]
    return [Round(tuple(targets), epochs)]
