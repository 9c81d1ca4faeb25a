"""Checkpoints: safetensors weights + a JSON manifest (architecture, shapes, preprocessing, history).

Never unpickled: the manifest names a registry model or a model reference (with its arguments and
its source file's sha256) and the parameter shapes, so structurally pruned models rebuild to the
stored shapes and load a plain state_dict.
"""

import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from deepshrink.errors import UserError
from deepshrink.models import create_model, is_reference, layer_shapes, reference_file, shrink_to, source_sha256

FORMAT = "deepshrink.checkpoint/1"


@dataclass
class Manifest:
    model: str
    dataset: str
    input_shape: list[int]
    num_classes: int
    mean: list[float]
    std: list[float]
    shapes: dict[str, list[int]] = field(default_factory=dict)
    pipeline: list[str] = field(default_factory=list)
    train: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # technique-specific facts (e.g. quantized: true)
    format: str = FORMAT
    model_args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of a referenced model
    model_sha256: str = ""  # sha256 of a referenced model's source file when it was saved

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def paths_for(path: Path) -> tuple[Path, Path]:
    """(weights, manifest) for a path given as X, X.safetensors or X.json."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def save_checkpoint(model: nn.Module, manifest: Manifest, path: Path) -> Path:
    weights, meta = paths_for(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    manifest.shapes = layer_shapes(model)
    if is_reference(manifest.model) and not manifest.model_sha256:
        manifest.model_sha256 = source_sha256(manifest.model)
    weights.parent.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_name(f".{weights.name}.tmp")
    save_file(state, str(tmp), metadata={"format": FORMAT})
    os.replace(tmp, weights)
    atomic_write_bytes(meta, json.dumps(manifest.to_dict(), indent=2).encode())
    return weights


def read_manifest(path: Path) -> Manifest:
    _, meta = paths_for(path)
    try:
        raw = json.loads(meta.read_text())
    except FileNotFoundError:
        raise UserError(f"{meta}: checkpoint manifest not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{meta}: not a valid JSON manifest ({e})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise UserError(f"{meta}: not a deepshrink checkpoint manifest (format != {FORMAT})")
    try:
        return Manifest(**raw)
    except TypeError as e:
        raise UserError(f"{meta}: manifest has unexpected or missing keys ({e})") from None


def load_checkpoint(path: Path) -> tuple[nn.Module, Manifest]:
    """Rebuild the model named by the manifest, shrink it to the stored shapes, load the weights."""
    weights, meta = paths_for(path)
    manifest = read_manifest(path)
    try:
        state = load_file(str(weights))
    except FileNotFoundError:
        raise UserError(f"{weights}: checkpoint weights not found") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{weights}: not a readable safetensors file ({e})") from None
    declared = {k: list(v) for k, v in manifest.shapes.items()}
    actual = {k: list(v.shape) for k, v in state.items()}
    if declared != actual:
        diff = sorted(k for k in set(declared) | set(actual) if declared.get(k) != actual.get(k))
        raise UserError(f"{weights}: tensors do not match manifest {meta.name} (differs at {', '.join(diff[:3])})")
    model = build_model(manifest)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as e:
        raise UserError(f"{weights}: weights do not fit model {manifest.model!r} ({str(e).splitlines()[0]})") from None
    return model.eval(), manifest


def build_model(manifest: Manifest) -> nn.Module:
    """The manifest's model, untrained, shrunk to its stored shapes: what a weight file loads into."""
    _check_source(manifest)
    model = create_model(manifest.model, tuple(manifest.input_shape), manifest.num_classes, **manifest.model_args)
    return shrink_to(model, {k: list(v) for k, v in manifest.shapes.items()})


def _check_source(manifest: Manifest) -> None:
    """A referenced model's file must exist; a changed one is worth a warning (the weights may not fit)."""
    path = reference_file(manifest.model) if is_reference(manifest.model) else None
    if path is None:
        return
    if not path.is_file():
        raise UserError(f"{path}: model source file not found (checkpoint model {manifest.model!r})")
    if manifest.model_sha256 and source_sha256(manifest.model) != manifest.model_sha256:
        warnings.warn(f"{path}: model source changed since the checkpoint was saved", stacklevel=3)


def load_state(path: Path) -> dict[str, torch.Tensor]:
    weights, _ = paths_for(path)
    return load_file(str(weights))
