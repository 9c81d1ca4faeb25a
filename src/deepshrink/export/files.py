"""Opening a file deepshrink wrote, by its suffix: the one table `deepshrink bench`, the microcontroller
target and the API read artifacts through.

An ONNX file (`.onnx`, `.dsonnx`) opens as the ONNX bytes it holds, parsed and checked once; a compressed
file (`.dsparse`, `.dsq`, `.dsz`) as the model its manifest names, rebuilt to the decoded tensors' shapes and
holding them; a checkpoint (`.safetensors` / `.json`) as its model. The manifest beside the file (model.json:
dataset, model, normalization) comes along where there is one; a foreign ONNX file has none.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from onnx import ModelProto
from torch import nn

from deepshrink.checkpoint import Manifest, load_checkpoint, read_manifest
from deepshrink.errors import UserError, malformed
from deepshrink.export.formats import dsonnx, dsparse, dsq, dsz
from deepshrink.ingest.onnx_file import read_onnx
from deepshrink.models import create_model, shrink_to


@dataclass
class Opened:
    """What a file holds: ONNX bytes (and the model they parse to) or a decoded model, and the manifest beside
    it (None for a foreign file)."""

    path: Path
    onnx: bytes | None = None
    graph: ModelProto | None = None
    model: nn.Module | None = None
    manifest: Manifest | None = None

    @property
    def compressed(self) -> bool:
        """A compressed file (`.dsparse`, `.dsq`, `.dsz`): its weights decoded into `model`."""
        return self.path.suffix in DECODERS


Opener = Callable[[Path], Opened]
DECODERS: dict[str, Callable[[bytes, str], dict[str, torch.Tensor]]] = {
    ".dsparse": dsparse.decode, ".dsq": dsq.decode, ".dsz": dsz.decode,
}


def find_manifest(path: Path) -> Path | None:
    """artifacts/<variant>/model.onnx, model.dsq, model.decoded.onnx ... all sit beside model.json."""
    for cand in (path.with_suffix(".json"), path.with_name(f"{path.name.split('.')[0]}.json")):
        if cand.is_file():
            return cand
    return None


def manifest_beside(path: Path) -> Path:
    """The manifest beside `path`, or one line saying there is none."""
    found = find_manifest(path)
    if found is None:
        raise UserError(f"{path}: no manifest {path.with_suffix('.json').name} beside it to tell which dataset "
                        "and model it holds")
    return found


def _manifest(path: Path) -> Manifest | None:
    found = find_manifest(path)
    return read_manifest(found) if found else None


def _onnx_bytes(path: Path, data: bytes) -> Opened:
    # any malformation: one line naming the file
    return Opened(path, onnx=data, graph=read_onnx(data, str(path)), manifest=_manifest(path))


def _onnx(path: Path) -> Opened:
    return _onnx_bytes(path, path.read_bytes())


def _dsonnx(path: Path) -> Opened:
    return _onnx_bytes(path, dsonnx.decode(path.read_bytes(), str(path)))


def decoded_model(path: Path, state: dict[str, torch.Tensor]) -> tuple[nn.Module, Manifest]:
    """The manifest's model rebuilt to the decoded tensors' shapes, holding them."""
    manifest = read_manifest(manifest_beside(path))
    model = create_model(manifest.model, tuple(manifest.input_shape), manifest.num_classes, **manifest.model_args)
    with malformed(path, f"file for model {manifest.model!r} (its tensors do not fit it)"):
        shrink_to(model, {k: list(v.shape) for k, v in state.items()})
        model.load_state_dict(state)
    return model.eval(), manifest


def _compressed(path: Path) -> Opened:
    model, manifest = decoded_model(path, DECODERS[path.suffix](path.read_bytes(), str(path)))
    return Opened(path, model=model, manifest=manifest)


def _checkpoint(path: Path) -> Opened:
    model, manifest = load_checkpoint(path)
    return Opened(path, model=model, manifest=manifest)


OPENERS: dict[str, Opener] = {
    ".onnx": _onnx, ".dsonnx": _dsonnx, ".dsparse": _compressed, ".dsq": _compressed, ".dsz": _compressed,
    ".safetensors": _checkpoint, ".json": _checkpoint,
}


def open_artifact(path: Path, suffixes: tuple[str, ...] = tuple(OPENERS),
                  what: str = "a file deepshrink wrote") -> Opened:
    """The file opened by its suffix; `suffixes` narrows what the caller takes (`what` says it in words). A
    missing file, a suffix outside them, or a malformed file is one UserError naming it."""
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if path.suffix not in suffixes:
        raise UserError(f"{path}: expected one of {', '.join(suffixes)} ({what})")
    return OPENERS[path.suffix](path)
