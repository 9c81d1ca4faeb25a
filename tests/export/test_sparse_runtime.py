"""The sparse runtime: compaction is exact, and the compiled kernels give the dense model's outputs on
random sparse chains of several shapes and densities, empty rows and columns included."""

import itertools
from collections import OrderedDict

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from deepshrink.export.runtimes.sparse import (
    Layer,
    background,
    build,
    compact,
    linear_chain,
    skewed_pair,
    sparse_runner,
)
from deepshrink.models import lenet_5


def _chain(widths: list[int], density: float, seed: int, relu_last: bool = False) -> nn.Sequential:
    """Flatten + Linear(+ReLU) layers with a random `density` of non-zero weights, a few rows and
    columns emptied outright, and biases large enough that constant units matter."""
    g = torch.Generator().manual_seed(seed)
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    for i, (n_in, n_out) in enumerate(itertools.pairwise(widths)):
        lin = nn.Linear(n_in, n_out)
        with torch.no_grad():
            w = torch.randn(n_out, n_in, generator=g)
            w[torch.rand(n_out, n_in, generator=g) >= density] = 0
            w[torch.rand(n_out, generator=g) < 0.2] = 0  # empty rows: units that output act(bias)
            w[:, torch.rand(n_in, generator=g) < 0.2] = 0  # empty columns: inputs nothing reads
            lin.weight.copy_(w)
            lin.bias.copy_(torch.randn(n_out, generator=g))
        layers[f"fc{i}"] = lin
        if i < len(widths) - 2 or relu_last:
            layers[f"relu{i}"] = nn.ReLU()
    return nn.Sequential(layers).eval()


def _inputs(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Images whose pixels are mostly one background value, as normalised MNIST's are."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *shape)).astype(np.float32)
    x[rng.random(x.shape) < 0.7] = -0.42
    return x


def _dense(layers: list[Layer], x: np.ndarray) -> np.ndarray:
    for lay in layers:
        x = x.astype(np.float64) @ lay.weight.T.astype(np.float64) + lay.bias
        x = np.maximum(x, 0) if lay.relu else x
    return x


@settings(max_examples=25, deadline=None)
@given(widths=st.lists(st.integers(1, 40), min_size=2, max_size=5), density=st.sampled_from([0.0, 0.02, 0.1, 0.5, 1.0]),
       seed=st.integers(0, 2**16), relu_last=st.booleans())
def test_sparse_runtime_equals_the_dense_model(widths: list[int], density: float, seed: int, relu_last: bool) -> None:
    model = _chain(widths, density, seed, relu_last)
    x = _inputs(300, (1, widths[0]), seed)  # 300 > one 256-image chunk: the tail chunk runs too
    net = build(model, x[:64])
    assert net is not None
    run = sparse_runner(net)(1, "cpu")
    ref = model(torch.from_numpy(x)).detach().numpy()
    tol = {"rtol": 1e-4, "atol": 1e-4}
    np.testing.assert_allclose(run(x), ref, **tol)
    np.testing.assert_allclose(run(x[:3]), ref[:3], **tol)
    for i in range(3):  # batch 1: the column-wise kernel with the background offset
        np.testing.assert_allclose(run(x[i : i + 1]), ref[i : i + 1], **tol)


@pytest.mark.parametrize(("shape", "density"), [((1, 28, 28), 0.1), ((3, 8, 8), 0.2), ((1, 5, 5), 0.5)])
def test_sparse_runtime_on_lenet_300_100_shapes(shape: tuple[int, int, int], density: float) -> None:
    n_in = int(np.prod(shape))
    model = _chain([n_in, 300, 100, 10], density, seed=1)
    x = _inputs(40, shape, seed=2)
    run = sparse_runner(build(model, x))(1, "cpu")  # type: ignore[arg-type]
    ref = model(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(run(x), ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(run(x[5:6]), ref[5:6], rtol=1e-4, atol=1e-4)


def test_compaction_is_exact_and_folds_constant_units_into_the_next_bias() -> None:
    w1 = np.array([[1.0, 0, 0], [0, 0, 0], [2.0, 0, 0], [0, 0, 3.0]], np.float32)  # unit 1: no weights
    b1 = np.array([0.5, 2.0, -1.0, 0.1], np.float32)
    w2 = np.array([[1.0, 4.0, 0, 0], [0, -1.0, 0, 0]], np.float32)  # unit 2, 3: nothing reads them
    b2 = np.array([0.25, -0.5], np.float32)
    layers = [Layer(w1, b1, True), Layer(w2, b2, False)]
    keep, out = compact(layers, 3)
    assert keep.tolist() == [0]  # input 1 is never read; input 2 only by unit 3, which is dead
    assert [lay.weight.shape for lay in out] == [(1, 1), (2, 1)]
    np.testing.assert_allclose(out[1].bias, b2 + w2[:, 1] * 2.0)  # relu(2.0) * column 1, folded
    x = np.random.default_rng(0).standard_normal((50, 3))
    np.testing.assert_allclose(_dense(out, x[:, keep]), _dense(layers, x), rtol=1e-6, atol=1e-6)


def test_compaction_keeps_every_output_and_survives_an_all_zero_model() -> None:
    layers = [Layer(np.zeros((4, 6), np.float32), np.arange(4, dtype=np.float32) - 1, True),
              Layer(np.ones((3, 4), np.float32), np.zeros(3, np.float32), False)]
    keep, out = compact(layers, 6)
    assert len(keep) == 0 and out[-1].weight.shape == (3, 0)
    np.testing.assert_allclose(out[-1].bias, [3.0, 3.0, 3.0])  # relu(-1,0,1,2) summed
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.arange(4.0) - 1)
        model[3].weight.fill_(1.0)
        model[3].bias.zero_()
    run = sparse_runner(build(model))(1, "cpu")  # type: ignore[arg-type]
    x = np.ones((2, 6), np.float32)
    np.testing.assert_allclose(run(x), [[3.0, 3.0, 3.0]] * 2)
    np.testing.assert_allclose(run(x[:1]), [[3.0, 3.0, 3.0]])


def test_only_linear_chains_have_a_sparse_runtime() -> None:
    assert linear_chain(lenet_5((1, 28, 28), 10)) is None
    assert linear_chain(nn.Sequential(nn.ReLU(), nn.Linear(3, 2))) is None
    assert build(nn.Sequential(nn.Flatten(), nn.Dropout(), nn.Linear(3, 2))) is not None


def test_background_is_the_shared_value_only_when_it_beats_zero() -> None:
    x = np.array([[-0.4, 0.0, 1.0, 7.0], [-0.4, 0.0, 2.0, 7.0], [0.3, 5.0, 3.0, 0.0], [0.3, 6.0, 4.0, 0.0],
                  [-0.4, 0.0, 5.0, 7.0]], np.float32)
    # Column 2: every value is different, none is a background; column 3: 7 beats 0, three to two.
    np.testing.assert_array_equal(background(x), np.array([-0.4, 0.0, 0.0, 7.0], np.float32))


@pytest.mark.parametrize("n", [300 * 256, 100 * 256, 4097, 1])
def test_scratch_pair_never_4k_aliases(n: int) -> None:
    """The two scratch arrays: 64-byte aligned, disjoint, and half a 1 KB row apart modulo 1 KB, so a
    row read from one never sits a multiple of 4 KB from a row stored in the other."""
    a, b = skewed_pair(n)
    pa, pb = a.ctypes.data, b.ctypes.data
    assert len(a) == len(b) == n and a.dtype == b.dtype == np.float32
    assert pa % 64 == 0 and pb % 64 == 0
    assert pb >= pa + 4 * n  # disjoint
    assert (pb - pa) % 1024 == 512
