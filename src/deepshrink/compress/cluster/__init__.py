"""The `cluster` step (SPEC §5): weight sharing by k-means per layer over the non-zero weights (2^bits
centroids, linear start), then centroid fine-tuning through the shared loop, as Deep Compression's
trained quantization (Han et al. 2016). Pruned weights stay exactly zero.

The result has at most 2^bits distinct non-zero values per layer; the `encode` step (compress/encode.py)
stores them as codebook indices. Codebooks are recorded in the manifest (`info.codebooks`), and they
are the weights' distinct values, so they are also recoverable from the weights alone.
"""

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from deepshrink.compress.cluster.share import bake, cluster_layer, distinct_nonzero, linear_kmeans
from deepshrink.compress.prune.layers import retrain_config
from deepshrink.compress.registry import register_step
from deepshrink.errors import UserError
from deepshrink.models import weight_of, weighted_layers
from deepshrink.train import fit
from deepshrink.variant import StepContext, Variant

__all__ = ["ClusterConfig", "apply_cluster", "bake", "cluster_layer", "distinct_nonzero", "linear_kmeans"]

# Centroid fine-tuning LR as a fraction of pruning's retraining LR: a centroid's gradient is the sum over
# all weights sharing it (hundreds to thousands), so it takes much smaller steps than single weights.
CLUSTER_LR_FACTOR = 0.1


@dataclass(frozen=True)
class ClusterConfig:
    """`cluster:bits=5,epochs=3` (every layer 5 bits) or `cluster:conv_bits=8,fc_bits=5` (Han et al.'s
    choice: convolutions are more sensitive). `conv_bits`/`fc_bits` 0 = `bits`; epochs 0 = k-means only;
    lr 0 = CLUSTER_LR_FACTOR of pruning's retraining LR; `bias_bits=16` rounds the clustered layers'
    biases to float16 values after fine-tuning (the .dsz then stores them in half the bytes)."""

    bits: int = 5
    epochs: int = 3
    conv_bits: int = 0
    fc_bits: int = 0
    lr: float = 0.0
    bias_bits: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 8:
            raise UserError(f"cluster.bits={self.bits}: must be between 1 and 8")
        for key in ("conv_bits", "fc_bits"):
            value = getattr(self, key)
            if value and not 1 <= value <= 8:
                raise UserError(f"cluster.{key}={value}: must be between 1 and 8 (0 = bits)")
        if self.epochs < 0:
            raise UserError(f"cluster.epochs={self.epochs}: must be >= 0")
        if self.lr < 0:
            raise UserError(f"cluster.lr={self.lr}: must be >= 0")
        if self.bias_bits not in (16, 32):
            raise UserError(f"cluster.bias_bits={self.bias_bits}: must be 16 or 32")

    def bits_for(self, module: nn.Module) -> int:
        specific = self.fc_bits if isinstance(module, nn.Linear) else self.conv_bits
        return specific or self.bits


def share_model(model: nn.Module, cfg: ClusterConfig) -> tuple[dict[str, int], list[str]]:
    """Cluster every Linear/Conv2d layer in place: (layer -> bits, layers left as they are)."""
    layers = weighted_layers(model)
    if not any(bool(torch.count_nonzero(weight_of(model, n))) for n, _ in layers):
        raise UserError("cluster: the model has no non-zero weights in its Linear/Conv2d layers to cluster")
    bits, skipped = {}, []
    for name, module in layers:
        if cluster_layer(module, cfg.bits_for(module)):
            bits[name] = cfg.bits_for(module)
        else:
            skipped.append(name)
    return bits, skipped


@torch.no_grad()
def round_biases(model: nn.Module, layers: list[str]) -> None:
    """Biases to the nearest float16 value, kept in float32 (a relative change under 2^-11)."""
    for name in layers:
        bias = getattr(model.get_submodule(name), "bias", None)
        if isinstance(bias, torch.Tensor):
            bias.copy_(bias.half().float())


@register_step("cluster", ClusterConfig)
def apply_cluster(v: Variant, cfg: ClusterConfig, ctx: StepContext) -> Variant:
    model = v.model.to(ctx.device)
    bits, skipped = share_model(model, cfg)
    log = v.log
    if cfg.epochs:
        lr = cfg.lr or retrain_config(v, cfg.epochs, 0.0, ctx.seed).lr * CLUSTER_LR_FACTOR
        train = retrain_config(v, cfg.epochs, lr, ctx.seed)
        log = fit(model, ctx.data, train, progress=ctx.progress, label="cluster fine-tune", device=ctx.device)
    codebooks = {name: bake(model.get_submodule(name)) for name in bits}
    if cfg.bias_bits == 16:
        round_biases(model, list(bits))
    model.cpu()
    manifest = copy.deepcopy(v.manifest)
    manifest.info = {**manifest.info, "codebooks": codebooks}
    distinct = max(distinct_nonzero(weight_of(model, n)) for n in bits)
    info: dict[str, Any] = {**v.info, "cluster_bits": ",".join(f"{n}={b}" for n, b in bits.items()),
                            "cluster_distinct_max": distinct}
    if skipped:
        note = f"cluster: {', '.join(skipped)} without non-zero weights, left as is"
        info["notes"] = "; ".join(n for n in (v.info.get("notes"), note) if n)
    return Variant(v.id, model, manifest, v.deployment, log=log,
                   train_seconds=v.train_seconds + (log.seconds if log and cfg.epochs else 0.0),
                   epochs=v.epochs + cfg.epochs, seed=v.seed, info=info)
