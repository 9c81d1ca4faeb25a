"""`deepshrink bench`: time one artifact on its dataset's test set. Every format deepshrink writes opens
here — `.onnx`, `.dsonnx`, `.dsparse`, `.dsq`, checkpoints (`.safetensors` / `.json`) — plus any ONNX
classifier given `dataset`. A compact file is decoded first: what is timed is the model it holds.
"""

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepshrink.checkpoint import load_checkpoint, read_manifest
from deepshrink.data import DataSplits, load_dataset
from deepshrink.data.normalize import Norm, parse_normalize, renormalize
from deepshrink.errors import UserError
from deepshrink.export import Artifact, sparse_runtime
from deepshrink.export.compact import manifest_beside, open_compact
from deepshrink.export.dsonnx import unpack_onnx
from deepshrink.export.floating import export_onnx
from deepshrink.export.onnx_file import fixed_batch, read_onnx
from deepshrink.export.runners import onnx_runners, torch_runner
from deepshrink.measure.latency import RUNTIMES, LatencyConfig, measure_latency
from deepshrink.progress import Progress

Opened = tuple[Path | nn.Module, str | None]  # (an ONNX file or a decoded model, the dataset its manifest names)


def _open_onnx(path: Path, tmp: Path) -> Opened:
    model = read_onnx(path.read_bytes(), str(path))
    if (fixed := fixed_batch(model)) is not None:
        raise UserError(f"{path}: input {fixed[0]!r} has a fixed batch size of {fixed[1]}; export it with a dynamic "
                        "batch axis (torch.onnx.export(..., dynamic_axes={NAME: {0: 'batch'}}))")
    return path, None


def _open_dsonnx(path: Path, tmp: Path) -> Opened:
    out = tmp / f"{path.stem}.onnx"
    out.write_bytes(unpack_onnx(path.read_bytes(), str(path)))
    return _open_onnx(out, tmp)[0], None


def _open_compact(path: Path, tmp: Path) -> Opened:
    model, manifest = open_compact(path)
    return model, manifest.dataset


def _open_checkpoint(path: Path, tmp: Path) -> Opened:
    model, manifest = load_checkpoint(path)
    return model, manifest.dataset


OPENERS: dict[str, Callable[[Path, Path], Opened]] = {
    ".onnx": _open_onnx, ".dsonnx": _open_dsonnx, ".dsparse": _open_compact, ".dsq": _open_compact,
    ".dsz": _open_compact,
    ".safetensors": _open_checkpoint, ".json": _open_checkpoint,
}


def bench_artifact(path: Path, runtime: str, threads: int, batch: int, data_dir: Path | None, device: str,
                   quiet: bool, dataset: str | None = None, normalize: str | None = None) -> list[dict[str, Any]]:
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if runtime not in RUNTIMES:
        raise UserError(f"--runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    if path.suffix not in OPENERS:
        raise UserError(f"{path}: expected one of {', '.join(OPENERS)} (a file deepshrink writes, or any ONNX "
                        "classifier with --dataset)")
    with tempfile.TemporaryDirectory() as tmp:
        opened, named = OPENERS[path.suffix](path, Path(tmp))
        if isinstance(opened, Path):
            runners = onnx_runners(opened)
            if runtime not in runners:
                raise UserError(f"{path}: an ONNX file runs with --runtime {' or '.join(runners)}")
            art = Artifact(path, "onnx", "unknown", runners=runners)
            dataset = dataset or read_manifest(manifest_beside(path)).dataset
        else:
            dataset = dataset or named
            assert dataset is not None
            runners = {"torch": torch_runner(opened)}
            if runtime in ("onnxruntime", "openvino"):  # the decoded model as an ONNX runtime runs it: a float copy
                example = torch.zeros(1, *read_manifest(manifest_beside(path)).input_shape)
                runners.update(onnx_runners(export_onnx(opened, Path(tmp) / "decoded.onnx", example)))
            if runtime == "sparse":  # compaction + sparse kernels, calibrated on training images
                train_x = load_dataset(dataset, data_dir, allow_empty_classes=True).train_x
                net = sparse_runtime.build(opened, train_x[:512].numpy())
                if net is None:
                    raise UserError(f"{path}: no sparse runtime for this model (it runs chains of Linear layers)")
                runners["sparse"] = sparse_runtime.sparse_runner(net)
            if runtime not in runners:
                raise UserError(f"{path}: runs with --runtime {' or '.join(runners)}")
            art = Artifact(path, path.suffix.lstrip("."), "fp32", runners=runners)
        data = renormalize(load_dataset(dataset, data_dir, allow_empty_classes=True), _norm(path, normalize))
        return _time(art, path, data, runtime, threads, batch, device, quiet)


def _norm(path: Path, normalize: str | None) -> Norm | None:
    """The model's preprocessing: `--normalize`, else its manifest's, else (None) the data's own statistics."""
    if normalize:
        return parse_normalize(normalize)
    try:
        manifest = read_manifest(manifest_beside(path))
    except UserError:  # a foreign ONNX file: no manifest beside it
        return None
    return manifest.mean, manifest.std


def _time(art: Artifact, path: Path, data: DataSplits, runtime: str, threads: int, batch: int, device: str,
          quiet: bool) -> list[dict[str, Any]]:
    dataset = data.name
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
