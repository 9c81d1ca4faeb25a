"""The one timing loop: warm-up then interleaved passes, batch-1 calls in interleaved chunks, and
latency rows whose speedup is the reference's median over the variant's, from the same rows."""

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch

from deepshrink.measure.latency import (
    WARMUP_BATCHES,
    LatencyConfig,
    Runner,
    RunnerFactory,
    _order,
    measure_latency,
    time_passes,
    time_singles,
)


def _recorder(name: str, log: list[tuple[str, int]], sleep_s: float = 0.0) -> Runner:
    def run(x: np.ndarray) -> np.ndarray:
        log.append((name, len(x)))
        if sleep_s:
            time.sleep(sleep_s)
        return np.zeros((len(x), 10), np.float32)

    return run


def test_time_passes_warms_up_once_then_interleaves_passes() -> None:
    log: list[tuple[str, int]] = []
    runners = {"a": _recorder("a", log), "b": _recorder("b", log)}
    x = np.zeros((4 * WARMUP_BATCHES + 6, 1, 2, 2), np.float32)
    out = time_passes(runners, {"a": x, "b": x[:4]}, batch=4, repeats=3)
    a_pass, b_pass = [("a", 4)] * (WARMUP_BATCHES + 1) + [("a", 2)], [("b", 4)]  # a: 8 batches of 4 + 6 images
    # a warm-up of the first WARMUP_BATCHES batches each, then 3 rounds of one pass per runner, in the
    # order latency._order gives, each pass led by one untimed batch
    rounds = [p for r in range(3) for k in _order(["a", "b"], r) for p in [(k, 4)] + (a_pass if k == "a" else b_pass)]
    assert log == a_pass[:WARMUP_BATCHES] + b_pass + rounds
    assert set(out) == {"a", "b"} and len(out["a"]) == len(out["b"]) == 3
    assert all(v >= 0 for v in out["a"] + out["b"])


def test_time_passes_with_zero_repeats_only_warms_up() -> None:
    log: list[tuple[str, int]] = []
    out = time_passes({"a": _recorder("a", log)}, {"a": np.zeros((3, 1))}, batch=256, repeats=0)
    assert log == [("a", 3)] and out == {"a": []}


@pytest.mark.parametrize("calls", [1, 5, 100, 250])
def test_time_singles_makes_exactly_calls_batch1_calls_per_runner(calls: int) -> None:
    log: list[tuple[str, int]] = []
    runners = {"a": _recorder("a", log), "b": _recorder("b", log)}
    x = np.zeros((7, 3), np.float32)
    out = time_singles(runners, {"a": x, "b": x}, calls, chunk=100)
    assert [n for n, _ in log].count("a") == calls and [n for n, _ in log].count("b") == calls
    assert {size for _, size in log} == {1}
    assert len(out["a"]) == len(out["b"]) == calls
    # interleaved in chunks of at most 100 calls, each chunk's runners in the order _order gives
    chunks = [min(100, calls - s) for s in range(0, calls, 100)]
    assert [n for n, _ in log] == [n for r, c in enumerate(chunks) for n in _order(["a", "b"], r) for _ in range(c)]


def test_each_round_shuffles_who_runs_right_after_the_reference() -> None:
    """A fixed order would slow the same runner (the one after a big reference) in every round."""
    names = ["ref", *"abcdefgh"]
    orders = [_order(names, r) for r in range(10)]
    assert orders[0] == names and all(sorted(o) == sorted(names) for o in orders)
    after_ref = [o[o.index("ref") + 1] for o in orders if o[-1] != "ref"]
    assert max(after_ref.count(n) for n in names[1:]) <= 4 < len(after_ref)


def test_time_singles_walks_through_the_input() -> None:
    seen: list[int] = []
    x = np.arange(5, dtype=np.float32).reshape(5, 1)
    time_singles({"a": lambda xi: seen.append(int(xi[0, 0])) or xi}, {"a": x}, 12, chunk=5)
    assert seen == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]


@dataclass
class FakeArtifact:
    runners: dict[str, RunnerFactory]
    input_dtype: Any = np.float32
    made: list[tuple[int, str]] = field(default_factory=list)


def _fake(sleep_s: float, dtype: Any = np.float32, runtimes: tuple[str, ...] = ("torch",)) -> FakeArtifact:
    art = FakeArtifact({}, dtype)

    def factory(threads: int, device: str) -> Runner:
        art.made.append((threads, device))

        def run(x: np.ndarray) -> np.ndarray:
            assert x.dtype == dtype  # the input is cast to the artifact's dtype
            if sleep_s:
                time.sleep(sleep_s)
            return np.zeros((len(x), 10), np.float32)

        return run

    art.runners = dict.fromkeys(runtimes, factory)
    return art


def test_measure_latency_speedup_is_reference_over_variant_median() -> None:
    base, slow = _fake(0.0), _fake(0.002, np.float16)
    cfg = LatencyConfig(runtimes=("torch",), threads=(1,), batch=4, repeats=3, single_calls=5)
    threads_before = torch.get_num_threads()
    rows = measure_latency([("base", base), ("slow", slow)], np.zeros((8, 1, 2, 2), np.float32), cfg)
    assert torch.get_num_threads() == threads_before  # restored
    assert base.made == slow.made == [(1, "cpu")]
    assert {(r["variant"], r["batch"]) for r in rows} == {("base", 4), ("base", 1), ("slow", 4), ("slow", 1)}
    assert all(r["reference"] == "base" and r["runtime"] == "torch" and r["threads"] == 1 for r in rows)
    for batch in (4, 1):
        ref = next(r for r in rows if r["variant"] == "base" and r["batch"] == batch)
        var = next(r for r in rows if r["variant"] == "slow" and r["batch"] == batch)
        assert ref["speedup"] == 1.0
        assert var["speedup"] == ref["us_per_image_median"] / var["us_per_image_median"]  # exactly
        assert var["speedup"] < 1.0  # 2 ms per call against none
        per_image_s = 0.002 / (4 if batch == 4 else 1)
        assert var["us_per_image_min"] >= per_image_s * 1e6  # sleep() never returns early
        assert var["us_per_image_min"] <= var["us_per_image_median"] <= var["us_per_image_max"]


def test_measure_latency_reference_is_the_first_artifact() -> None:
    cfg = LatencyConfig(runtimes=("torch",), threads=(1,), batch=8, repeats=1, single_calls=2)
    rows = measure_latency([("slow", _fake(0.002)), ("fast", _fake(0.0))], np.zeros((8, 2), np.float32), cfg)
    assert {r["reference"] for r in rows} == {"slow"}
    assert all(r["speedup"] > 1.0 for r in rows if r["variant"] == "fast")


def test_measure_latency_skips_runtimes_an_artifact_lacks() -> None:
    cfg = LatencyConfig(runtimes=("torch", "onnxruntime"), threads=(1,), batch=8, repeats=1, single_calls=2)
    both, torch_only = _fake(0.0, runtimes=("torch", "onnxruntime")), _fake(0.0)
    rows = measure_latency([("a", both), ("b", torch_only)], np.zeros((8, 2), np.float32), cfg)
    assert {(r["variant"], r["runtime"]) for r in rows} == {("a", "torch"), ("b", "torch"), ("a", "onnxruntime")}


# ---- fake runners of known cost: the formula, the warm-up and the call counts, not just their shapes ----

class FakeClock:
    """Stands in for `time` in the latency module: only the fake runners advance it, by their exact cost,
    so the numbers are known exactly whatever the machine's load."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def perf_counter_ns(self) -> int:
        return round(self.now * 1e9)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    from deepshrink.measure import latency

    fake = FakeClock()
    monkeypatch.setattr(latency, "time", fake)
    return fake


def _costed(clock: FakeClock, cost_s: float, log: list[int], first_call_s: float | None = None) -> FakeArtifact:
    """A runtime whose every call costs `cost_s` (the first one `first_call_s`, like a JIT warm-up)."""
    def factory(threads: int, device: str) -> Runner:
        def run(x: np.ndarray) -> np.ndarray:
            clock.now += first_call_s if not log and first_call_s is not None else cost_s
            log.append(len(x))
            return np.zeros((len(x), 10), np.float32)

        return run

    return FakeArtifact({"torch": factory})


def test_speedup_is_baseline_time_over_variant_time_for_known_costs(clock: FakeClock) -> None:
    """Baseline 3 ms per call, variant 1 ms: speedup exactly 3 batched and batch-1 (not 1/3, not 1)."""
    cfg = LatencyConfig(runtimes=("torch",), threads=(1,), batch=8, repeats=3, single_calls=20)
    rows = measure_latency([("base", _costed(clock, 0.003, [])), ("fast", _costed(clock, 0.001, []))],
                           np.zeros((16, 2), np.float32), cfg)
    for batch in (8, 1):
        fast = next(r for r in rows if r["variant"] == "fast" and r["batch"] == batch)
        assert fast["speedup"] == pytest.approx(3.0)
        assert fast["us_per_image_median"] == pytest.approx(1000.0 / batch)  # 1 ms per call over `batch` images


def test_warm_up_is_not_counted(clock: FakeClock) -> None:
    """A first call of 300 ms (allocation, kernel selection) must not reach any timed number."""
    log: list[int] = []
    cfg = LatencyConfig(runtimes=("torch",), threads=(1,), batch=4, repeats=3, single_calls=10)
    rows = measure_latency([("a", _costed(clock, 0.001, log, first_call_s=0.3))], np.zeros((8, 2), np.float32), cfg)
    assert log[0] == 4  # the warm-up pass ran (and was slow) ...
    for r in rows:  # ... and no timed number saw it: every call cost 1 ms
        assert r["us_per_image_max"] == pytest.approx(1000.0 / r["batch"])


def test_default_batch1_latency_makes_at_least_1000_single_calls(clock: FakeClock) -> None:
    log: list[int] = []
    cfg = dataclasses.replace(LatencyConfig(), runtimes=("torch",), threads=(1,), repeats=1)
    rows = measure_latency([("a", _costed(clock, 0.0001, log))], np.zeros((8, 2), np.float32), cfg)
    assert LatencyConfig().single_calls >= 1000 and log.count(1) >= 1000
    assert [r["batch"] for r in rows] == [256, 1]


def test_a_runner_far_behind_leaves_the_race_and_its_median_stays(clock: FakeClock) -> None:
    """drop_above (the choices' race): after RACE_ROUNDS rounds a runner over drop_above times the fastest
    is timed no more, the others every round; without it (the tables) every runner runs every round."""
    from deepshrink.measure.latency import RACE_ROUNDS

    def costing(cost_s: float, log: list[int]) -> Runner:
        def run(x: np.ndarray) -> np.ndarray:
            clock.now += cost_s
            log.append(len(x))
            return np.zeros((len(x), 10), np.float32)

        return run

    x = np.zeros((8, 2), np.float32)
    for drop_above, slow_rounds in ((3.0, RACE_ROUNDS), (float("inf"), 10)):
        calls: dict[str, list[int]] = {"fast": [], "near": [], "slow": []}
        runners = {k: costing(c, calls[k]) for k, c in (("fast", 0.001), ("near", 0.0029), ("slow", 0.0031))}
        out = time_passes(runners, dict.fromkeys(runners, x), batch=4, repeats=10, drop_above=drop_above)
        assert [len(out[k]) for k in runners] == [10, 10, slow_rounds]
        assert out["slow"][0] == pytest.approx(3100.0 / 4)  # what it ran is kept, µs per image
        calls = {k: [] for k in calls}
        runners = {k: costing(c, calls[k]) for k, c in (("fast", 0.001), ("near", 0.0029), ("slow", 0.0031))}
        single = time_singles(runners, dict.fromkeys(runners, x), 100, chunk=10, drop_above=drop_above)
        assert [len(single[k]) for k in runners] == [100, 100, slow_rounds * 10]
