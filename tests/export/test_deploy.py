"""The rule of every timing-based choice (export/choice.py `decide`), on made-up rounds: a challenger replaces
the incumbent only when it is faster beyond the noise measured in the same run."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepshrink.errors import UserError
from deepshrink.export.choice import decide, lead, verdict


def _noisy(us: float, n: int = 30, noise: float = 0.05, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [us * (1 + rng.uniform(-noise, noise)) for _ in range(n)]


def test_a_clear_winner_replaces_the_incumbent() -> None:
    rounds = {256: {"onnxruntime": _noisy(5.0), "sparse": _noisy(3.0, seed=1)}}
    d = decide(rounds, "onnxruntime", 0.03)
    assert d.chosen == "sparse" and not d.tied
    assert verdict(d).startswith("sparse (1.") and "30/30 rounds" in verdict(d)


def test_equal_runtimes_are_tied_within_noise_and_the_incumbent_stays() -> None:
    # The flip: two runtimes 5 % apart at most, rounds 5 % noisy.
    for seed in range(20):
        rounds = {256: {"onnxruntime": _noisy(2.5, seed=seed), "openvino": _noisy(2.45, seed=seed + 100)}}
        d = decide(rounds, "onnxruntime", 0.03)
        assert d.chosen == "onnxruntime"
    assert "tied within noise with openvino" in verdict(decide(
        {256: {"onnxruntime": _noisy(2.5), "openvino": _noisy(2.45, seed=7)}}, "onnxruntime", 0.03))


def test_the_verdict_names_the_chosen_challenger() -> None:
    """A rival closer on its worst batch but not clearly faster is not what the note reports as chosen."""
    rounds = {1: {"ort": _noisy(10.0), "fast": _noisy(5.0, seed=1), "close": [4.0] * 5}}  # 5 rounds: too few
    d = decide(rounds, "ort", 0.03)
    assert d.chosen == d.rival == "fast" and verdict(d).startswith("fast (")


def test_a_slower_rival_is_reported_as_kept() -> None:
    d = decide({1: {"onnxruntime": _noisy(20.0), "openvino": _noisy(35.0, seed=3)}}, "onnxruntime", 0.03)
    assert d.chosen == "onnxruntime" and not d.tied
    assert "kept: openvino 0.5" in verdict(d)
    assert "kept: full 0.9" in verdict(decide({256: {"weights": [10.0] * 30, "full": [5.0] * 30},
                                                1: {"weights": [9.0] * 30, "full": [9.5] * 30}}, "weights", 0.03))


def test_both_batches_must_be_won() -> None:
    # full INT8 2.3x faster at batch 256 but level at batch 1 -> "weights" stays (one file ships for both).
    rounds = {256: {"weights": _noisy(20.0), "full": _noisy(8.7, seed=1)},
              1: {"weights": _noisy(9.0, seed=2), "full": _noisy(9.2, seed=3)}}
    kept = decide(rounds, "weights", 0.03)
    assert kept.chosen == "weights" and not kept.tied and "kept: full 0.9" in verdict(kept)
    rounds[1]["full"] = _noisy(6.0, seed=4)
    assert decide(rounds, "weights", 0.03).chosen == "full"


def test_of_several_clear_the_largest_lead_at_batch_256_wins() -> None:
    rounds = {256: {"0": _noisy(8.0), "1": _noisy(4.1, seed=1), "2": _noisy(3.5, seed=2)}}
    assert decide(rounds, "0", 0.1).chosen == "2"


def test_the_lead_must_exceed_the_margin_even_without_noise() -> None:
    rounds = {1: {"onnxruntime": [100.0] * 30, "torch": [98.0] * 30}}
    assert decide(rounds, "onnxruntime", 0.03).chosen == "onnxruntime"  # 2 % faster every round: under 3 %
    assert decide(rounds, "onnxruntime", 0.0).chosen == "torch"


def test_a_lead_within_the_incumbents_own_spread_is_not_clear() -> None:
    inc = [10.0, 20.0] * 15  # spread (median absolute deviation) a third of its median
    assert not lead([9.0, 18.0] * 15, inc).clear(0.03)  # 10 % ahead in every round, by less than the spread
    assert lead([5.0, 10.0] * 15, inc).clear(0.03)


def test_a_lead_in_half_the_rounds_is_not_clear() -> None:
    inc = [10.0] * 30
    assert not lead([5.0] * 20 + [10.0] * 10, inc).clear(0.03)  # a third of the rounds not ahead
    assert lead([5.0] * 24 + [10.0] * 6, inc).clear(0.03)


@settings(max_examples=60, deadline=None)
@given(st.floats(1.0, 100.0), st.integers(0, 10_000), st.floats(0.0, 0.1))
def test_a_runner_never_beats_a_copy_of_itself(us: float, seed: int, noise: float) -> None:
    """Two runners with the same speed: whatever the draw, the incumbent stays."""
    rounds = {256: {"a": _noisy(us, noise=noise, seed=seed), "b": _noisy(us, noise=noise, seed=seed + 1)}}
    assert decide(rounds, "a", 0.03).chosen == "a"


@pytest.mark.parametrize("margin", [-0.1, 1.0, 2.0])
def test_margin_outside_0_1_is_refused(margin: float) -> None:
    with pytest.raises(UserError, match="choice_margin"):
        decide({1: {"a": [1.0], "b": [0.5]}}, "a", margin)
