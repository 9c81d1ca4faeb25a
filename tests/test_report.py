"""The report is a pure function of the run directory: tables with the reference's numbers beside
ours, Pareto plots and Figure 1 embedded in a self-contained HTML file."""

import json
import re
from pathlib import Path

from deepshrink.report import render_report
from deepshrink.report.plots import pareto
from deepshrink.report.tables import RunData, best_of, cell
from deepshrink.results import LATENCY_COLUMNS, LAYERS_COLUMNS, RESULTS_COLUMNS, write_rows


def _row(variant: str, label: str, size_kb: float, acc: float, steps: str = "", model: str = "lenet-300-100",
         status: str = "ok") -> dict:
    return {"variant": variant, "dataset": "mnist", "model": model, "base_model": model, "label": label,
            "recipe_steps": steps, "pipeline": steps, "precision": "int8" if "int8" in label else "fp32",
            "size_kb": size_kb, "size_bytes": size_kb * 1000, "accuracy_pct": acc, "baseline_accuracy_pct": 98.0,
            "status": status, "sparsity": 0.0, "epochs": 3, "seed": 0}


def _run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    results = [
        _row("b", "baseline", 1066.0, 98.0),
        _row("q", "int8", 270.0, 97.9, "quantize:precision=int8,method=qat"),
        _row("p80", "prune80", 220.0, 97.5, "prune.unstructured:sparsity=0.8"),
        _row("p80q", "prune80+int8", 60.0, 97.4, "prune.unstructured:sparsity=0.8 | quantize:precision=int8"),
        _row("d1", "distill-T1", 160.0, 95.0, "distill:temperature=1"),
        _row("d4", "distill", 160.0, 96.5, "distill:temperature=4"),
        _row("bad", "fp16", 0, 0, "quantize:precision=fp16", status="failed: step 'quantize' is not implemented"),
        {**_row("w4", "w4", 140.0, 97.8, "quantize:method=qat,bits=4"), "weight_bits": 4},
    ]
    write_rows(run / "results.csv", results, RESULTS_COLUMNS) if run.mkdir() is None else None
    lat = [{"variant": v, "runtime": "onnxruntime", "device": "cpu", "threads": 1, "batch": 256,
            "us_per_image_median": us, "us_per_image_min": us, "us_per_image_max": us, "speedup": 20.0 / us,
            "reference": "b"} for v, us in (("b", 20.0), ("q", 10.0), ("p80", 12.0), ("p80q", 8.0), ("d4", 3.0))]
    write_rows(run / "latency.csv", lat, LATENCY_COLUMNS)
    layers = [{"variant": "p80", "layer": f"fc{i}.weight", "shape": "", "params_total": n, "params_nonzero": n // 5}
              for i, n in ((1, 235200), (2, 30000), (3, 1000))]
    write_rows(run / "layers.csv", layers, LAYERS_COLUMNS)
    (run / "provenance.json").write_text(json.dumps({"machine": {"cpu": "TestCPU", "cores": 2},
                                                     "code": {"commit": "abc123", "dirty": False},
                                                     "data": {"mnist": {"origin": "/x", "fingerprint": "ff"}}}))
    return run


def test_report_tables_put_reference_numbers_beside_ours(tmp_path: Path) -> None:
    run = _run(tmp_path)
    md, html = render_report(run)
    text = md.read_text()
    assert "Table 3. Pruning LeNet-300-100 on MNIST" in text
    assert "| 80% | 220.0 (191.0) | 4.8 | 97.50 (97.62) |" in text  # size, × smaller, accuracy vs reference
    assert "Table 4." in text and "| 80% | 47,040 (47,040) | 6,000 (1,200) | 200 (200) |" in text
    assert "Table 13." in text and "80% INT8" in text
    assert "| FLOAT16 |" not in text  # the failed fp16 variant has no row in Table 1...
    assert "failed: step 'quantize' is not implemented" in text  # ... but is listed under all variants
    assert "TestCPU" in text and "abc123" in text
    page = html.read_text()
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 3  # Figure 1, accuracy vs bits, one Pareto
    assert "| MNIST LeNet-300-100 4-bit weights | 140.0 |" in text  # Table 1b: every baseline's precisions
    assert not re.search(r'(src|href)="https?:', page)
    assert all((run / "figures" / f).exists() for f in ("figure1-temperature.png", "accuracy-vs-bits.png"))
    assert "JPEG" not in text  # the CIFAR-10 note only where CIFAR-10 results are
    # A pure function of the run directory: rendering again gives the same report.
    assert render_report(run)[0].read_text() == text


def test_pareto_front_and_best_model_rule() -> None:
    assert pareto([(10, 90), (5, 80), (20, 95), (15, 85), (5, 70)]) == [(5, 80), (10, 90), (20, 95)]
    rows = [_row("a", "prune50", 500, 97.9), _row("c", "prune90", 100, 90.0), _row("e", "prune80", 200, 97.1)]
    data = RunData(rows, [], [])
    best = best_of(data, "mnist", "lenet-300-100", lambda lab: lab.startswith("prune"))
    assert best is not None and best["variant"] == "e"  # smallest within 1 point of the baseline
    assert cell(97.5, 97.62) == "97.50 (97.62)" and cell(1.0, None) == "1.00"


def test_several_seeds_show_mean_and_std(tmp_path: Path) -> None:
    """Three seeds of the 80 % pruned variant at 97.0 / 98.0 / 99.0 %: mean 98.00, sample std 1.00, in
    Table 3's accuracy cell and in the per-pipeline summary with each seed's number beside."""
    run = _run(tmp_path)
    rows = [_row("b", "baseline", 1066.0, 98.0)]
    rows += [{**_row(f"p80--seed{s}", "prune80", 220.0, acc, "prune.unstructured:sparsity=0.8"), "seed": s,
              "size_bytes": 225280} for s, acc in ((0, 97.0), (1, 98.0), (2, 99.0))]
    write_rows(run / "results.csv", rows, RESULTS_COLUMNS)
    text = render_report(run)[0].read_text()
    assert "| 80% | 220.0 (191.0) | 4.8 | 98.00 ± 1.00 (97.62) |" in text
    assert "Every pipeline over its seeds" in text
    assert "| prune80 | 3 | 220.00 ± 0.00 | 98.00 ± 1.00 | s0 97.00, s1 98.00, s2 99.00 |" in text
