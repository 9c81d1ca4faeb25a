"""Checkpoints: safetensors weights + a JSON manifest (architecture, shapes, preprocessing, history).

Never unpickled: the manifest names a registry model or a model reference (with its arguments and
its source file's sha256) and the parameter shapes, so structurally pruned models rebuild to the
stored shapes and load a plain state_dict.
"""

import errno
import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from deepshrink.errors import UserError
from deepshrink.models import (
    create_model,
    display_name,
    is_reference,
    layer_shapes,
    reference_file,
    shrink_to,
    source_sha256,
)

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
    name: str = ""  # the model's short name in ids and tables when its reference does not say it (a file's stem)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @property
    def display(self) -> str:
        """The model's short name: `name`, else the registry name or the reference's callable."""
        return self.name or display_name(self.model)


def paths_for(path: Path) -> tuple[Path, Path]:
    """(weights, manifest) for a path given as X, X.safetensors or X.json."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Temp file + rename: readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write_all(f, data)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)  # a full disk must not also fill up with our temp files
        raise disk_error(e, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_all(f: BinaryIO, data: bytes) -> None:
    """The one write of every result file (tests make it fail as a full disk would)."""
    f.write(data)


def disk_error(e: OSError, path: Path) -> Exception:
    """ENOSPC/EDQUOT are the user's to fix (free space, then rerun: the study resumes); others stay OSError."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"{path}: no space left on device; the files written so far are intact: free space "
                         "and rerun to resume")
    return e


def save_checkpoint(model: nn.Module, manifest: Manifest, path: Path) -> Path:
    weights, meta = paths_for(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    manifest.shapes = layer_shapes(model)
    if is_reference(manifest.model) and not manifest.model_sha256:
        manifest.model_sha256 = source_sha256(manifest.model)
    weights.parent.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_name(f".{weights.name}.tmp")
    try:
        save_file(state, str(tmp), metadata={"format": FORMAT})
        os.replace(tmp, weights)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise disk_error(e, weights) from None
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
        manifest = Manifest(**raw)
    except TypeError as e:
        raise UserError(f"{meta}: manifest has unexpected or missing keys ({e})") from None
    _check_types(manifest, meta)
    return manifest


def _ints(v: Any, n: int | None = None) -> bool:
    return isinstance(v, list) and (n is None or len(v) == n) and all(type(d) is int and d >= 0 for d in v)


# Every field a reader relies on, typed, with bounds that keep a hostile manifest from asking for a
# model of gigabytes before its weights are even compared with it.
_FIELDS: dict[str, Callable[[Any], bool]] = {
    "model": lambda v: isinstance(v, str) and bool(v), "dataset": lambda v: isinstance(v, str),
    "input_shape": lambda v: _ints(v, 3) and 0 < math.prod(v) <= MAX_INPUT_ELEMENTS,
    "num_classes": lambda v: type(v) is int and 2 <= v <= MAX_CLASSES,
    "mean": lambda v: isinstance(v, list) and all(isinstance(x, int | float) for x in v),
    "std": lambda v: isinstance(v, list) and all(isinstance(x, int | float) for x in v),
    "shapes": lambda v: isinstance(v, dict) and all(_ints(s) and len(s) <= 8 for s in v.values()),
    "pipeline": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "train": lambda v: isinstance(v, dict), "info": lambda v: isinstance(v, dict),
    "model_args": lambda v: isinstance(v, dict), "model_sha256": lambda v: isinstance(v, str),
    "name": lambda v: isinstance(v, str),
}
MAX_INPUT_ELEMENTS = 1 << 24
MAX_CLASSES = 1 << 20


def _check_types(manifest: Manifest, meta: Path) -> None:
    for name, ok in _FIELDS.items():
        if not ok(getattr(manifest, name)):
            raise UserError(f"{meta}: manifest field {name!r} is malformed ({str(getattr(manifest, name))[:40]})")


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
    model = build_model(manifest, meta)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except Exception as e:  # shapes the model cannot take: torch says so with RuntimeError, ValueError, ...
        first = (str(e).splitlines() or [""])[0][:160]
        raise UserError(f"{weights}: weights do not fit model {manifest.model!r} "
                        f"({type(e).__name__}: {first})") from None
    return model.eval(), manifest


MAX_PARAMETERS = 1 << 27  # 512 MB of float32: no model a manifest of ours describes comes near


def _check_model_size(manifest: Manifest, meta: Path | str) -> None:
    """A registry model is sized by the manifest's input shape and class count: count its parameters on
    the meta device (nothing allocated) before building it for real."""
    if is_reference(manifest.model):
        return
    with torch.device("meta"):
        model = create_model(manifest.model, tuple(manifest.input_shape), manifest.num_classes)
    n = sum(p.numel() for p in model.parameters())
    if n > MAX_PARAMETERS:
        raise UserError(f"{meta}: manifest asks for a {manifest.model!r} of {n} parameters (input "
                        f"{manifest.input_shape}, {manifest.num_classes} classes)")


def build_model(manifest: Manifest, meta: Path | None = None) -> nn.Module:
    """The manifest's model, untrained, shrunk to its stored shapes: what a weight file loads into."""
    where = meta or manifest.model
    _check_source(manifest)
    _check_model_size(manifest, where)
    model = create_model(manifest.model, tuple(manifest.input_shape), manifest.num_classes, **manifest.model_args)
    try:
        return shrink_to(model, {k: list(v) for k, v in manifest.shapes.items()})
    except Exception as e:  # stored shapes this architecture cannot shrink to
        first = (str(e).splitlines() or [""])[0][:160]
        raise UserError(f"{where}: stored shapes do not fit model {manifest.model!r} ({type(e).__name__}: "
                        f"{first})") from None


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
