"""The "On a microcontroller" section against its anchors: the dense control (a pipeline of `finetune` and
`quantize` only) and TensorFlow Lite Micro running the reference model (bench_mcu.py's tflm.csv), each a column
of signed accuracy points; and the flash-vs-accuracy figure's frontier and TFLM star."""

from pathlib import Path
from typing import Any

import pytest

from deepshrink.report import mcu
from deepshrink.report.mcu import COLUMNS, _frontier, _is_control, mcu_figure, mcu_table
from deepshrink.report.rundata import RunData
from deepshrink.results import write_rows

NEW = ["vs TFLM reference (pt)", "vs dense control (pt)"]
CONTROL = "finetune:epochs=2 | quantize:precision=int8,method=ptq"
INNER = "prune.structured:ratio=0.5,layers=inner,alpha=0,epochs=2 | quantize:precision=int8,method=ptq"
PTQ = "quantize:precision=int8,method=ptq"


def _row(label: str, steps: str, flash: int, acc: float, seed: int = 0, model: str = "resnet.tflite",
         dataset: str = "cifar10", status: str = "ok") -> dict[str, str]:
    return {"variant": f"{dataset}-{model}--{label}--s{seed}", "dataset": dataset, "model": model.split(".")[0],
            "base_model": model, "label": label, "recipe_steps": steps, "status": status, "seed": str(seed),
            "mcu_target": "cortex-m4", "mcu_flash_bytes": str(flash), "mcu_ram_bytes": "40000",
            "mcu_instructions": "9000000", "mcu_ms_est": "80.0", "mcu_energy_uj_est": "9000.0",
            "mcu_accuracy_pct": str(acc)}


RESULTS = [
    {"variant": "b", "dataset": "cifar10", "base_model": "resnet.tflite", "label": "baseline", "recipe_steps": "",
     "status": "ok", "seed": "0"},  # FP32: not built for the target
    _row("dense-ft", CONTROL, 100_000, 79.5, seed=0), _row("dense-ft", CONTROL, 100_000, 80.5, seed=1),
    _row("inner50", INNER, 60_000, 77.25),
    _row("int8", PTQ, 100_000, 75.0),
    _row("broken-ft", CONTROL, 1, 99.0, status="failed: non-finite loss"),  # not a control: it failed
    _row("int8", PTQ, 20_000, 97.0, model="mlp-50", dataset="mnist"),  # another model: no control of its own
]
TFLM = {"model": "resnet_quant", "target": "cortex-m4", "tflm_flash_bytes": "110000", "tflm_ram_bytes": "60000",
        "tflm_instructions": "12000000", "tflm_accuracy_pct": "76.5"}


def _data(run: Path, results: list[dict[str, str]], tflm: list[dict[str, str]] | None = None) -> RunData:
    run.mkdir(parents=True, exist_ok=True)
    if tflm is not None:
        write_rows(run / "tflm.csv", tflm, list(dict.fromkeys(k for r in tflm for k in r)))
    return RunData(results=results, latency=[], layers=[], run_dir=run)


def _by_label(table: Any) -> dict[str, dict[str, str]]:
    return {r[0]: dict(zip(table.columns, r, strict=True)) for r in table.rows}


def test_both_anchors_give_signed_points(tmp_path: Path) -> None:
    table = mcu_table(_data(tmp_path, RESULTS, [TFLM]))
    assert table.columns == COLUMNS + NEW and all(len(r) == len(table.columns) for r in table.rows)
    rows = _by_label(table)
    deltas = {name: (r[NEW[0]], r[NEW[1]]) for name, r in rows.items() if not name.startswith("mnist")}
    assert deltas == {
        "cifar10 resnet dense-ft": ("+3.50", "+0.00"),  # the mean of its seeds (80.0) is the anchor
        "cifar10 resnet inner50": ("+0.75", "-2.75"),
        "cifar10 resnet int8": ("-1.50", "-5.00"),
        "resnet_quant (TensorFlow Lite Micro, dense INT8)": ("+0.00", "-"),
    }
    assert rows["mnist mlp-50 int8"][NEW[1]] == "-"  # no dense control of this (dataset, model)
    assert rows["cifar10 resnet dense-ft"]["seeds"] == "2"
    assert "dense control" in table.note and "finetune" in table.note


def test_without_anchors_the_columns_are_absent(tmp_path: Path) -> None:
    no_control = [r for r in RESULTS if r["label"] != "dense-ft"]
    table = mcu_table(_data(tmp_path, no_control))
    assert table.columns == COLUMNS and all(len(r) == len(COLUMNS) for r in table.rows)
    assert "dense control" not in table.note
    # A control alone, or tflm.csv alone, is enough for both columns ("-" where one is missing).
    alone = _by_label(mcu_table(_data(tmp_path, RESULTS)))
    assert (alone["cifar10 resnet int8"][NEW[0]], alone["cifar10 resnet int8"][NEW[1]]) == ("-", "-5.00")
    tflm_only = _by_label(mcu_table(_data(tmp_path / "t", no_control, [TFLM])))
    assert (tflm_only["cifar10 resnet int8"][NEW[0]], tflm_only["cifar10 resnet int8"][NEW[1]]) == \
        ("-1.50", "-")


def test_two_tflm_models_are_no_one_reference(tmp_path: Path) -> None:
    """Several TFLM rows with an accuracy: no variant is compared with any, and no TFLM row claims +0.00."""
    other = {**TFLM, "model": "other_quant", "tflm_accuracy_pct": "70.0"}
    rows = _by_label(mcu_table(_data(tmp_path, RESULTS, [TFLM, other])))
    assert rows["cifar10 resnet int8"][NEW[0]] == "-" and rows["cifar10 resnet int8"][NEW[1]] == "-5.00"
    assert rows["resnet_quant (TensorFlow Lite Micro, dense INT8)"][NEW[0]] == "-"
    assert rows["other_quant (TensorFlow Lite Micro, dense INT8)"][NEW[0]] == "-"


def test_a_tflm_row_without_accuracy_is_not_its_own_reference(tmp_path: Path) -> None:
    unmeasured = {k: v for k, v in TFLM.items() if k != "tflm_accuracy_pct"}
    rows = _by_label(mcu_table(_data(tmp_path, RESULTS, [unmeasured])))
    tflm = rows["resnet_quant (TensorFlow Lite Micro, dense INT8)"]
    assert tflm["accuracy (C, %)"] == "-" and tflm[NEW[0]] == "-"


@pytest.mark.parametrize(("steps", "control"), [
    (CONTROL, True), ("finetune:epochs=2", True), (" finetune | quantize:precision=int8,method=qat,epochs=1 ", True),
    (PTQ, False), ("", False), (INNER, False),
    ("finetune:epochs=2 | prune.unstructured:sparsity=0.5 | quantize:precision=int8", False),
    ("distill:temperature=4 | quantize:precision=int8", False),
])
def test_what_counts_as_a_dense_control(steps: str, control: bool) -> None:
    assert _is_control([{"recipe_steps": steps}]) is control


def test_frontier_keeps_only_the_points_nothing_beats() -> None:
    assert _frontier([]) == []
    pts = [(100.0, 75.0), (60.0, 77.25), (100.0, 80.0), (150.0, 79.0), (30.0, 60.0), (200.0, 81.0), (30.0, 60.0)]
    assert _frontier(pts) == [(30.0, 60.0), (60.0, 77.25), (100.0, 80.0), (200.0, 81.0)]
    # Same flash, less accuracy: beaten (int8 beside its fine-tuned twin, both dense INT8 of one size).
    assert _frontier([(100.0, 80.0), (100.0, 75.0)]) == [(100.0, 80.0)]
    assert _frontier([(5.0, 50.0), (1.0, 90.0)]) == [(1.0, 90.0)]


def test_the_figure_draws_the_frontier_and_the_tflm_star(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    real_save = mcu.save

    def save(fig: Any, path: Path) -> Path:
        seen["titles"] = [ax.get_title() for ax in fig.axes]
        seen["lines"] = {ax.get_title(): {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()),
                                                             line.get_marker()) for line in ax.get_lines()}
                         for ax in fig.axes}
        return real_save(fig, path)

    monkeypatch.setattr(mcu, "save", save)
    fig = mcu_figure(_data(tmp_path, RESULTS, [TFLM]), tmp_path / "figures")
    assert fig is not None and fig.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "star" in fig.caption and "frontier" not in seen["titles"]
    lines = seen["lines"]["cifar10 resnet"]
    assert lines["TFLM: resnet_quant"] == ([110.0], [76.5], "*")  # kB: 110,000 B
    assert lines["frontier"][:2] == ([60.0, 100.0], [77.25, 80.0])  # int8 (100 kB, 75 %) is beaten
    assert set(seen["titles"]) == {"cifar10 resnet", "mnist mlp-50"}
    # No tflm.csv: no star.
    mcu_figure(_data(tmp_path / "none", RESULTS), tmp_path / "figures2")
    assert not any(label.startswith("TFLM") for label in seen["lines"]["cifar10 resnet"])
