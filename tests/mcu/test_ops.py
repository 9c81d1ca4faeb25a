"""Every supported operator, generated C against ONNX Runtime on small INT8 graphs: the logits must be
equal, integer for integer (the C reproduces ONNX Runtime's arithmetic, not an approximation of it)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from torch import nn

from deepshrink.mcu.arena import plan
from deepshrink.mcu.program import Buffer, pack_rows

from mcu_helpers import Head, features, generate, host_logits, qdq_model

SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _exact(body: nn.Module, shape: tuple[int, ...], folder: Path, seed: int = 0) -> None:
    net = Head(body, features(body, shape))
    model, x = qdq_model(net, shape, seed=seed)
    gen = generate(model, channels=shape[0] if len(shape) == 3 else 1)
    c, ort = host_logits(gen, folder, x)
    assert np.array_equal(c, ort), f"{(c != ort).sum()} of {c.size} logits differ"


@SETTINGS
@given(cin=st.integers(1, 6), cout=st.integers(1, 9), k=st.integers(1, 5), stride=st.integers(1, 3),
       pad=st.integers(0, 2), size=st.integers(5, 12), groups=st.sampled_from([1, "depthwise", 2]))
@example(cin=1, cout=7, k=1, stride=1, pad=0, size=5, groups=1)  # rows of 4 + 2 + 1
def test_conv_any_shape_stride_padding_and_groups(tmp_path: Path, cin: int, cout: int, k: int, stride: int,
                                                  pad: int, size: int, groups: int | str) -> None:
    g = cin if groups == "depthwise" else groups
    assert isinstance(g, int)
    if cin % g or (cout := cout if groups != "depthwise" else cin) % g or k > size + 2 * pad:
        return
    first = nn.Conv2d(cin, cout, k, stride, pad, groups=g)  # on the network input (C x H x W)
    second = nn.Conv2d(cout, cout, 3, 1, 1, groups=cout if groups == "depthwise" else 1)  # on H x W x C
    _exact(nn.Sequential(first, nn.ReLU(), second, nn.ReLU()), (cin, size, size), tmp_path)


@SETTINGS
@given(c=st.integers(1, 5), k=st.integers(2, 3), stride=st.integers(1, 3), size=st.integers(6, 13))
def test_max_pooling_alone_and_fused_behind_a_convolution(tmp_path: Path, c: int, k: int, stride: int,
                                                          size: int) -> None:
    pad = k // 2 if stride == 1 else 0
    body = nn.Sequential(nn.Conv2d(c, 4, 3), nn.ReLU(), nn.MaxPool2d(k, k),  # fusable: kernel == stride
                         nn.Conv2d(4, 4, 1), nn.MaxPool2d(k, stride, padding=pad))  # padded: a kernel of its own
    assume((size - 2) // k >= k)  # the second pooling still has a window
    _exact(body, (c, size, size), tmp_path)


@SETTINGS
@given(c=st.integers(1, 6), k=st.integers(2, 3), stride=st.integers(1, 2), pad=st.integers(0, 1),
       include=st.booleans())
def test_average_and_global_average_pooling(tmp_path: Path, c: int, k: int, stride: int, pad: int,
                                            include: bool) -> None:
    body = nn.Sequential(nn.Conv2d(c, 6, 3, padding=1), nn.ReLU(),
                         nn.AvgPool2d(k, stride, padding=min(pad, k // 2), count_include_pad=include),
                         nn.Conv2d(6, 6, 1), nn.AdaptiveAvgPool2d(1))
    _exact(body, (c, 9, 9), tmp_path)


class _Residual(nn.Module):
    def __init__(self, c: int, stride: int) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(c, 2 * c, 3, stride, 1), nn.ReLU(), nn.Conv2d(2 * c, 2 * c, 3, 1, 1))
        self.short = nn.Conv2d(c, 2 * c, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.a(x) + self.short(x))


@SETTINGS
@given(c=st.integers(1, 4), stride=st.integers(1, 2), size=st.integers(4, 10))
def test_residual_addition(tmp_path: Path, c: int, stride: int, size: int) -> None:
    _exact(nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.ReLU(), _Residual(c, stride)), (3, size, size), tmp_path)


@SETTINGS
@given(n_in=st.integers(1, 40), hidden=st.integers(1, 11), seed=st.integers(0, 3))
def test_fully_connected_any_width(tmp_path: Path, n_in: int, hidden: int, seed: int) -> None:
    _exact(nn.Sequential(nn.Flatten(), nn.Linear(n_in, hidden), nn.ReLU()), (1, 1, n_in), tmp_path, seed)


def test_flatten_of_a_feature_map_feeds_the_classifier_in_onnx_order(tmp_path: Path) -> None:
    # H x W x C storage: the classifier's columns are permuted to it; a wrong order fails here.
    _exact(nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU()), (2, 6, 5), tmp_path)


def test_rows_pack_in_groups_of_four_two_and_one_zero_padded_to_whole_words() -> None:
    rows = np.arange(7 * 5, dtype=np.int8).reshape(7, 5)
    packed, kp = pack_rows(rows)
    assert kp == 8 and packed.size == 7 * 8
    group = packed[:32].reshape(2, 4, 4)  # 4 rows x 2 blocks of 4 bytes, interleaved by block
    assert group[0, 1].tolist() == rows[1, :4].tolist() and group[1, 0].tolist() == [4, 0, 0, 0]
    assert packed[48:].tolist() == [30, 31, 32, 33, 34, 0, 0, 0]  # the last row alone
    wide, _ = pack_rows(rows[:1], wide=True)
    assert wide[:4].tolist() == [0, 2, 1, 3]  # w0 w2 w1 w3: SXTB16 lanes (w0, w1), (w2, w3)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 64), st.integers(0, 9), st.integers(0, 4)), min_size=1, max_size=12))
def test_arena_plan_never_overlaps_buffers_alive_together(spec: list[tuple[int, int, int]]) -> None:
    bufs = {f"b{i}": Buffer(f"b{i}", size, first, first + span) for i, (size, first, span) in enumerate(spec)}
    total = plan(bufs)
    for a in bufs.values():
        assert a.offset % 4 == 0 and a.offset + a.size <= total
        for b in bufs.values():
            if a is not b and a.first <= b.last and b.first <= a.last:
                assert a.offset + a.size <= b.offset or b.offset + b.size <= a.offset
    assert total <= sum(-(-b.size // 4) * 4 for b in bufs.values())


def test_unsupported_operator_is_named(tmp_path: Path) -> None:
    from deepshrink.errors import UserError

    model, _ = qdq_model(Head(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sigmoid()), 2 * 4 * 4), (1, 6, 6))
    with pytest.raises(UserError, match="Sigmoid"):
        generate(model)
