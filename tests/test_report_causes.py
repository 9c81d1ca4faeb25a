"""Issue #25's done-when for the report: on a generated run directory, the Conclusions come first, every
cause agrees with the row's deployed runtime and INT8 mode, and a speedup is shown only where the baseline
was timed in the same run as the variant (a dash otherwise)."""

import re
from pathlib import Path

from deepshrink.report import render_report
from deepshrink.results import LATENCY_COLUMNS, RESULTS_COLUMNS, write_rows

SPARSE_ART = "artifacts/x/model.dsparse"


def _row(variant: str, label: str, size: int, acc: float, steps: str, **extra: object) -> dict:
    return {"variant": variant, "dataset": "mnist", "model": "lenet-300-100", "base_model": "lenet-300-100",
            "label": label, "recipe_steps": steps, "pipeline": steps, "precision": "int8" if "int8" in label
            else "fp32", "size_bytes": size, "size_kb": size / 1000, "accuracy_pct": acc,
            "baseline_accuracy_pct": 98.0, "status": "ok", "seed": 0, "baseline_variant": "b",
            "deployed_runtime": "onnxruntime", "macs": 266200, "macs_nonzero": 266200, **extra}


# INT8 timings of the export (calibration images, 1 thread): integer compute slower than float here, so a
# "weights" file computes in float and must never be blamed on integer kernels.
INT8_US = {"int8_us_b256_fp32": 3.0, "int8_us_b256_full_onnxruntime": 3.6, "int8_us_b256_weights_onnxruntime": 2.9}
RESULTS = [
    _row("b", "baseline", 1_066_000, 98.0, ""),
    _row("q", "int8", 270_000, 97.9, "quantize:precision=int8", int8_mode="weights", **INT8_US),
    _row("p80", "prune80", 225_280, 97.5, "prune.unstructured:sparsity=0.8", deployed_runtime="sparse",
         artifact=SPARSE_ART, macs_nonzero=53240, deploy_us_b256_sparse=2.0, deploy_us_b256_onnxruntime=3.0),
    _row("p90", "prune90", 120_000, 97.0, "prune.unstructured:sparsity=0.9", artifact=SPARSE_ART,
         macs_nonzero=26620, deploy_us_b256_sparse=5.0, deploy_us_b256_onnxruntime=3.0),
    _row("p80q", "prune80+int8", 60_000, 97.4, "prune.unstructured:sparsity=0.8 | quantize:precision=int8",
         int8_mode="full", **INT8_US),
]


def _lat(v: str, runtime: str, us: float, base_us: float | None, reference: str = "b") -> dict:
    return {"variant": v, "runtime": runtime, "device": "cpu", "threads": 1, "batch": 256, "us_per_image_median": us,
            "us_per_image_min": us, "us_per_image_max": us, "speedup": base_us / us if base_us else 1.0,
            "reference": reference, "reference_us_per_image_median": base_us or ""}


# The baseline alone at 20 µs; beside its variants at 21 and 22 (another unit): noise 22 / 20 = 1.10x.
# p80q was timed alone (its own reference): no baseline beside it, so no speedup anywhere.
LATENCY = [_lat("b", "onnxruntime", 20.0, None, "b"), _lat("q", "onnxruntime", 12.0, 21.0),
           _lat("p80", "sparse", 10.0, 22.0, "b (onnxruntime)"), _lat("p80", "onnxruntime", 20.5, 21.0),
           _lat("p90", "onnxruntime", 19.5, 21.0), _lat("p90", "sparse", 25.0, 22.0, "b (onnxruntime)"),
           _lat("p80q", "onnxruntime", 6.0, None, "p80q")]


def _render(tmp_path: Path) -> str:
    run = tmp_path / "run"
    run.mkdir()
    write_rows(run / "results.csv", RESULTS, RESULTS_COLUMNS)
    write_rows(run / "latency.csv", LATENCY, LATENCY_COLUMNS)
    write_rows(run / "layers.csv", [], ["variant", "layer", "shape", "params_total", "params_nonzero"])
    return render_report(run)[0].read_text()


def _section(text: str, title: str) -> str:
    return text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def _rows(section: str) -> list[list[str]]:
    lines = [ln for ln in section.splitlines() if ln.startswith("|") and "---" not in ln]
    return [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines]


def test_conclusions_come_first_with_the_measured_noise(tmp_path: Path) -> None:
    text = _render(tmp_path)
    assert text.index("## Conclusions") < text.index("## Table")
    conclusions = _section(text, "Conclusions")
    rows = {r[0]: r for r in _rows(conclusions)[1:]}
    assert set(rows) == {"quantization", "pruning", "pipelines"}
    assert rows["quantization"][4] == "1.75"  # q: 21 / 12, paired
    assert rows["pipelines"][4] == "–"  # p80q was never timed beside its baseline
    assert "spans up to 1.10x (b, 3 runs, onnxruntime, 1 thread, batch 256)" in conclusions


def test_every_cause_matches_the_rows_deployed_runtime_and_int8_mode(tmp_path: Path) -> None:
    gaps = _rows(_section(_render(tmp_path), "Where the reference looks better, and why"))[1:]
    variant = {"INT8": "q", "Original INT8": "q", "80%": "p80", "80% FP32": "p80", "90%": "p90", "90% FP32": "p90",
               "80% INT8": "p80q"}
    rows = {r["variant"]: r for r in RESULTS}
    checked = 0
    for table, name, quantity, _, _, why in gaps:
        if quantity != "speedup" or name not in variant:
            continue
        row = rows[variant[name]]
        for claimed in re.findall(r"\bships\b[^;]*? on (?:the )?(\w+)", why):
            assert claimed == row["deployed_runtime"], (table, name, why)
            checked += 1
        if row.get("int8_mode") == "weights":
            assert "integer" not in why.replace("INT8 weights", ""), (table, name, why)
    assert checked >= 3
    why = {(r[0], r[1], r[2]): r[5] for r in gaps}
    assert "ships on the sparse runtime" in why[("Table 3", "80%", "speedup")]
    p90 = why[("Table 3", "90%", "speedup")]  # a sparse file shipped dense: why, from the deploy timing
    assert "ships the decoded dense model on onnxruntime" in p90 and "sparse runtime measured 5.00 µs" in p90
    assert "rejected full on onnxruntime 3.60 µs" in why[("Table 13", "Original INT8", "speedup")]


def test_speedups_only_where_the_baseline_was_timed_beside(tmp_path: Path) -> None:
    text = _render(tmp_path)
    t13 = {r[0]: r for r in _rows(_section(text, "Table 13."))}
    head = _rows(_section(text, "Table 13."))[0]
    sp, base, runtime = head.index("speedup"), head.index("baseline µs, same run"), head.index("runtime shipped")
    assert t13["80% INT8"][sp].startswith("–") and t13["80% INT8"][base] == "–"
    assert t13["80% FP32"][runtime] == "sparse" and t13["80% FP32"][sp].startswith("2.20")  # 22 / 10, paired
    assert t13["80% FP32"][head.index("ONNX Runtime µs (dense)")] == "20.5"  # beside, where it differs
    assert t13["Original FP32"][base] == "21.0 / 22.0"  # the times its rows divide by, not its own 20.0
    shipped = {r[0]: r for r in _rows(_section(text, "Speed as shipped"))}
    assert shipped["p80q"][3:6] == ["–", "–", "baseline not timed in the same run"]
    assert shipped["p90"][4:6] == ["1.08x", "≈"]  # 21 / 19.5: within the measured 1.10x, not called faster
