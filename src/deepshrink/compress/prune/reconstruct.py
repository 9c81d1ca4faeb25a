"""Structured pruning with the reading layer refitted (He et al. 2017, "Channel Pruning for Accelerating Very
Deep Neural Networks"; Luo et al. 2017, ThiNet): units go one layer at a time, and the one layer that reads
them (its consumer) is refitted by least squares so that, on calibration images, its output from the pruned
model's own inputs matches the unpruned model's.

Why: a model exchanged as a file (a Keras .tflite) has its batch norm folded into the convolutions, so a
removed channel takes its bias and scale with it and nothing renormalizes what follows. MLPerf Tiny's ResNet-8
with its inner convolutions halved (l1) fell from 86.6 % to 20.2 % validation accuracy before retraining;
refitted, 68.1 %; chosen by the energy they give the consumer's output (`importance=output`) and refitted,
72.1 %.
"""

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepshrink.compress.prune.units import IMPORTANCES, out_channel_pruner, units_to_remove
from deepshrink.data import DataSplits
from deepshrink.errors import UserError
from deepshrink.models import WEIGHTED, weight_of

CALIBRATION_IMAGES = 1024  # training images the refit and the output importance see
_BATCH = 128
_RIDGE = 1e-4  # of the Gram matrix's mean diagonal: keeps the solve defined when a kept input is constant


def _graph(model: nn.Module, example: Tensor) -> Any:
    import torch_pruning as tp

    return tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)


def consumers(model: nn.Module, layers: list[str], example: Tensor, graph: Any = None) -> dict[str, str]:
    """The one Conv2d (groups=1) or Linear that reads each layer's units, found in Torch-Pruning's dependency
    graph (built from `example` unless given): its input channels go with the layer's outputs. Several readers,
    or a depthwise one, cannot be refitted one layer at a time: exit 2 naming the layer."""
    graph = _graph(model, example) if graph is None else graph
    names = {m: n for n, m in model.named_modules()}
    out = {}
    for layer in layers:
        mod = model.get_submodule(layer)
        group = graph.get_pruning_group(mod, out_channel_pruner(mod), idxs=[0])
        readers = [item.dep.target.module for item in group if isinstance(item.dep.target.module, WEIGHTED)
                   and graph.is_in_channel_pruning_fn(item.dep.handler)]
        readers = list(dict.fromkeys(readers))
        if len(readers) != 1 or getattr(readers[0], "groups", 1) != 1:
            raise UserError(f"prune.structured.reconstruct: {layer}'s units are read by {len(readers)} layers "
                            "(refitting needs exactly one convolution or linear layer reading them: layers=inner)")
        out[layer] = names[readers[0]]
    return out


def _calibration(data: DataSplits | None, device: torch.device) -> Tensor:
    if data is None:
        raise UserError("prune.structured.reconstruct / importance=output: needs training images")
    return data.train_x[:CALIBRATION_IMAGES].to(device)


def _io(model: nn.Module, name: str, x: Tensor) -> tuple[Tensor, Tensor]:
    """The input and output a submodule sees on the images `x`, in the model's current mode (prune_refitting
    puts it in eval mode)."""
    got: list[tuple[Tensor, Tensor]] = []
    hook = model.get_submodule(name).register_forward_hook(lambda m, i, o: got.append((i[0], o)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        hook.remove()
    return got[0]


def _rows(layer: nn.Module, x: Tensor) -> Tensor:
    """The layer's input as one row per output position (im2col for a convolution): its output is
    rows @ weight.T + bias."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    assert isinstance(layer, nn.Conv2d)
    cols = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding,  # type: ignore[arg-type]
                    stride=layer.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _targets(y: Tensor) -> Tensor:
    return y.reshape(-1, y.shape[-1]) if y.dim() == 2 else y.permute(0, 2, 3, 1).reshape(-1, y.shape[1])


def refit(original: nn.Module, pruned: nn.Module, consumer: str, x: Tensor) -> None:
    """Least squares for `consumer`'s weight and bias in `pruned`: its output on the pruned model's inputs
    made as close as it can be to the original model's, Gram matrices summed batch by batch (float64)."""
    layer = pruned.get_submodule(consumer)
    assert isinstance(layer, nn.Conv2d | nn.Linear)
    if layer.bias is None:
        raise UserError(f"prune.structured.reconstruct: {consumer} has no bias to refit")
    gram: Tensor | None = None
    cross: Tensor | None = None
    for batch in x.split(_BATCH):
        rows = _rows(layer, _io(pruned, consumer, batch)[0])
        rows = torch.cat([rows, torch.ones(len(rows), 1, device=rows.device)], 1).double()
        target = _targets(_io(original, consumer, batch)[1]).double()
        gram = rows.T @ rows if gram is None else gram + rows.T @ rows
        cross = rows.T @ target if cross is None else cross + rows.T @ target
    assert gram is not None and cross is not None
    gram += _RIDGE * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    solution = torch.linalg.solve(gram, cross).float()
    with torch.no_grad():
        layer.weight.copy_(solution[:-1].T.reshape(layer.weight.shape))
        layer.bias.copy_(solution[-1])


def prune_refitting(model: nn.Module, ratios: dict[str, float], importance: str, data: DataSplits | None,
                    example: Tensor, key: str = "prune.structured.ratio") -> None:
    """Remove each layer's least important units in place, in model order, refitting its consumer after each
    layer (scores from the unpruned model, as `units.prune_units`)."""
    model.eval()
    device = next(model.parameters()).device
    x = _calibration(data, device)
    graph = _graph(model, example.to(device))
    readers = consumers(model, list(ratios), example, graph)
    original = copy.deepcopy(model)
    scores = IMPORTANCES.get(importance)(model, list(ratios), data)
    for layer, ratio in ratios.items():
        removed = units_to_remove(scores[layer], ratio, layer, key)
        if not removed:
            continue
        mod = model.get_submodule(layer)
        graph.get_pruning_group(mod, out_channel_pruner(mod), idxs=removed).prune()
        refit(original, model, readers[layer], x)


@IMPORTANCES.register("output")
def output_importance(model: nn.Module, layers: list[str], data: DataSplits | None) -> dict[str, Tensor]:
    """Each unit's share of its consumer's output: the mean square of what the consumer computes from that
    unit alone (its weights' magnitude says little when batch norm is folded into them)."""
    device = next(model.parameters()).device
    x = _calibration(data, device)[:256]
    readers = consumers(model, layers, x[:1])
    scores = {}
    for layer in layers:
        reader = model.get_submodule(readers[layer])
        assert isinstance(reader, nn.Conv2d | nn.Linear)
        a = _io(model, readers[layer], x)[0]
        w = reader.weight.detach()
        if isinstance(reader, nn.Linear):
            if a.shape[-1] != w.shape[1] or w.shape[1] != weight_of(model, layer).shape[0]:
                raise UserError(f"importance=output: {readers[layer]} does not read {layer}'s units one by one")
            scores[layer] = (a.unsqueeze(1) * w.unsqueeze(0)).pow(2).mean((0, 1))
            continue
        assert isinstance(reader, nn.Conv2d)
        scores[layer] = torch.stack([
            F.conv2d(a[:, c:c + 1], w[:, c:c + 1], stride=reader.stride, padding=reader.padding,
                     dilation=reader.dilation).pow(2).mean() for c in range(a.shape[1])])
    return scores
