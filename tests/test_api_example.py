"""The README's "Your own model" example runs as printed (read from README.md, so the two cannot drift)."""

import csv
import importlib
import re
from pathlib import Path

import pytest

from deepshrink.measure.latency import LatencyConfig

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    section = text.split("\n## Your own model\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README.md: no ```python block under '## Your own model'"
    return match.group(1)


def test_example_is_short_and_uses_the_public_api() -> None:
    code = readme_example()
    lines = [line for line in code.splitlines() if line.strip()]
    assert len(lines) <= 12, lines
    for name in ("deepshrink as ds", "ds.Data.from_arrays", "ds.train(", "ds.compress(", "ds.steps."):
        assert name in code


def test_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    run = importlib.import_module("deepshrink.study.run")
    monkeypatch.setattr(run, "_latency", lambda device, latency: LatencyConfig(
        runtimes=("onnxruntime",), threads=(1,), batch=64, repeats=1, single_calls=3))  # timing has its own tests
    monkeypatch.chdir(tmp_path)  # the example writes runs/mine relative to where it runs
    exec(compile(readme_example(), str(README), "exec"), {"__name__": "__main__"})
    printed = capsys.readouterr().out.split()
    assert float(printed[0]) >= 0 and int(printed[1]) > 0 and Path(printed[2]).is_file()
    rows = list(csv.DictReader((tmp_path / "runs" / "mine" / "results.csv").open()))
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    small = next(r for r in rows if r["pipeline"])
    # all INT8, or INT8 weights computed in float: whichever timing picked (export/exporters/int8.py)
    assert small["precision"] == {"full": "int8", "weights": "int8-weights"}[small["int8_mode"]]
    assert float(small["sparsity"]) > 0.3
    assert tmp_path / "runs" / "mine" / small["artifact"] == tmp_path / printed[2]
