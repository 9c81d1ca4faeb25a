"""What produced a run: code version, packages, machine, threads, device, seeds, command line."""

import hashlib
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from deepshrink.checkpoint import atomic_write_bytes
from deepshrink.data import DataSplits

_PACKAGES = ("deepshrink", "torch", "onnx", "onnxruntime", "numpy", "torch-pruning", "safetensors", "pandas")


def _git(*args: str) -> str:
    here = Path(__file__).resolve().parent
    try:
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=5,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def code_version() -> dict[str, Any]:
    commit = _git("rev-parse", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no")) if commit else None
    return {"commit": commit or "unknown", "dirty": dirty}


def all_cores() -> int:
    """The cores this process may run on (its affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for pkg in _PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def collect(device: str, seeds: dict[str, int], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "code": code_version(),
        "versions": versions(),
        "machine": {"cpu": cpu_model(), "cores": all_cores(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "device": device,
        "seeds": seeds,
        "argv": sys.argv,
        **(extra or {}),
    }


def read(path: Path) -> dict[str, Any]:
    """A run's provenance.json, or {} when it is absent or unreadable (it is rewritten, never trusted)."""
    try:
        return dict(json.loads(path.read_text())) if path.exists() else {}
    except (json.JSONDecodeError, OSError):
        return {}


def data_entry(data: DataSplits) -> dict[str, Any]:
    return {"origin": data.origin, "fingerprint": data.fingerprint, "mean": data.mean, "std": data.std}


def write(run_dir: Path, data: DataSplits | None = None, device: str | None = None,
          seeds: dict[str, int] | None = None, extra: dict[str, Any] | None = None) -> None:
    """The one writer of a run's provenance.json. With `device`, the run's facts are collected anew
    (this invocation's); with `data`, that dataset's origin and fingerprint are added. Entries of other
    datasets already in the file are kept: study workers each add the datasets they loaded."""
    path = run_dir / "provenance.json"
    old = read(path)
    prov = collect(device, seeds or {}, extra) if device is not None else old
    prov["data"] = {**old.get("data", {}), **({data.name: data_entry(data)} if data is not None else {})}
    atomic_write_bytes(path, json.dumps(prov, indent=2, default=str).encode())


def update(run_dir: Path, **fields: Any) -> None:
    """Add top-level entries to an existing provenance.json (a study's wall time, once its work is done)."""
    path = run_dir / "provenance.json"
    atomic_write_bytes(path, json.dumps({**read(path), **fields}, indent=2, default=str).encode())


def config_hash(obj: Any, length: int = 10) -> str:
    """Stable short hash of any JSON-able object (shrinkbench's run-directory digest)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]
