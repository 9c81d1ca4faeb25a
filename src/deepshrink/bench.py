"""`deepshrink bench`: time one artifact on its dataset's test set."""

from pathlib import Path
from typing import Any

from deepshrink.checkpoint import load_checkpoint, paths_for
from deepshrink.data import load_dataset
from deepshrink.errors import UserError
from deepshrink.export import Artifact, ort_runner, torch_runner
from deepshrink.measure.latency import LatencyConfig, measure_latency
from deepshrink.progress import Progress


def _dataset_of_onnx(path: Path) -> str:
    """An exported ONNX sits beside its checkpoint manifest (artifacts/<variant>/model.*)."""
    _, meta = paths_for(path)
    if not meta.exists():
        raise UserError(f"{path}: no manifest {meta.name} beside it to tell which dataset to time on")
    from deepshrink.checkpoint import read_manifest

    return read_manifest(meta).dataset


def bench_artifact(path: Path, runtime: str, threads: int, batch: int, data_dir: Path | None, device: str,
                   quiet: bool) -> list[dict[str, Any]]:
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if runtime not in ("torch", "onnxruntime"):
        raise UserError(f"--runtime {runtime!r}: expected torch or onnxruntime")
    if path.suffix == ".onnx":
        if runtime != "onnxruntime":
            raise UserError(f"{path}: an ONNX file runs with --runtime onnxruntime")
        art = Artifact(path, "onnx", "unknown", runners={"onnxruntime": ort_runner(path)})
        dataset = _dataset_of_onnx(path)
    elif path.suffix in (".safetensors", ".json"):
        model, manifest = load_checkpoint(path)
        if runtime != "torch":
            raise UserError(f"{path}: a checkpoint runs with --runtime torch (export it for onnxruntime)")
        art = Artifact(path, "checkpoint", "fp32", runners={"torch": torch_runner(model)})
        dataset = manifest.dataset
    else:
        raise UserError(f"{path}: expected an .onnx file or a .safetensors checkpoint")
    data = load_dataset(dataset, data_dir)
    cfg = LatencyConfig(runtimes=(runtime,), threads=(threads,), batch=batch, devices=(device,))
    with Progress(enabled=not quiet) as progress:
        return measure_latency([(path.name, art)], data.test_x.numpy(), cfg, progress)
