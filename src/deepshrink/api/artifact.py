"""`bench`: time one artifact on its dataset's test set. Every format deepshrink writes opens
here — `.onnx`, `.dsonnx`, `.dsparse`, `.dsq`, checkpoints (`.safetensors` / `.json`) — plus any ONNX
classifier given `dataset`. A compressed file is decoded first: what is timed is the model it holds.
"""

import tempfile
from pathlib import Path
from typing import Any

import torch

from deepshrink.api.model import Result
from deepshrink.checkpoint import read_manifest
from deepshrink.data import DataSplits, load_dataset
from deepshrink.data.normalize import Norm, parse_normalize, renormalize
from deepshrink.errors import UserError
from deepshrink.export import Artifact
from deepshrink.export.files import OPENERS, Opened, find_manifest, open_artifact
from deepshrink.export.formats.onnx_float import export_onnx
from deepshrink.export.runtimes import onnx_runners, sparse, torch_runner
from deepshrink.ingest.onnx_file import fixed_batch
from deepshrink.measure.latency import RUNTIMES, LatencyConfig, measure_latency
from deepshrink.progress import Progress

READER = "a file deepshrink writes, or any ONNX classifier with --dataset"


def _onnx_file(opened: Opened, tmp: Path) -> Path:
    """The ONNX file the runtimes load: the file itself, or what a .dsonnx decodes to. A fixed batch size is
    refused (the study's method times batches of 256)."""
    assert opened.onnx is not None and opened.graph is not None
    if (fixed := fixed_batch(opened.graph)) is not None:
        raise UserError(f"{opened.path}: input {fixed[0]!r} has a fixed batch size of {fixed[1]}; export it with a "
                        "dynamic batch axis (torch.onnx.export(..., dynamic_axes={NAME: {0: 'batch'}}))")
    if opened.path.suffix == ".onnx":
        return opened.path
    out = tmp / f"{opened.path.stem}.onnx"
    out.write_bytes(opened.onnx)
    return out


def _model_runners(opened: Opened, runtime: str, dataset: str, data_dir: Path | None,
                   tmp: Path) -> dict[str, Any]:
    """A decoded model's runtimes: torch; an ONNX runtime on a float copy of it; the sparse kernels."""
    assert opened.model is not None and opened.manifest is not None
    runners: dict[str, Any] = {"torch": torch_runner(opened.model)}
    if runtime in ("onnxruntime", "openvino"):
        example = torch.zeros(1, *opened.manifest.input_shape)
        runners.update(onnx_runners(export_onnx(opened.model, tmp / "decoded.onnx", example)))
    if runtime == "sparse":  # compaction + sparse kernels, calibrated on training images
        train_x = load_dataset(dataset, data_dir, allow_empty_classes=True).train_x
        net = sparse.build(opened.model, train_x[:512].numpy())
        if net is None:
            raise UserError(f"{opened.path}: no sparse runtime for this model (it runs chains of Linear layers)")
        runners["sparse"] = sparse.sparse_runner(net)
    return runners


def bench_artifact(path: Path, runtime: str, threads: int, batch: int, data_dir: Path | None, device: str,
                   quiet: bool, dataset: str | None = None, normalize: str | None = None) -> list[dict[str, Any]]:
    if runtime not in RUNTIMES:
        raise UserError(f"--runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    opened = open_artifact(path, tuple(OPENERS), READER)
    dataset = dataset or (opened.manifest.dataset if opened.manifest else None)
    if dataset is None:
        raise UserError(f"{path}: no manifest {path.with_suffix('.json').name} beside it to name its dataset; "
                        "pass --dataset")
    with tempfile.TemporaryDirectory() as tmp:
        if opened.onnx is not None:
            runners = onnx_runners(_onnx_file(opened, Path(tmp)))
            art = Artifact(path, "onnx", "unknown", runners=runners)
        else:
            runners = _model_runners(opened, runtime, dataset, data_dir, Path(tmp))
            art = Artifact(path, path.suffix.lstrip("."), "fp32", runners=runners)
        if runtime not in runners:
            raise UserError(f"{path}: runs with --runtime {' or '.join(runners)}")
        data = renormalize(load_dataset(dataset, data_dir, allow_empty_classes=True), _norm(path, normalize))
        return _time(art, path, data, runtime, threads, batch, device, quiet)


def _norm(path: Path, normalize: str | None) -> Norm | None:
    """The model's preprocessing: `--normalize`, else its manifest's, else (None) the data's own statistics."""
    if normalize:
        return parse_normalize(normalize)
    found = find_manifest(path)
    if found is None:  # a foreign ONNX file
        return None
    manifest = read_manifest(found)
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


def bench(target: "Result | str | Path", data: DataSplits | str | None = None, runtime: str = "onnxruntime",
          threads: int = 1, batch: int = 256, device: str = "cpu", quiet: bool = True,
          data_dir: str | Path | None = None, normalize: str | None = None) -> list[dict[str, Any]]:
    """Latency rows (as in latency.csv) of one artifact, batched and at batch 1: a `Result`'s artifact on
    `data`, or any file deepshrink writes (`.onnx`, `.dsonnx`, `.dsparse`, `.dsq`, `.dsz`, checkpoints) or
    any ONNX classifier on its test set (`data`, else the dataset the manifest beside it names)."""
    if isinstance(target, Result):
        if data is None:
            raise UserError("bench: pass the data to time a result on")
        splits = data if isinstance(data, DataSplits) else load_dataset(data, Path(data_dir) if data_dir else None)
        cfg = LatencyConfig(runtimes=(runtime,), threads=(threads,), batch=batch, devices=(device,))
        return measure_latency([(target.row["variant"], target.artifact)], splits.test_x.numpy(), cfg)
    name = data.name if isinstance(data, DataSplits) else data
    return bench_artifact(Path(target), runtime, threads, batch, Path(data_dir) if data_dir else None, device, quiet,
                          name, normalize)


measure = bench  # SPEC §10's name for the same verb
