"""A study with `[measure] mcu`: every INT8 and compact variant is built for the Cortex-M4 and emulated, its
figures land in its results.csv row, and the report gains "On a microcontroller"."""

import importlib.util
from pathlib import Path

import pytest

from deepshrink.errors import UserError
from deepshrink.results import read_rows
from deepshrink.study.recipe import validate
from deepshrink.study.run import run_study

from conftest import write_mnist_folder

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


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(recipe, data dir, run directory) of the study on the local executor."""
    root = tmp_path_factory.mktemp("mcu-study")
    write_mnist_folder(root / "data" / "mnist")
    recipe = root / "mcu.toml"
    recipe.write_text(RECIPE)
    run_study(str(recipe), root / "run", root / "data", "cpu", quiet=True)
    return recipe, root / "data", root / "run"


def test_study_measures_int8_and_compact_variants_on_the_microcontroller(local_run: tuple[Path, Path, Path]) -> None:
    out = local_run[2]
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


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed (pip install -e .[ray])")
def test_the_ray_executor_carries_the_microcontroller_columns(local_run: tuple[Path, Path, Path],
                                                              tmp_path: Path) -> None:
    import ray

    recipe, data, local = local_run
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run_study(str(recipe), tmp_path / "ray", data, "cpu", quiet=True, executor="ray")
    finally:
        ray.shutdown()

    def mcu(run: Path) -> dict[str, dict[str, str]]:
        return {r["variant"]: {k: v for k, v in r.items()  # all but the machine's: compilers, wall time
                               if k.startswith("mcu_") and "compiler" not in k and k != "mcu_seconds"}
                for r in read_rows(run / "results.csv")}

    assert mcu(tmp_path / "ray") == mcu(local) and any(any(v.values()) for v in mcu(local).values())
    assert all(float(r["mcu_seconds"]) > 0 for r in read_rows(local / "results.csv") if r.get("mcu_flash_bytes"))
    dc = next(r for r in read_rows(tmp_path / "ray" / "results.csv") if r["label"] == "deep-compression")
    assert (tmp_path / "ray" / "artifacts" / dc["variant"] / "mcu" / "firmware.elf").is_file()


def test_unknown_target_is_refused() -> None:
    try:
        validate({"name": "x", "measure": {"mcu": "avr"}}, "r.toml")
    except UserError as e:
        assert "measure.mcu" in str(e) and "avr" in str(e)
    else:
        raise AssertionError("an unknown target was accepted")
