"""`deepshrink bench` (bench_artifact): times a trained run's ONNX, packed ONNX or checkpoint on its
dataset's test set; bad paths, suffixes and runtimes are user errors."""

import shutil
from pathlib import Path

import pytest
import torch

import deepshrink as ds
from deepshrink.api.artifact import bench_artifact
from deepshrink.checkpoint import load_checkpoint
from deepshrink.errors import UserError
from deepshrink.export.exporters.dsparse import write_sparse
from deepshrink.export.formats import dsonnx
from deepshrink.measure.latency import LatencyConfig

from conftest import write_mnist_folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(data dir, model.onnx, model.safetensors) of a one-epoch baseline on the mnist_dir layout."""
    root = tmp_path_factory.mktemp("bench")
    data_dir = root / "data"
    write_mnist_folder(data_dir / "mnist")  # what the mnist_dir fixture writes
    out = root / "run"
    row = ds.train("lenet-300-100", "mnist", epochs=1, out=out, data_dir=data_dir, device="cpu",
                   latency=LatencyConfig(runtimes=("onnxruntime",), threads=(1,), repeats=1, single_calls=5)).row
    return data_dir, out / row["artifact"], out / row["checkpoint"]


def _check_rows(rows: list[dict], variant: str, runtime: str, batch: int) -> None:  # type: ignore[type-arg]
    assert [(r["variant"], r["runtime"], r["device"], r["threads"], r["batch"]) for r in rows] == [
        (variant, runtime, "cpu", 1, batch), (variant, runtime, "cpu", 1, 1)]  # the batch, then batch 1
    for r in rows:
        assert 0 < r["us_per_image_min"] <= r["us_per_image_median"] <= r["us_per_image_max"]
        assert r["speedup"] == 1.0 and r["reference"] == variant


def test_bench_onnx(trained: tuple[Path, Path, Path]) -> None:
    data_dir, onnx_path, _ = trained
    assert onnx_path.suffix == ".onnx"
    _check_rows(bench_artifact(onnx_path, "onnxruntime", 1, 32, data_dir, "cpu", True), "model.onnx",
                "onnxruntime", 32)


@pytest.mark.parametrize("suffix", [".safetensors", ".json"])
def test_bench_checkpoint(trained: tuple[Path, Path, Path], suffix: str) -> None:
    data_dir, _, ckpt = trained
    path = ckpt.with_suffix(suffix)
    _check_rows(bench_artifact(path, "torch", 1, 64, data_dir, "cpu", True), path.name, "torch", 64)


def test_bench_dsonnx(trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    data_dir, onnx_path, _ = trained
    packed = onnx_path.with_name("packed.dsonnx")
    packed.write_bytes(dsonnx.encode(onnx_path.read_bytes()))
    shutil.copy(onnx_path.with_suffix(".json"), packed.with_suffix(".json"))  # its manifest names the dataset
    try:
        _check_rows(bench_artifact(packed, "onnxruntime", 1, 256, data_dir, "cpu", True), "packed.dsonnx",
                    "onnxruntime", 256)
    finally:
        packed.unlink()
        packed.with_suffix(".json").unlink()


def test_bad_input_is_a_user_error(trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    data_dir, onnx_path, _ = trained

    def bench(path: Path, runtime: str) -> None:
        bench_artifact(path, runtime, 1, 256, data_dir, "cpu", True)

    with pytest.raises(UserError, match=r"nope\.onnx: no such file"):
        bench(tmp_path / "nope.onnx", "onnxruntime")
    weird = tmp_path / "model.pt"
    weird.write_bytes(b"x")
    with pytest.raises(UserError, match=r"model\.pt: expected one of \.onnx, \.dsonnx, \.dsparse, \.dsq"):
        bench(weird, "torch")
    with pytest.raises(UserError, match="--runtime 'tensorrt'"):
        bench(onnx_path, "tensorrt")
    with pytest.raises(UserError, match="runs with --runtime onnxruntime"):
        bench(onnx_path, "torch")
    lone = tmp_path / "lone.onnx"
    shutil.copy(onnx_path, lone)
    with pytest.raises(UserError, match=r"no manifest lone\.json beside it"):
        bench(lone, "onnxruntime")


@pytest.mark.parametrize("runtime", ["sparse", "onnxruntime"])
def test_bench_sparse_file(trained: tuple[Path, Path, Path], runtime: str) -> None:
    data_dir, _, ckpt = trained
    model, _ = load_checkpoint(ckpt)
    with torch.no_grad():  # 90 % pruned, as a prune step leaves it
        for p in model.parameters():
            p[p.abs() < p.abs().flatten().quantile(0.9)] = 0.0
    path = write_sparse(model, ckpt.with_suffix(".dsparse"))  # beside the manifest that names its model
    try:
        _check_rows(bench_artifact(path, runtime, 1, 64, data_dir, "cpu", True), path.name, runtime, 64)
    finally:
        path.unlink()


def _beside(ckpt: Path, path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    shutil.copy(ckpt.with_suffix(".json"), path.with_suffix(".json"))
    return path


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_bench_opens_every_format_deepshrink_writes(trained: tuple[Path, Path, Path], tmp_path: Path,
                                                    runtime: str) -> None:
    """.dsparse and .dsq are decoded into the manifest's model; a checkpoint runs in either runtime."""
    import torch

    from deepshrink.checkpoint import load_checkpoint
    from deepshrink.export.exporters.dsparse import sparse_weight_keys
    from deepshrink.export.formats import dsparse
    from deepshrink.export.formats.dsq import encode

    data_dir, _, ckpt = trained
    model, _ = load_checkpoint(ckpt)
    steps = {f"{n}.weight": torch.full((m.weight.shape[0],), 0.01) for n, m in model.named_modules()
             if hasattr(m, "weight")}
    files = [_beside(ckpt, tmp_path / "model.dsparse",
                     dsparse.encode(model.state_dict(), sparse_weight_keys(model))),
             _beside(ckpt, tmp_path / "w4.dsq", encode(model.state_dict(), 4, steps)), ckpt]
    for path in files:
        _check_rows(bench_artifact(path, runtime, 1, 128, data_dir, "cpu", True), path.name, runtime, 128)


def test_corrupt_compact_files_are_one_user_error(trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    data_dir, _, ckpt = trained
    for name in ("model.dsparse", "model.dsq", "model.dsonnx"):
        path = _beside(ckpt, tmp_path / name, b"DSPARSE1\xff\xff\xff\x7fgarbage")
        with pytest.raises(UserError, match=name.replace(".", r"\.")):
            bench_artifact(path, "torch", 1, 64, data_dir, "cpu", True)
    lone = tmp_path / "lone.dsparse"
    lone.write_bytes(_sparse_of(ckpt))
    with pytest.raises(UserError, match=r"lone\.dsparse: no manifest lone\.json"):
        bench_artifact(lone, "torch", 1, 64, data_dir, "cpu", True)


def _sparse_of(ckpt: Path) -> bytes:
    from deepshrink.checkpoint import load_checkpoint
    from deepshrink.export.exporters.dsparse import sparse_weight_keys
    from deepshrink.export.formats import dsparse

    model, _ = load_checkpoint(ckpt)
    return dsparse.encode(model.state_dict(), sparse_weight_keys(model))
