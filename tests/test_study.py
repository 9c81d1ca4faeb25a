"""The study runner: a smoke study end to end on tiny generated data, resume, cache keys, failures,
the run-directory lock."""

import dataclasses
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from deepshrink import runner
from deepshrink.compress import STEP_CONFIGS, register_step
from deepshrink.errors import UserError
from deepshrink.results import read_rows
from deepshrink.study import run_study
from deepshrink.variant import StepContext, Variant

CALLS: list[str] = []


@dataclasses.dataclass(frozen=True)
class ScaleConfig:
    """A test-only step: scales every weight; `fail=true` raises like a NaN loss would."""

    factor: float = 0.5
    fail: bool = False


if "test.scale" not in STEP_CONFIGS:
    @register_step("test.scale", ScaleConfig)
    def _scale(v: Variant, cfg: ScaleConfig, ctx: StepContext) -> Variant:
        CALLS.append(f"{v.id}:{cfg.factor}" + (":fail" if cfg.fail else ""))
        if cfg.fail:
            raise FloatingPointError("non-finite loss at epoch 1")
        with torch.no_grad():
            for p in v.model.parameters():
                p.mul_(cfg.factor if p.dim() > 1 else 1.0)
        return v


RECIPE = """
name = "smoke"
description = "tiny"
expected_minutes = 0.1
[study]
datasets = ["mnist"]
models = ["lenet-300-100"]
val_size = 30
[train]
epochs = 1
batch_size = 64
[measure]
runtimes = ["onnxruntime"]
threads = [1]
repeats = 1
single_calls = 5
images = 50
[[pipeline]]
name = "half"
steps = ["test.scale:factor=0.5"]
[[pipeline]]
name = "half+quarter"
steps = ["test.scale:factor=0.5", "test.scale:factor=0.25"]
[[pipeline]]
name = "broken"
steps = ["test.scale:fail=true"]
"""


def _recipe(tmp_path: Path, text: str = RECIPE) -> Path:
    path = tmp_path / "smoke.toml"
    path.write_text(text)
    return path


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


def test_cache_keys_change_with_upstream_config_only() -> None:
    base = runner.baseline_key("mnist", "lenet-5", {"epochs": 3}, "fp", 5000)
    assert base == runner.baseline_key("mnist", "lenet-5", {"epochs": 3}, "fp", 5000)
    assert base != runner.baseline_key("mnist", "lenet-5", {"epochs": 4}, "fp", 5000)
    assert base != runner.baseline_key("mnist", "lenet-5", {"epochs": 3}, "other", 5000)
    s1 = runner.step_key(base, "prune.unstructured:sparsity=0.8", "fp", 0)
    s2 = runner.step_key(s1, "quantize:precision=int8", "fp", 0)
    assert s1 == runner.step_key(base, "prune.unstructured:sparsity=0.8", "fp", 0)
    assert s1 != runner.step_key(base, "prune.unstructured:sparsity=0.9", "fp", 0)
    other_base = runner.baseline_key("mnist", "lenet-5", {"epochs": 4}, "fp", 5000)
    # Downstream keys follow any change upstream, through the whole chain.
    assert s2 != runner.step_key(runner.step_key(other_base, "prune.unstructured:sparsity=0.8", "fp", 0),
                                 "quantize:precision=int8", "fp", 0)
    assert s2 != runner.step_key(s1, "quantize:precision=int8", "fp", 1)


def test_unregistered_spec_step_is_recorded_as_failed(tmp_path: Path, mnist_dir: Path) -> None:
    if "cluster" in STEP_CONFIGS:
        pytest.skip("cluster is implemented in this build")
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


def test_plan_is_deterministic_and_filters_pipelines(tmp_path: Path) -> None:
    from deepshrink.recipes import load_recipe

    text = RECIPE.replace('models = ["lenet-300-100"]', 'models = ["lenet-300-100", "lenet-5"]') + \
        '[[pipeline]]\nname = "only5"\nsteps = ["test.scale:factor=2.0"]\nmodels = ["lenet-5"]\n'
    works = runner.plan(load_recipe(str(_recipe(tmp_path, text))))
    assert [w.label for w in works if w.model == "lenet-5"][-1] == "only5"
    assert "only5" not in [w.label for w in works if w.model == "lenet-300-100"]
    groups = runner.trees(works)
    assert sorted(len(g) for g in groups) == [1, 1, 1, 2, 2]


def test_baseline_placeholder_hashes_as_the_baseline_key(tmp_path: Path) -> None:
    run, hashed = runner.substitute("distill:student=input,teacher={baseline}", tmp_path / "b.safetensors", "k1")
    assert run == f"distill:student=input,teacher={tmp_path / 'b.safetensors'}"
    # The path is where the cache happens to be; the key is what the teacher is.
    assert hashed == "distill:student=input,teacher=baseline:k1"


def test_worker_progress_is_relayed_to_the_parent() -> None:
    import queue

    class Recorder(runner.Progress):
        def __init__(self) -> None:
            super().__init__(enabled=False)
            self.events: list[tuple] = []

        def add(self, description: str, total: int) -> int:
            self.events.append(("add", description, total))
            return 7

        def update(self, task: int, advance: int = 0, info: str | None = None,
                   description: str | None = None) -> None:
            self.events.append(("update", task, advance, info))

        def finish(self, task: int) -> None:
            self.events.append(("finish", task))

    parent = Recorder()
    q: queue.Queue = queue.Queue()
    with runner.Relay(q, parent):
        worker = runner.QueueProgress(q)
        t = worker.add("mnist lenet-5", 3)
        worker.update(t, advance=1, info="loss 0.1")
        worker.finish(t)
        worker.update(99, advance=1)  # a task the parent never saw is ignored
    assert [e[0] for e in parent.events] == ["add", "update", "finish"]
    assert parent.events[0][1].endswith("mnist lenet-5") and parent.events[1] == ("update", 7, 1, "loss 0.1")
