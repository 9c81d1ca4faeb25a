"""`deepshrink bench`: time one artifact on its dataset's test set: a file deepshrink wrote (its manifest
says the dataset) or any ONNX classifier given `dataset`."""

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepshrink.checkpoint import build_model, load_checkpoint, paths_for, read_manifest
from deepshrink.data import load_dataset
from deepshrink.errors import UserError
from deepshrink.export import Artifact
from deepshrink.export.dsonnx import unpack_onnx
from deepshrink.export.dsz import load_dsz_into
from deepshrink.export.floating import export_onnx
from deepshrink.export.runners import ort_runner, torch_runner
from deepshrink.export.sparse import load_sparse_into
from deepshrink.measure.latency import LatencyConfig, measure_latency
from deepshrink.progress import Progress

# Weight files decoded into the model their manifest (beside them) describes.
DECODERS: dict[str, Callable[[nn.Module, Path], nn.Module]] = {".dsz": load_dsz_into, ".dsparse": load_sparse_into}


def _dataset_of_onnx(path: Path) -> str:
    """An exported ONNX sits beside its checkpoint manifest (artifacts/<variant>/model.*)."""
    _, meta = paths_for(path)
    if not meta.exists():
        raise UserError(f"{path}: no manifest {meta.name} beside it to tell which dataset to time on")
    return read_manifest(meta).dataset


def bench_artifact(path: Path, runtime: str, threads: int, batch: int, data_dir: Path | None, device: str,
                   quiet: bool, dataset: str | None = None) -> list[dict[str, Any]]:
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if runtime not in ("torch", "onnxruntime"):
        raise UserError(f"--runtime {runtime!r}: expected torch or onnxruntime")
    if path.suffix in (".onnx", ".dsonnx"):
        if runtime != "onnxruntime":
            raise UserError(f"{path}: an ONNX file runs with --runtime onnxruntime")
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = _unpacked(path, Path(tmp)) if path.suffix == ".dsonnx" else path
            _check_batch_axis(onnx_path, path)
            art = Artifact(path, "onnx", "unknown", runners={"onnxruntime": ort_runner(onnx_path)})
            return _time(art, path, dataset or _dataset_of_onnx(path), runtime, threads, batch, data_dir, device,
                         quiet)
    elif path.suffix in DECODERS:
        with tempfile.TemporaryDirectory() as tmp:
            art, own = _decoded(path, runtime, Path(tmp))
            return _time(art, path, dataset or own, runtime, threads, batch, data_dir, device, quiet)
    elif path.suffix in (".safetensors", ".json"):
        model, manifest = load_checkpoint(path)
        if runtime != "torch":
            raise UserError(f"{path}: a checkpoint runs with --runtime torch (export it for onnxruntime)")
        art = Artifact(path, "checkpoint", "fp32", runners={"torch": torch_runner(model)})
        dataset = dataset or manifest.dataset
    else:
        raise UserError(f"{path}: expected an .onnx, .dsonnx, .dsz or .dsparse file or a .safetensors checkpoint")
    return _time(art, path, dataset, runtime, threads, batch, data_dir, device, quiet)


def _check_batch_axis(onnx_path: Path, path: Path) -> None:
    """Timing feeds batches: an input exported with a fixed batch size (torch.onnx.export's default
    without dynamic_axes) cannot take them, whatever the image shape."""
    import onnx

    try:
        m = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends: not an ONNX file
        raise UserError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None
    inits = {t.name for t in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in inits]
    dims = inputs[0].type.tensor_type.shape.dim if inputs else []
    if dims and dims[0].HasField("dim_value"):
        raise UserError(f"{path}: input {inputs[0].name!r} has a fixed batch size of {dims[0].dim_value}; export "
                        "it with a dynamic batch axis (torch.onnx.export(..., dynamic_axes={NAME: {0: 'batch'}}))")


def _decoded(path: Path, runtime: str, folder: Path) -> tuple[Artifact, str]:
    """(artifact running the model decoded from a weight file, its dataset): the model is the one the
    manifest beside the file names; ONNX Runtime runs a float ONNX export of it, as the study does."""
    manifest = read_manifest(path)
    model = DECODERS[path.suffix](build_model(manifest), path)
    if runtime == "torch":
        runner = torch_runner(model)
    else:
        example = torch.zeros(1, *manifest.input_shape)
        runner = ort_runner(export_onnx(model, folder / f"{path.stem}.onnx", example))
    return Artifact(path, path.suffix[1:], "fp32", runners={runtime: runner}), manifest.dataset


def _unpacked(path: Path, folder: Path) -> Path:
    """The ONNX model a packed (.dsonnx) file holds, written where ONNX Runtime can load it."""
    out = folder / f"{path.stem}.onnx"
    out.write_bytes(unpack_onnx(path.read_bytes(), str(path)))
    return out


def _time(art: Artifact, path: Path, dataset: str, runtime: str, threads: int, batch: int, data_dir: Path | None,
          device: str, quiet: bool) -> list[dict[str, Any]]:
    data = load_dataset(dataset, data_dir)
    x = data.test_x[:2].numpy().astype(art.input_dtype)
    try:
        out = art.runners[runtime](1, "cpu")(x)
    except Exception as e:  # a foreign model with another input shape or dtype: the runtime's own error type
        raise UserError(f"{path}: does not run on {dataset}'s images {list(x.shape[1:])} "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    if out.ndim != 2 or out.shape[1] != data.num_classes:
        raise UserError(f"{path}: outputs {list(out.shape)} for 2 images; {dataset} has {data.num_classes} classes")
    cfg = LatencyConfig(runtimes=(runtime,), threads=(threads,), batch=batch, devices=(device,))
    with Progress(enabled=not quiet) as progress:
        return measure_latency([(path.name, art)], data.test_x.numpy(), cfg, progress)
