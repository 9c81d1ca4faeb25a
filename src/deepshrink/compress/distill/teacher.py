"""Teachers for distillation: resolve them (the step's input model, a checkpoint, or an ensemble of
checkpoints), check they fit the data, and cache their training-set logits.

Teacher logits over the un-augmented training set depend only on the teacher's weights and the data,
so they are computed once per (weights hash, dataset fingerprint) and kept in memory and on disk;
a temperature sweep then costs student training only.
"""

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes
from torch import Tensor, nn

from deepshrink.checkpoint import Manifest, atomic_write_bytes, load_checkpoint, read_manifest
from deepshrink.data import DataSplits
from deepshrink.errors import UserError
from deepshrink.train import predict

# Step syntax splits keys on commas, so ensembles are written `teacher=a.safetensors+b.safetensors`;
# the Python API also accepts a comma list.
ENSEMBLE_SEPARATORS = ("+", ",")
_MEMORY_CACHE_SIZE = 8
_MEMORY: "OrderedDict[str, Tensor]" = OrderedDict()


@dataclass
class Teacher:
    """One trained model used as (part of) a teacher."""

    name: str  # checkpoint path, or "input" for the step's input model
    model: nn.Module
    manifest: Manifest
    weights_hash: str


def split_teacher_spec(spec: str) -> list[str]:
    parts = [spec]
    for sep in ENSEMBLE_SEPARATORS:
        parts = [p for part in parts for p in part.split(sep)]
    return [p.strip() for p in parts if p.strip()]


def check_teacher_manifests(spec: str) -> None:
    """Fail fast (before any training) on teacher files that are missing or not checkpoints."""
    for path in split_teacher_spec(spec):
        try:
            read_manifest(Path(path))
        except UserError as e:
            raise UserError(f"distill.teacher: {e}") from None


def weights_hash(model: nn.Module) -> str:
    """Content hash of a model's state: names, shapes, dtypes and bytes."""
    h = hashlib.blake2b(digest_size=10)
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{list(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def check_fits(manifest: Manifest, data: DataSplits, key: str, source: str) -> None:
    """A model trained on another dataset or class count cannot teach (or be) this student."""
    if manifest.dataset != data.name:
        raise UserError(f"{key}: {source} was trained on {manifest.dataset!r}, not on {data.name!r}")
    if manifest.num_classes != data.num_classes:
        raise UserError(f"{key}: {source} has {manifest.num_classes} classes, the data has {data.num_classes}")
    if list(manifest.input_shape) != list(data.input_shape):
        raise UserError(f"{key}: {source} takes inputs {manifest.input_shape}, the data has "
                        f"{list(data.input_shape)}")


def resolve_teachers(spec: str, input_model: nn.Module, input_manifest: Manifest,
                     data: DataSplits) -> list[Teacher]:
    """`""` -> the step's input model; otherwise one checkpoint or an ensemble of them."""
    if not spec:
        model = input_model.cpu().eval()
        return [Teacher("input", model, input_manifest, weights_hash(model))]
    teachers = []
    for path in split_teacher_spec(spec):
        try:
            model, manifest = load_checkpoint(Path(path))
        except UserError as e:
            raise UserError(f"distill.teacher: {e}") from None
        check_fits(manifest, data, "distill.teacher", path)
        teachers.append(Teacher(path, model, manifest, weights_hash(model)))
    return teachers


def _cache_file(cache_dir: Path, key: str) -> Path:
    return cache_dir / "teacher_logits" / f"{key}.safetensors"


def _read_cached(path: Path, expected: tuple[int, int]) -> Tensor | None:
    try:
        logits = load_file(str(path))["train"]
    except Exception:  # missing, truncated or foreign (SafetensorError, OSError, KeyError, ...): recompute
        return None
    # A file of the wrong shape (truncated, other split) is recomputed, not trusted.
    return logits if tuple(logits.shape) == expected else None


def train_logits(teacher: Teacher, data: DataSplits, cache_dir: Path | None = None,
                 device: str = "cpu") -> Tensor:
    """Teacher logits for every training image (un-augmented), cached by (weights, data)."""
    key = f"{teacher.weights_hash}-{data.fingerprint}"
    if key in _MEMORY:
        _MEMORY.move_to_end(key)
        return _MEMORY[key]
    expected = (len(data.train_x), data.num_classes)
    logits = _read_cached(_cache_file(cache_dir, key), expected) if cache_dir else None
    if logits is None:
        teacher.model.to(device)
        logits = predict(teacher.model, data.train_x).contiguous()
        teacher.model.cpu()
        if cache_dir:
            atomic_write_bytes(_cache_file(cache_dir, key), save_bytes({"train": logits}))
    _MEMORY[key] = logits
    while len(_MEMORY) > _MEMORY_CACHE_SIZE:
        _MEMORY.popitem(last=False)
    return logits


def ensemble_train_logits(teachers: list[Teacher], data: DataSplits, cache_dir: Path | None = None,
                          device: str = "cpu") -> Tensor:
    """An ensemble teaches with its members' averaged logits."""
    logits = [train_logits(t, data, cache_dir, device) for t in teachers]
    return logits[0] if len(logits) == 1 else torch.stack(logits).mean(0)


def clear_memory_cache() -> None:
    _MEMORY.clear()


class OnlineEnsemble(nn.Module):
    """Teachers run on each (augmented) batch when cached logits would not match the inputs."""

    def __init__(self, teachers: list[Teacher]) -> None:
        super().__init__()
        self.members = nn.ModuleList([t.model.eval() for t in teachers])

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)
