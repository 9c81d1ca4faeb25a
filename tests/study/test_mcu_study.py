"""A study with `[measure] mcu`: every INT8 and compact variant is built for the Cortex-M4 and emulated, its
figures land in its results.csv row, and the report gains "On a microcontroller"."""

from pathlib import Path

from deepshrink.errors import UserError
from deepshrink.results import read_rows
from deepshrink.study.recipe import validate
from deepshrink.study.run import run_study

RECIPE = """
name = "mcu-smoke"
description = "tiny"
expected_minutes = 0.1
[study]
datasets = ["mnist"]
models = ["mlp-50"]
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
mcu = "cortex-m4"
[[pipeline]]
name = "int8"
steps = ["quantize:precision=int8,method=ptq,deploy=full"]
[[pipeline]]
name = "deep-compression"
steps = ["prune.unstructured:sparsity=0.9,epochs=1", "cluster:bits=4,epochs=1", "encode"]
"""


def test_study_measures_int8_and_compact_variants_on_the_microcontroller(tmp_path: Path, mnist_dir: Path) -> None:
    recipe = tmp_path / "mcu.toml"
    recipe.write_text(RECIPE)
    out = tmp_path / "run"
    run_study(str(recipe), out, mnist_dir, "cpu", quiet=True)
    rows = {r["label"]: r for r in read_rows(out / "results.csv")}
    assert all(r["status"] == "ok" for r in rows.values()), {k: r["status"] for k, r in rows.items()}
    assert not rows["baseline"].get("mcu_flash_bytes")  # FP32: nothing to build
    for label in ("int8", "deep-compression"):
        r = rows[label]
        assert int(r["mcu_emulated_identical"]) == int(r["mcu_emulated_images"]) > 0
        assert float(r["mcu_match_ort_pct"]) == 100.0 and float(r["mcu_logits_exact_pct"]) == 100.0
    dc = rows["deep-compression"]
    assert "sparse" in dc["mcu_layouts"]
    assert int(dc["mcu_flash_bytes"]) < int(dc["mcu_dense_flash_bytes"])
    assert int(dc["mcu_instructions"]) < int(dc["mcu_dense_instructions"])
    assert (out / "artifacts" / dc["variant"] / "mcu" / "model.c").is_file()
    report = (out / "report.md").read_text()
    assert "On a microcontroller" in report and "mcu_flash_accuracy.png" in report


def test_unknown_target_is_refused() -> None:
    try:
        validate({"name": "x", "measure": {"mcu": "avr"}}, "r.toml")
    except UserError as e:
        assert "measure.mcu" in str(e) and "avr" in str(e)
    else:
        raise AssertionError("an unknown target was accepted")
