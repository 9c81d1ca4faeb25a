"""The study runner: a smoke study end to end on tiny generated data, resume, cache keys, failures,
the run-directory lock."""

import json
from pathlib import Path

import pytest
from filelock import FileLock

from deepshrink.compress import STEP_CONFIGS
from deepshrink.errors import UserError
from deepshrink.results import read_rows
from deepshrink.study.run import run_study

from smoke_recipe import CALLS, RECIPE, SEEDS, _recipe


def test_smoke_study_end_to_end_then_resume(tmp_path: Path, mnist_dir: Path) -> None:
    CALLS.clear()
    out = tmp_path / "run"
    run_study(str(_recipe(tmp_path)), out, mnist_dir, "cpu", quiet=True)
    rows = {r["label"]: r for r in read_rows(out / "results.csv")}
    assert set(rows) == {"baseline", "half", "half+quarter", "broken"}
    assert rows["broken"]["status"].startswith("failed: FloatingPointError: non-finite loss")
    assert all(rows[k]["status"] == "ok" for k in ("baseline", "half", "half+quarter"))
    assert rows["half+quarter"]["pipeline"] == "test.scale | test.scale:factor=0.25"
    # The shared prefix (x0.5) ran once for both pipelines.
    assert sum(c.endswith(":0.5") for c in CALLS) == 1
    assert (out / "report.md").exists() and "data:image/png;base64," in (out / "report.html").read_text()
    assert "http://" not in (out / "report.html").read_text() and "https://" not in (out / "report.html").read_text()
    latency = read_rows(out / "latency.csv")
    assert {r["variant"] for r in latency} >= {rows["half"]["variant"], rows["baseline"]["variant"]}
    half = [r for r in latency if r["variant"] == rows["half"]["variant"]]
    assert half and all(r["reference"] == rows["baseline"]["variant"] for r in half)
    before = (out / "results.csv").read_text()
    CALLS.clear()
    _, again = run_study(str(_recipe(tmp_path)), out, mnist_dir, "cpu", quiet=True)
    # Resume: finished variants are skipped; only the failed one is retried (and fails again).
    assert [f"{rows['baseline']['variant']}:0.5:fail"] == CALLS
    assert again[rows["half"]["variant"]] == "ok"
    ok_before = [r for r in read_rows(out / "results.csv") if r["status"] == "ok"]
    assert ok_before == [r for r in _rows_from(before) if r["status"] == "ok"]
    # The resumed invocation's own wall time and share of the work, read by the report from provenance.
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["study_seconds"] > 0 and (prov["study_variants_run"], prov["study_variants"]) == (1, 4)
    assert "for the 1 variant this invocation ran (resumed: the other 3 were done before" in \
        (out / "report.md").read_text()
    # From scratch again (--fresh): everything recomputed, same accuracies and sizes.
    _fresh_recomputes_and_gives_identical_numbers(tmp_path, mnist_dir, out)
    # Cache gone: the failed pipeline's retry retrains the baseline, whose row is then measured again
    # (so it describes the model the pipelines start from), with the same numbers.
    import shutil

    base_onnx = out / rows["baseline"]["artifact"]
    stamp = base_onnx.stat().st_mtime_ns
    shutil.rmtree(out / "cache")
    run_study(str(_recipe(tmp_path)), out, mnist_dir, "cpu", quiet=True)
    assert base_onnx.stat().st_mtime_ns != stamp
    again_rows = {r["label"]: r for r in read_rows(out / "results.csv")}
    assert again_rows["baseline"]["accuracy_pct"] == rows["baseline"]["accuracy_pct"]


def _rows_from(text: str) -> list[dict[str, str]]:
    import csv
    import io

    return list(csv.DictReader(io.StringIO(text)))


def _fresh_recomputes_and_gives_identical_numbers(tmp_path: Path, mnist_dir: Path, out: Path) -> None:
    first = {r["variant"]: (r["accuracy_pct"], r["size_bytes"]) for r in read_rows(out / "results.csv")}
    CALLS.clear()
    run_study(str(_recipe(tmp_path)), out, mnist_dir, "cpu", quiet=True, fresh=True)
    assert len(CALLS) == 3  # x0.5, then x0.25 on top of it, then the broken one
    assert {r["variant"]: (r["accuracy_pct"], r["size_bytes"]) for r in read_rows(out / "results.csv")} == first


def test_unregistered_spec_step_is_recorded_as_failed(tmp_path: Path, mnist_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A build without one of SPEC's techniques (every one has landed: one is unregistered here) runs
    the rest of the recipe and records that step's variants as failed."""
    monkeypatch.delitem(STEP_CONFIGS, "cluster")
    text = RECIPE.split("[[pipeline]]")[0] + '[[pipeline]]\nname = "c"\nsteps = ["cluster:bits=4"]\n'
    out = tmp_path / "run"
    _, statuses = run_study(str(_recipe(tmp_path, text)), out, mnist_dir, "cpu", quiet=True)
    failed = [s for s in statuses.values() if s != "ok"]
    assert failed == ["failed: step 'cluster' is not implemented in this build"]


def test_lock_stops_a_second_study(tmp_path: Path, mnist_dir: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    with FileLock(str(out / ".study.lock")), pytest.raises(UserError, match="another study"):
        run_study(str(_recipe(tmp_path)), out, mnist_dir, "cpu", quiet=True)


@pytest.fixture
def timed(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The variants of each measure_latency call a study's units make, in order."""
    from deepshrink.study import unit

    calls: list[list[str]] = []
    real = unit.measure_latency

    def spy(named, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append([v for v, _ in named])
        return real(named, *args, **kwargs)

    monkeypatch.setattr(unit, "measure_latency", spy)
    return calls


def test_a_unit_times_its_variants_together_with_the_baseline_once(tmp_path: Path, mnist_dir: Path,
                                                                   timed: list[list[str]]) -> None:
    """Serial study: the baseline's own unit times it alone, then one interleaved run times both ok
    variants beside it; each speedup is the baseline's median from that run over the variant's."""
    out = tmp_path / "run"
    run_study(str(_recipe(tmp_path)), out, mnist_dir, "cpu", quiet=True)
    rows = {r["label"]: r["variant"] for r in read_rows(out / "results.csv")}
    assert timed == [[rows["baseline"]], [rows["baseline"], rows["half"], rows["half+quarter"]]]
    for r in read_rows(out / "latency.csv"):
        if r["variant"] != rows["baseline"]:
            ratio = float(r["reference_us_per_image_median"]) / float(r["us_per_image_median"])
            assert float(r["speedup"]) == pytest.approx(ratio, abs=1e-6)  # results.csv keeps 6 decimals


def test_extra_seeds_of_a_baseline_share_one_unit_each_with_its_own_step_seed(
        tmp_path: Path, mnist_dir: Path, timed: list[list[str]]) -> None:
    """A pipeline's seeds 1 and 2 (same baseline) run in one unit, timed together beside the baseline once,
    and each runs its steps with its own seed."""
    text = RECIPE.split("[[pipeline]]")[0] + '[[pipeline]]\nname = "half"\nsteps = ["test.scale"]\nseeds = [0, 1, 2]\n'
    SEEDS.clear()
    out = tmp_path / "run"
    run_study(str(_recipe(tmp_path, text)), out, mnist_dir, "cpu", quiet=True)
    rows = {r["variant"]: r for r in read_rows(out / "results.csv")}
    base = next(v for v, r in rows.items() if r["label"] == "baseline")
    assert sorted(SEEDS) == [0, 1, 2] and all(r["status"] == "ok" for r in rows.values())
    assert [base, f"{base}--half--seed1", f"{base}--half--seed2"] in timed and len(timed) == 3
