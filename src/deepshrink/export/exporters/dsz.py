"""The `dsz` exporter: a pruned, clustered model shipped as a Deep Compression file (formats/dsz.py), checked
to decode bit for bit, and run as the model decoded from it."""

import copy
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from deepshrink.checkpoint import atomic_write_bytes
from deepshrink.export.base import EXPORTERS, Artifact, ExportContext
from deepshrink.export.formats import dsz
from deepshrink.export.formats.onnx_float import export_onnx
from deepshrink.export.runtimes import onnx_runners, torch_runner
from deepshrink.models import weighted_layers


def coded_weight_keys(model: nn.Module) -> set[str]:
    return {f"{n}.weight" for n, _ in weighted_layers(model)}


def load_dsz_into(model: nn.Module, path: Path) -> nn.Module:
    """A copy of `model` holding the state decoded from `path` (shapes checked against the model first)."""
    out = copy.deepcopy(model).cpu().eval()
    expected = {k: list(v.shape) for k, v in out.state_dict().items()}
    out.load_state_dict(dsz.decode(path.read_bytes(), str(path), expected))
    return out


def _check_exact(model: nn.Module, decoded: nn.Module, path: Path) -> None:
    """The decoder must give back the very bits that were encoded: anything else is our bug."""
    mine, back = model.state_dict(), decoded.state_dict()
    for key, t in mine.items():
        if t.detach().cpu().numpy().tobytes() != back[key].numpy().tobytes():
            raise RuntimeError(f"{path}: {key} does not decode bit for bit")


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Facts for results.csv from `describe` rows, with notes on what the encoding could not exploit."""
    coded = [r for r in rows if r["kind"] != "dense"]
    raw = [r["tensor"].removesuffix(".weight") for r in coded if r["kind"] == "raw"]
    dense = [r["tensor"].removesuffix(".weight") for r in coded if r["nonzero"] == _size(r["shape"]) > 0]
    notes = []
    if raw:
        notes.append(f"encode: over {dsz.MAX_CODEBOOK} distinct values (not clustered), raw float32 values: "
                     f"{', '.join(raw)}")
    if dense:
        notes.append(f"encode: no zeros (not pruned), every value stored: {', '.join(dense)}")
    return {"dsz_gap_bits": ",".join(f"{r['tensor'].removesuffix('.weight')}={r['gap_bits']}" for r in coded),
            "dsz_position_bytes": sum(r["position_bytes"] for r in coded),
            "dsz_value_bytes": sum(r["value_bytes"] for r in coded),
            "dsz_other_bytes": sum(r["value_bytes"] for r in rows if r["kind"] == "dense"),
            "notes": "; ".join(notes)}


def _size(shape: str) -> int:
    return int(np.prod([int(d) for d in shape.split("x")], dtype=np.int64)) if shape else 1


@EXPORTERS.register("dsz")
def export_dsz(model: nn.Module, stem: Path, ctx: ExportContext, opts: dict[str, Any]) -> Artifact:
    """Primary file: the .dsz. Every runner runs the model decoded from it: ONNX Runtime on a dense float
    ONNX export of the decoded weights (the runtime's working form, beside the manifest for `bench`)."""
    path = stem.with_suffix(".dsz")
    data = dsz.encode(model.state_dict(), coded_weight_keys(model), int(opts.get("gap_bits", 0)))
    atomic_write_bytes(path, data)
    decoded = load_dsz_into(model, path)
    _check_exact(model, decoded, path)
    onnx_path = export_onnx(decoded, stem.with_suffix(".onnx"), ctx.example)
    zeros = any(bool((weight == 0).any()) for weight in decoded.state_dict().values())
    info = {"sparse": zeros, **summarize(dsz.describe(data, str(path)))}
    return Artifact(path=path, kind="dsz", precision="fp32",
                    files={p.name: p.stat().st_size for p in (path, onnx_path)},
                    runners={**onnx_runners(onnx_path), "torch": torch_runner(decoded)}, info=info)
