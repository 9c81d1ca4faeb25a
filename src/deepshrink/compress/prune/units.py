"""Structured pruning primitives: unit importance (registry) and physical removal of neurons (Linear)
and filters (Conv2d) with Torch-Pruning's dependency graph, which also trims every dependant
(the next layer's inputs, including the conv -> flatten -> fc index expansion).

The result is an ordinary dense, smaller model; `checkpoint.load_checkpoint` rebuilds it from the
manifest's shapes (`models.shrink_to`).
"""

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepshrink.data import DataSplits
from deepshrink.errors import UserError
from deepshrink.models import WEIGHTED, weight_of, weighted_layers
from deepshrink.registry import Registry

# Importance of each output unit of a layer (one score per neuron/filter); low goes first.
ImportanceFn = Callable[[nn.Module, list[str], DataSplits | None], dict[str, Tensor]]
IMPORTANCES: Registry[ImportanceFn] = Registry("importance")
LAYER_KINDS: dict[str, tuple[type[nn.Module], ...]] = {"fc": (nn.Linear,), "conv": (nn.Conv2d,), "all": WEIGHTED}


def _w(model: nn.Module, layer: str) -> Tensor:
    return weight_of(model, layer).detach()


@IMPORTANCES.register("l1")
def l1_importance(model: nn.Module, layers: list[str], data: DataSplits | None) -> dict[str, Tensor]:
    return {n: _w(model, n).flatten(1).abs().sum(1) for n in layers}


@IMPORTANCES.register("l2")
def l2_importance(model: nn.Module, layers: list[str], data: DataSplits | None) -> dict[str, Tensor]:
    return {n: _w(model, n).flatten(1).norm(dim=1) for n in layers}


@IMPORTANCES.register("taylor")
def taylor_importance(model: nn.Module, layers: list[str], data: DataSplits | None, batches: int = 16,
                      batch_size: int = 64) -> dict[str, Tensor]:
    """First-order Taylor (Molchanov et al. 2019): (sum over a unit's weights of g*w)^2, the squared
    first-order loss change from removing the unit, averaged over mini-batches."""
    if data is None:
        raise UserError("importance=taylor: needs training data for its gradients")
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(data.train_x), generator=gen)[: batches * batch_size]
    device = next(model.parameters()).device
    scores = {n: torch.zeros(_w(model, n).shape[0], device=device) for n in layers}
    for i in range(0, len(idx), batch_size):
        sel = idx[i : i + batch_size]
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(data.train_x[sel].to(device)), data.train_y[sel].to(device)).backward()
        for n in layers:
            mod = model.get_submodule(n)
            w, b = mod.weight, getattr(mod, "bias", None)
            assert isinstance(w, Tensor) and w.grad is not None
            contrib = (w.grad * w).flatten(1).sum(1)
            if isinstance(b, Tensor) and b.grad is not None:
                contrib = contrib + b.grad * b
            scores[n] += contrib.detach().pow(2)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return scores


def out_channel_pruner(mod: nn.Module) -> Callable[..., Any]:
    """Torch-Pruning's function removing a Conv2d's filters or a Linear's neurons."""
    import torch_pruning as tp

    return tp.prune_conv_out_channels if isinstance(mod, nn.Conv2d) else tp.prune_linear_out_channels


def candidate_layers(model: nn.Module, kind: str) -> list[str]:
    """Prunable layers of a kind in model order; the last Linear is excluded (its units are classes)."""
    weighted = weighted_layers(model)
    output = weighted[-1][0] if weighted else ""
    return [n for n, m in weighted if isinstance(m, LAYER_KINDS[kind]) and n != output]


def untied_layers(model: nn.Module, example: Tensor) -> list[str]:
    """Prunable layers whose output units are tied to no other layer's outputs: a residual block's inner
    convolutions. A residual addition, a concatenation or a depthwise convolution ties the channels of the
    layers feeding it, so they are pruned as one group and the residual stream narrows with them; pruning
    only the untied layers keeps the stream's width."""
    import torch_pruning as tp

    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example.to(next(model.parameters()).device),
                                                  verbose=False)
    out = []
    for name in candidate_layers(model, "all"):
        mod = model.get_submodule(name)
        group = graph.get_pruning_group(mod, out_channel_pruner(mod), idxs=[0])
        tied = [item.dep.target.module for item in group if item.dep.target.module is not mod
                and isinstance(item.dep.target.module, WEIGHTED) and graph.is_out_channel_pruning_fn(item.dep.handler)]
        if not tied:
            out.append(name)
    return out


def rounded_ratios(model: nn.Module, ratios: dict[str, float], multiple: int) -> dict[str, float]:
    """Each layer's ratio moved so that the units it keeps are the nearest multiple of `multiple` (at least one
    multiple, at most all): SIMD kernels run whole blocks of channels, and an INT8 resnet8 cut to 12/24/48
    channels ran in OpenVINO barely faster than the uncut 16/32/64, where 8/16/32 ran 1.6x faster."""
    if multiple <= 1:
        return ratios
    out = {}
    for name, ratio in ratios.items():
        n = weight_of(model, name).shape[0]
        keep = min(n, max(multiple, multiple * round((n - round(ratio * n)) / multiple)))
        # Torch-Pruning keeps int(n * (1 - ratio)) units: the epsilon stops a float below `keep` from flooring
        out[name] = max(0.0, (n - keep) / n - 1e-9)
    return out


def units_to_remove(scores: Tensor, ratio: float, layer: str, key: str) -> list[int]:
    n = scores.numel()
    k = round(ratio * n)
    if k >= n:
        raise UserError(f"{key}: ratio {ratio:g} would remove every unit of {layer} ({n} units)")
    return sorted(torch.argsort(scores.float().cpu(), stable=True)[:k].tolist())


def prune_units(model: nn.Module, ratios: dict[str, float], importance: str, data: DataSplits | None,
                example: Tensor, key: str = "prune.structured") -> dict[str, list[int]]:
    """Physically remove the least important `ratios[layer]` of each layer's units, in place.

    Importance is scored on the unpruned model for all layers first, so one layer's removal does not
    bias another's scores. Returns the kept unit indices (original numbering) per layer.
    """
    import torch_pruning as tp

    layers = list(ratios)
    scores = IMPORTANCES.get(importance)(model, layers, data)
    removed = {n: units_to_remove(scores[n], ratios[n], n, key) for n in layers}
    kept = {n: sorted(set(range(scores[n].numel())) - set(removed[n])) for n in layers}
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example.to(next(model.parameters()).device),
                                                  verbose=False)
    for n in layers:
        if not removed[n]:
            continue
        mod = model.get_submodule(n)
        group = graph.get_pruning_group(mod, out_channel_pruner(mod), idxs=removed[n])
        group.prune()
    return kept


def prune_coupled(model: nn.Module, ratios: dict[str, float], importance: str, data: DataSplits | None,
                  example: Tensor) -> None:
    """Structured pruning of any graph, in place, by Torch-Pruning's group pruner: channels tied together
    (a residual addition's inputs, a depthwise conv and its neighbours, batch norms) go as one group,
    scored by the group's summed importance, so the pruned model stays consistent."""
    import torch_pruning as tp

    group_scores = {"l1": lambda: tp.importance.MagnitudeImportance(p=1),
                    "l2": lambda: tp.importance.MagnitudeImportance(p=2),
                    "taylor": lambda: tp.importance.GroupTaylorImportance()}
    if importance not in group_scores:
        raise UserError(f"importance={importance}: scores one layer's units; tied groups of channels take "
                        f"{'/'.join(group_scores)} (or prune with reconstruct=1, layers=inner)")
    imp = group_scores[importance]()
    device = next(model.parameters()).device
    modules = {n: model.get_submodule(n) for n in ratios}
    ignored = [m for n, m in weighted_layers(model) if n not in ratios]
    pruner = tp.pruner.MetaPruner(model, example.to(device), importance=imp, ignored_layers=ignored,
                                  pruning_ratio_dict={m: ratios[n] for n, m in modules.items()})
    if importance == "taylor":
        if data is None:
            raise UserError("importance=taylor: needs training data for its gradients")
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(data.train_x[:256].to(device)), data.train_y[:256].to(device)).backward()
    pruner.step()
    model.zero_grad(set_to_none=True)
