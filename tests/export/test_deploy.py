"""The margin rule of every timing-based choice (export/deploy.py `keep_unless`), without timing anything."""

import pytest

from deepshrink.errors import UserError
from deepshrink.export.deploy import keep_unless


def test_incumbent_kept_within_the_margin() -> None:
    # The flip: full INT8 2.3x faster at batch 256 but 5 % slower at batch 1 -> "weights" stays.
    times = {"weights": {256: 20.0, 1: 8.74}, "full": {256: 8.7, 1: 9.23}}
    assert keep_unless(times, "weights", 0.03) == "weights"
    # 13.83 vs 13.92 µs: under 1 % apart at the worse batch.
    assert keep_unless({"weights": {256: 13.92, 1: 9.0}, "full": {256: 13.83, 1: 5.0}}, "weights", 0.03) == "weights"


def test_challenger_wins_beyond_the_margin_at_both_batches() -> None:
    times = {"weights": {256: 10.0, 1: 10.0}, "full": {256: 5.0, 1: 9.6}, "mixed": {256: 9.0, 1: 9.0}}
    assert keep_unless(times, "weights", 0.03) == "mixed"  # worse batch: mixed 0.90, full 0.96 of the incumbent
    assert keep_unless(times, "weights", 0.05) == "mixed"
    assert keep_unless(times, "weights", 0.11) == "weights"


def test_margin_boundary_and_zero_margin() -> None:
    times = {"onnxruntime": {1: 100.0}, "sparse": {1: 97.0}}
    assert keep_unless(times, "onnxruntime", 0.03) == "sparse"  # exactly 3 % faster: wins
    assert keep_unless(times, "onnxruntime", 0.031) == "onnxruntime"
    assert keep_unless({"onnxruntime": {1: 100.0}, "torch": {1: 99.9}}, "onnxruntime", 0.0) == "torch"
    assert keep_unless({"onnxruntime": {1: 100.0}}, "onnxruntime", 0.03) == "onnxruntime"


@pytest.mark.parametrize("margin", [-0.1, 1.0, 2.0])
def test_margin_outside_0_1_is_refused(margin: float) -> None:
    with pytest.raises(UserError, match="choice_margin"):
        keep_unless({"a": {1: 1.0}, "b": {1: 0.5}}, "a", margin)
