"""Opening a compact file deepshrink wrote (`.dsparse`, `.dsq`, `.dsz`): the model its manifest names,
rebuilt to the decoded tensors' shapes and holding them. `deepshrink bench` times that model; the
microcontroller target quantizes it and runs its weights in place."""

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from deepshrink.checkpoint import Manifest, read_manifest
from deepshrink.errors import UserError, malformed
from deepshrink.export.dsz import decode_state as decode_dsz
from deepshrink.export.packed import decode as decode_packed
from deepshrink.export.sparse import decode_state as decode_sparse
from deepshrink.models import create_model, shrink_to

DECODERS: dict[str, Callable[[bytes, str], dict[str, torch.Tensor]]] = {
    ".dsparse": decode_sparse, ".dsq": decode_packed, ".dsz": decode_dsz,
}


def manifest_beside(path: Path) -> Path:
    """artifacts/<variant>/model.onnx, model.dsq, model.decoded.onnx ... all sit beside model.json."""
    for cand in (path.with_suffix(".json"), path.with_name(f"{path.name.split('.')[0]}.json")):
        if cand.is_file():
            return cand
    raise UserError(f"{path}: no manifest {path.with_suffix('.json').name} beside it to tell which dataset and "
                    "model it holds")


def decoded_model(path: Path, state: dict[str, torch.Tensor]) -> tuple[nn.Module, Manifest]:
    """The manifest's model rebuilt to the decoded tensors' shapes, holding them."""
    manifest = read_manifest(manifest_beside(path))
    model = create_model(manifest.model, tuple(manifest.input_shape), manifest.num_classes, **manifest.model_args)
    with malformed(path, f"file for model {manifest.model!r} (its tensors do not fit it)"):
        shrink_to(model, {k: list(v.shape) for k, v in state.items()})
        model.load_state_dict(state)
    return model.eval(), manifest


def open_compact(path: Path) -> tuple[nn.Module, Manifest]:
    """A `.dsparse`, `.dsq` or `.dsz` file's decoded model and manifest."""
    return decoded_model(path, DECODERS[path.suffix](path.read_bytes(), str(path)))
