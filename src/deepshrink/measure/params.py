"""Parameter counts (total, non-zero, per layer) and multiply-accumulates per image."""

from dataclasses import dataclass

import torch
from torch import nn

from deepshrink.models import weighted_layers


@dataclass
class LayerStats:
    layer: str
    shape: str  # weight shape, e.g. "300x784"
    params_total: int
    params_nonzero: int
    macs: int  # dense MACs per image
    macs_nonzero: int  # MACs that touch a non-zero weight (what a sparse kernel does)


@torch.no_grad()
def layer_stats(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerStats]:
    """Per-layer counts; MACs from output sizes seen by forward hooks on one example image. A model that
    counts its own layers (a user's ONNX graph kept as it came: ingest/onnx_graph.py) is asked instead."""
    own = getattr(model, "layer_stats", None)
    if callable(own):
        return list(own())
    out_elems: dict[str, int] = {}
    hooks = []
    for name, mod in weighted_layers(model, None):
        def hook(m: nn.Module, inp: object, out: torch.Tensor, name: str = name) -> None:
            out_elems[name] = out[0].numel() // (out.shape[1] if out.dim() > 1 else 1)  # positions per channel
        hooks.append(mod.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        model(torch.zeros(1, *input_shape, dtype=p.dtype, device=p.device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    stats = []
    for name, mod in weighted_layers(model, None):
        w: torch.Tensor = mod.weight  # type: ignore[assignment]  # Module.__getattr__ is Tensor | Module
        params = [t for t in (w, getattr(mod, "bias", None)) if isinstance(t, torch.Tensor)]
        positions = out_elems.get(name, 1)
        # Each weight is used once per output position (1 for Linear, H_out*W_out for Conv2d).
        stats.append(LayerStats(
            layer=name, shape="x".join(str(s) for s in w.shape),
            params_total=sum(t.numel() for t in params),
            params_nonzero=sum(int(torch.count_nonzero(t)) for t in params),
            macs=w.numel() * positions, macs_nonzero=int(torch.count_nonzero(w)) * positions,
        ))
    return stats
