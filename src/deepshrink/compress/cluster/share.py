"""Weight sharing primitives (Deep Compression's trained quantization, Han et al. 2016 §3), usable alone:

`linear_kmeans` (one layer's non-zero weights -> codebook + assignments) -> `share_weights` (a
parametrization weight = codebook[index] on kept positions, exactly +0.0 on pruned ones, so the
shared loop fine-tunes the centroids with each centroid's gradient the sum over its weights) ->
`bake` (plain weights again, holding at most one value per centroid).
"""

import warnings

import numpy as np
import torch
from scipy.cluster.vq import kmeans2
from torch import Tensor, nn
from torch.nn.utils import parametrize

KMEANS_ITERATIONS = 30  # Lloyd's steps; 1-D k-means from a linear start settles well before this


def linear_kmeans(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(float32 centroids, int64 label per value): k-means over 1-D `values` from `k` centroids spaced
    evenly between their min and max. Han et al. found this linear start best: unlike density-based
    starts it keeps centroids on the few large weights, which matter most. Centroids left without a
    member (common in the sparse tails) are dropped, so every centroid is a value the layer holds."""
    k = max(1, min(k, len(values)))
    start = np.linspace(values.min(), values.max(), k)
    with warnings.catch_warnings():  # scipy warns of empty clusters; they are dropped below
        warnings.filterwarnings("ignore", message="One of the clusters is empty")
        centroids, labels = kmeans2(values.astype(np.float64), start, iter=KMEANS_ITERATIONS, minit="matrix")
    used, labels = np.unique(labels, return_inverse=True)
    return centroids[used].astype(np.float32), labels.astype(np.int64)


class SharedWeight(nn.Module):
    """A weight parametrization: codebook[index] where `mask`, +0.0 elsewhere. The layer's own weight
    tensor is ignored; the codebook is the trained parameter, so the gradients of all weights sharing
    a centroid add up in it (the gather's backward) and pruned weights cannot come back."""

    def __init__(self, codebook: Tensor, index: Tensor, mask: Tensor) -> None:
        super().__init__()
        self.codebook = nn.Parameter(codebook)
        self.register_buffer("index", index)
        self.register_buffer("mask", mask)

    def forward(self, original: Tensor) -> Tensor:
        # where, not a product with the mask: a negative centroid times 0 is -0.0, a stored value
        # for the bit-exact sparse formats
        mask, index = self.mask, self.index
        assert isinstance(mask, Tensor) and isinstance(index, Tensor)
        return torch.where(mask, self.codebook[index], torch.zeros((), dtype=original.dtype, device=original.device))


def cluster_layer(module: nn.Module, bits: int) -> int:
    """Replace `module.weight` by a shared-weight parametrization with at most 2^bits centroids over its
    non-zero weights; returns the centroid count (0 when the layer has no non-zero weight: left as is)."""
    weight = module.weight
    assert isinstance(weight, Tensor)
    w = weight.detach().cpu()
    mask = w != 0
    if not bool(mask.any()):
        return 0
    centroids, labels = linear_kmeans(w[mask].numpy(), 2**bits)
    index = torch.zeros(w.shape, dtype=torch.int64)
    index[mask] = torch.from_numpy(labels)
    device = weight.device
    share = SharedWeight(torch.from_numpy(centroids).to(device), index.to(device), mask.to(device))
    parametrize.register_parametrization(module, "weight", share)
    weight.requires_grad_(False)  # the original tensor no longer feeds the forward pass
    return len(centroids)


def bake(module: nn.Module) -> list[float]:
    """Make the shared weights plain again (the values the parametrization gives); returns the codebook."""
    share = module.parametrizations["weight"][0]  # type: ignore[index]
    assert isinstance(share, SharedWeight)
    codebook: list[float] = share.codebook.detach().cpu().tolist()
    parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    weight = module.weight
    assert isinstance(weight, Tensor)
    weight.requires_grad_(True)
    return codebook


def distinct_nonzero(weight: Tensor) -> int:
    """How many distinct non-zero values a tensor holds (what the .dsz codebook will be)."""
    w = weight.detach().cpu().flatten()
    return int(torch.unique(w[w != 0]).numel())
