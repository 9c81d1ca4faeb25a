"""A speed search's fastest feasible trials are timed again together before one is chosen (finals.py)."""

import json
import math
from pathlib import Path

import pytest

from deepshrink.search import SearchOptions, SearchSpace, finals, parse_budget, run_search


def _row(n: int, us: float, drop: float = 0.1, feasible: bool = True) -> dict:
    return {"number": n, "steps": [f"s{n}"], "feasible": feasible, "drop": drop, "us_b1": us, "bytes": 1e4 - n}


def test_finalists_are_the_feasible_trials_near_the_fastest_of_a_time_search() -> None:
    us_b1 = parse_budget("drop<=1", minimize="us_b1")
    fit = [_row(0, 68.0), _row(1, 59.0), _row(2, 77.5), _row(3, 95.0), _row(4, math.inf)]
    assert [r["number"] for r in finals.finalists(fit, us_b1)] == [1, 0, 2]  # 95 > 1.5 x 59
    many = [_row(n, 50.0 + n) for n in range(6)]
    assert len(finals.finalists(many, us_b1)) == finals.FINALISTS
    assert finals.finalists([_row(0, 50.0)], us_b1) == []  # nothing to race
    assert finals.finalists(fit, parse_budget("drop<=1", minimize="bytes")) == []  # bytes do not jitter
    assert finals.finalists(fit, parse_budget("drop<=1", pareto="bytes,us_b1")) == []  # a front keeps them all


def test_a_speed_search_chooses_the_winner_of_one_interleaved_timing(tmp_path: Path, mnist_dir: Path,
                                                                     checkpoint: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(finals, "WITHIN", math.inf)  # every feasible trial races, however its own run timed it
    out = tmp_path / "search"
    space = SearchSpace(templates=("q", "pq"), prune_epochs=(1,))
    res = run_search(checkpoint, parse_budget("drop<=100", minimize="us_b1"), out,
                     SearchOptions(trials=3, space=space, device="cpu", quiet=True), data_dir=mnist_dir)
    final = json.loads((out / "provenance.json").read_text())["search"]["final"]
    times = final["us_by_trial"]
    assert final["metric"] == "us_b1" and len(times) >= 2 and all(us > 0 for us in times.values())
    assert res.picked[0]["number"] == int(min(times, key=lambda n: times[n]))  # the race's, not the trials' own
    assert not (out / ".trials").exists()
