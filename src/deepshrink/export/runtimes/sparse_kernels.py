"""Numba kernels of the sparse runtime (sparse.py): a chain of sparse Linear layers run on
the non-zeros only, in one compiled call per batch.

The network is held flat, so one call runs every layer without Python in between (at batch 1 a
Python-level call per layer costs more than the layer): `meta` has one row per layer

    (n_in, n_out, relu, row_ptr_at, col_ptr_at, bias_at)

indexing into concatenated CSR arrays (row pointers hold global positions into `row_idx`/`row_w`),
concatenated CSC arrays (`col_ptr`/`col_idx`/`col_w`) and concatenated biases.

Batch > 1 (`forward_batch`): activations are feature-major, (features, images), so each non-zero
w[i, j] is one axpy over contiguous images, y[i, :] += w * x[j, :], which LLVM vectorises (AVX-512
here). Eight non-zeros share one pass over y[i, :]: measured on fc1 of LeNet-300-100 at 10 % density,
batch 256, that cut time by ~20 % against one pass per non-zero (fewer loads and stores of y), and
four by ~12 %.
Register-tiled variants (a tile of images in scalar accumulators) were measured slower: LLVM
vectorised their loop over non-zeros with gathers instead of the tile.

Batch 1 (`forward_one`): column-wise (CSC), skipping zero inputs. The first layer's input is shifted
by a per-feature offset (the background value; a normalised MNIST pixel that was 0 is -0.42, not 0)
whose contribution W @ offset is folded into that layer's batch-1 bias, so background pixels are
zeros that are skipped; hidden activations after ReLU are zeros half the time or more.
"""

import math

import numpy as np
from numba import njit

# Images per feature-major pass. Measured at 10-20 % density: 256 beat 128, 64, 32 and 16 on MNIST and
# CIFAR-10 (longer axpys amortise each non-zero's index and weight loads).
CHUNK = 256
# cache=True: compiled once per machine (~3 s), not once per process
_jit = njit(cache=True, fastmath=True, boundscheck=False, nogil=True)


@_jit
def _axpy_rows(xt: np.ndarray, ptr: np.ndarray, idx: np.ndarray, w: np.ndarray, b: np.ndarray,
               relu: bool, yt: np.ndarray) -> None:
    """yt[i, :n] = act(b[i] + sum_k w[k] * xt[idx[k], :n]) for the rows of one CSR layer."""
    n = xt.shape[1]
    for i in range(len(ptr) - 1):
        yr = yt[i]
        bi = b[i]
        for t in range(n):
            yr[t] = bi
        k, end = ptr[i], ptr[i + 1]
        while k + 8 <= end:
            w0, w1, w2, w3, w4, w5, w6, w7 = w[k], w[k + 1], w[k + 2], w[k + 3], w[k + 4], w[k + 5], w[k + 6], w[k + 7]
            x0, x1, x2, x3 = xt[idx[k]], xt[idx[k + 1]], xt[idx[k + 2]], xt[idx[k + 3]]
            x4, x5, x6, x7 = xt[idx[k + 4]], xt[idx[k + 5]], xt[idx[k + 6]], xt[idx[k + 7]]
            for t in range(n):
                yr[t] += ((w0 * x0[t] + w1 * x1[t]) + (w2 * x2[t] + w3 * x3[t])) + (
                    (w4 * x4[t] + w5 * x5[t]) + (w6 * x6[t] + w7 * x7[t]))
            k += 8
        while k < end:
            wk = w[k]
            xr = xt[idx[k]]
            for t in range(n):
                yr[t] += wk * xr[t]
            k += 1
        if relu:
            for t in range(n):
                yr[t] = max(yr[t], np.float32(0.0))


@_jit
def _gather_t(x: np.ndarray, b0: int, n: int, keep: np.ndarray, xt: np.ndarray, block: int) -> None:
    """xt[jj, :n] = x[b0:b0+n, keep[jj]]: the kept input features, feature-major, `block` images at a
    time (see gather_block)."""
    for t0 in range(0, n, block):
        t1 = min(t0 + block, n)
        for jj in range(len(keep)):
            j = keep[jj]
            r = xt[jj]
            for t in range(t0, t1):
                r[t] = x[b0 + t, j]


def gather_block(features: int) -> int:
    """Images per block of `_gather_t`. A whole column at once (writing rows of xt, reading x strided)
    measured 2-3x faster than row order on MNIST (784 features); on CIFAR-10 its 12 KB rows are 3 x
    4 KB apart, so every image's pixel falls in one L1 cache set and a column thrashes: 8 images at a
    time measured 2.7x faster there."""
    return 8 if math.gcd(4 * features, 4096) >= 1024 else CHUNK


@_jit
def forward_batch(x: np.ndarray, keep: np.ndarray, meta: np.ndarray, row_ptr: np.ndarray, row_idx: np.ndarray,
                  row_w: np.ndarray, bias: np.ndarray, chunk: int, block: int, work_a: np.ndarray, work_b: np.ndarray,
                  out: np.ndarray) -> None:
    """out (B, classes) = the network on x (B, features); work_a/work_b: flat (max width * CHUNK,)
    scratch, reshaped per layer so every view is C-contiguous (LLVM vectorises only those)."""
    n_layers = meta.shape[0]
    for b0 in range(0, x.shape[0], chunk):
        n = min(chunk, x.shape[0] - b0)
        cur = work_a[: len(keep) * n].reshape(len(keep), n)
        _gather_t(x, b0, n, keep, cur, block)
        for li in range(n_layers):
            n_out, relu, rp, ba = meta[li, 1], meta[li, 2], meta[li, 3], meta[li, 5]
            dst = (work_b if li % 2 == 0 else work_a)[: n_out * n].reshape(n_out, n)
            _axpy_rows(cur, row_ptr[rp : rp + n_out + 1], row_idx, row_w, bias[ba : ba + n_out], relu != 0, dst)
            cur = dst
        for t in range(n):
            for i in range(cur.shape[0]):
                out[b0 + t, i] = cur[i, t]


@_jit
def forward_one(x: np.ndarray, keep: np.ndarray, offset: np.ndarray, meta: np.ndarray, col_ptr: np.ndarray,
                col_idx: np.ndarray, col_w: np.ndarray, bias: np.ndarray, bias_one: np.ndarray,
                work_a: np.ndarray, work_b: np.ndarray, out: np.ndarray) -> None:
    """out (classes,) = the network on one image x (features,); work_a/work_b: (max width,) scratch."""
    cur = work_a[: len(keep)]
    for jj in range(len(keep)):
        cur[jj] = x[keep[jj]] - offset[jj]
    for li in range(meta.shape[0]):
        n_in, n_out, relu, cp, ba = meta[li, 0], meta[li, 1], meta[li, 2], meta[li, 4], meta[li, 5]
        y = (work_b if li % 2 == 0 else work_a)[:n_out]
        b = bias_one if li == 0 else bias[ba : ba + n_out]
        for i in range(n_out):
            y[i] = b[i]
        for j in range(n_in):
            v = cur[j]
            if v != 0.0:
                for k in range(col_ptr[cp + j], col_ptr[cp + j + 1]):
                    y[col_idx[k]] += col_w[k] * v
        if relu:
            for i in range(n_out):
                y[i] = max(y[i], np.float32(0.0))
        cur = y
    out[:] = cur
