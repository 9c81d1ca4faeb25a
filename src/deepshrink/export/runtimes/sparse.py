"""The sparse runtime (`sparse` in latency.csv): an unstructured-pruned chain of Linear layers run on
its non-zeros by the compiled kernels of sparse_kernels.py, built from the weights decoded from the
shipped `.dsparse` file.

Two transformations come first, both exact in real arithmetic (float sums are reordered, so outputs
equal the dense model's to float tolerance):

1. compaction: input features no weight reads and units whose output nothing reads are removed; a
   unit whose weights are all pruned outputs act(bias), a constant, so its contribution
   W_next[:, i] * act(b_i) is folded into the next layer's bias before it is removed;
2. at batch 1, a per-feature offset (the calibration images' background value) is subtracted from
   the input and W @ offset added to the first bias, so the background becomes zeros to skip.

Only plain chains qualify (Flatten, Linear, ReLU, Dropout, Identity); anything with a convolution has
no sparse runtime and runs dense (ONNX Runtime, torch).
"""

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from torch import nn

from deepshrink.errors import UserError
from deepshrink.export.runtimes import sparse_kernels as k
from deepshrink.measure.latency import Runner, RunnerFactory
from deepshrink.quant.plan import plan

_CALIB_IMAGES = 512  # images that pick the batch-1 background


@dataclass
class Layer:
    """One dense Linear layer: y = act(x @ weight.T + bias)."""

    weight: np.ndarray  # (out, in) float32
    bias: np.ndarray  # (out,)
    relu: bool


def linear_chain(model: nn.Module) -> list[Layer] | None:
    """The model as Linear(+ReLU) layers after a leading Flatten, or None when it is anything else."""
    try:
        ops = plan(model)
    except UserError:
        return None
    layers: list[Layer] = []
    for op in ops:
        mod = op.module
        if isinstance(mod, nn.Linear):
            bias = np.zeros(mod.out_features, np.float32) if op.bias is None else op.bias.detach().cpu().numpy()
            layers.append(Layer(op.weight.detach().cpu().float().numpy().copy(), bias.astype(np.float32), op.relu))
        elif isinstance(mod, nn.Flatten) and not layers and mod.start_dim == 1 and mod.end_dim == -1:
            continue
        elif not isinstance(mod, nn.Identity | nn.Dropout):  # a conv, a pool, a ReLU on the input
            return None
    return layers or None


def _act(b: np.ndarray, relu: bool) -> np.ndarray:
    return np.maximum(b, 0.0) if relu else b


def compact(layers: list[Layer], n_in: int) -> tuple[np.ndarray, list[Layer]]:
    """(kept input features, the layers without dead inputs and units); the last layer keeps all outputs."""
    ws = [lay.weight for lay in layers]
    bs = [lay.bias.astype(np.float64) for lay in layers]  # folded constants accumulate in float64
    keep_in = np.arange(n_in)
    changed = True
    while changed:  # removing a unit can empty the row or column of another
        changed = False
        used = (ws[0] != 0).any(axis=0)
        if not used.all():
            keep_in, ws[0], changed = keep_in[used], ws[0][:, used], True
        for li in range(len(ws) - 1):
            const = ~(ws[li] != 0).any(axis=1)
            dead = const | ~(ws[li + 1] != 0).any(axis=0)
            if dead.any():
                bs[li + 1] = bs[li + 1] + ws[li + 1][:, const].astype(np.float64) @ _act(bs[li][const], layers[li].relu)
                keep = ~dead
                ws[li], bs[li], ws[li + 1], changed = ws[li][keep], bs[li][keep], ws[li + 1][:, keep], True
    out = [Layer(w.astype(np.float32), b.astype(np.float32), lay.relu)
           for w, b, lay in zip(ws, bs, layers, strict=True)]
    return keep_in, out


def background(x: np.ndarray) -> np.ndarray:
    """Per feature of x (images, features): the value most images share when more share it than share
    0 and at least a quarter do, else 0 (MNIST: the normalised black pixel, -0.42, in 82 % of pixels)."""
    off = np.zeros(x.shape[1], np.float32)
    for j in range(x.shape[1]):
        vals, counts = np.unique(x[:, j], return_counts=True)
        top = int(counts.argmax())
        if counts[top] > counts[vals == 0].sum() and 4 * counts[top] >= len(x):
            off[j] = vals[top]
    return off


@dataclass(frozen=True)
class SparseNet:
    """A compacted chain, flat: the layout sparse_kernels.py documents."""

    n_features: int
    keep: np.ndarray  # (kept,) int64 input features read
    offset: np.ndarray  # (kept,) float32 batch-1 background
    meta: np.ndarray  # (layers, 6) int64: n_in, n_out, relu, row_ptr_at, col_ptr_at, bias_at
    row_ptr: np.ndarray
    row_idx: np.ndarray
    row_w: np.ndarray
    col_ptr: np.ndarray
    col_idx: np.ndarray
    col_w: np.ndarray
    bias: np.ndarray
    bias_one: np.ndarray  # first layer's bias + W @ offset

    @property
    def width(self) -> int:
        return int(max(len(self.keep), *self.meta[:, 1]))

    @property
    def classes(self) -> int:
        return int(self.meta[-1, 1])

    @property
    def nnz(self) -> int:
        return len(self.row_w)


def _concat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


def pack(n_features: int, keep: np.ndarray, layers: list[Layer], offset: np.ndarray) -> SparseNet:
    """The flat CSR + CSC arrays of compacted `layers`; `offset` (kept,) is the batch-1 input shift."""
    meta, rp, ri, rw, cp, ci, cw, bias = [], [], [], [], [], [], [], []
    nnz = ptr_r = ptr_c = at_b = 0
    for lay in layers:
        csr, csc = sp.csr_matrix(lay.weight), sp.csc_matrix(lay.weight)
        csr.sort_indices()
        csc.sort_indices()
        n_out, n_in = lay.weight.shape
        meta.append((n_in, n_out, int(lay.relu), ptr_r, ptr_c, at_b))
        rp.append(csr.indptr + nnz)
        cp.append(csc.indptr + nnz)
        ri.append(csr.indices)
        rw.append(csr.data)
        ci.append(csc.indices)
        cw.append(csc.data)
        bias.append(lay.bias)
        nnz, ptr_r, ptr_c, at_b = nnz + csr.nnz, ptr_r + n_out + 1, ptr_c + n_in + 1, at_b + n_out
    first = layers[0]
    bias_one = (first.bias.astype(np.float64) + first.weight.astype(np.float64) @ offset).astype(np.float32)
    return SparseNet(n_features, keep.astype(np.int64), offset.astype(np.float32), np.array(meta, np.int64),
                     _concat(rp, np.int64), _concat(ri, np.int32), _concat(rw, np.float32),
                     _concat(cp, np.int64), _concat(ci, np.int32), _concat(cw, np.float32),
                     _concat(bias, np.float32), bias_one)


def build(model: nn.Module, calib: np.ndarray | None = None) -> SparseNet | None:
    """The sparse runtime's network for `model` (None when it is not a Linear chain); `calib` (N, ...)
    images pick the batch-1 background (none: no offset)."""
    layers = linear_chain(model)
    if layers is None:
        return None
    n_features = layers[0].weight.shape[1]
    keep, compacted = compact(layers, n_features)
    flat = None if calib is None else calib.reshape(len(calib), -1)[:_CALIB_IMAGES, keep]
    offset = np.zeros(len(keep), np.float32) if flat is None else background(flat.astype(np.float32))
    return pack(n_features, keep, compacted, offset)


def skewed_pair(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two float32 scratch arrays of `n`, 64-byte aligned, the second starting 512 bytes (mod 1 KB) after
    the first. A layer reads 1 KB rows of one (CHUNK images) while storing rows of the other; two
    separate allocations of this size are both page-aligned mappings, so a load and a store fall 4 KB
    apart and the CPU takes the load for a dependent of the store (4K aliasing): one file timed 2.6 µs
    in some processes and 3.1 µs in others (LeNet-300-100 at 80 %, batch 256). Half a row apart, never."""
    buf = np.empty(2 * n + 512, np.float32)
    a0 = (-buf.ctypes.data % 64) // 4
    b0 = a0 + n + (128 - n) % 256
    return buf[a0 : a0 + n], buf[b0 : b0 + n]


def sparse_runner(net: SparseNet) -> RunnerFactory:
    """The runtime's factory. Its kernels run on one core whatever `threads` says (CPU only)."""

    def make(threads: int, device: str) -> Runner:
        work = skewed_pair(net.width * k.CHUNK)
        one = (np.empty(net.width, np.float32), np.empty(net.width, np.float32))
        block = k.gather_block(net.n_features)

        def run(x: np.ndarray) -> np.ndarray:
            flat = np.ascontiguousarray(x, dtype=np.float32).reshape(len(x), net.n_features)
            if len(flat) == 1:  # column-wise, skipping zero inputs
                out1 = np.empty(net.classes, np.float32)
                k.forward_one(flat[0], net.keep, net.offset, net.meta, net.col_ptr, net.col_idx, net.col_w, net.bias,
                              net.bias_one, *one, out1)
                return out1[None]
            out = np.empty((len(flat), net.classes), np.float32)
            k.forward_batch(flat, net.keep, net.meta, net.row_ptr, net.row_idx, net.row_w, net.bias, k.CHUNK, block,
                            *work, out)
            return out

        return run

    return make
