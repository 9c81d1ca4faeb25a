"""Deployable artifacts. A `Deployment` (variant.py) names how a compressed model ships; the exporter
registered for that name writes the files and says how each runtime runs them.

- formats/: bytes in and out (the container codec, Huffman, .dsparse, .dsq, .dsz, .dsonnx, the ONNX writers);
- runtimes/: ONNX Runtime, OpenVINO, PyTorch, the sparse kernels, and the load-time graph rewrites;
- choice.py: every timing-based choice (runtime, ONNX Runtime graph, INT8 mode) under one noise rule;
- exporters/: one per deployment (`fp32`/`fp16`/`fp64`, `int8`, `dsq`, `sparse`, `dsz`);
- files.py: opening any file deepshrink wrote, by suffix.

Adding a format: its codec in formats/, an exporter module in exporters/ with one
`@EXPORTERS.register(name)` function, imported in exporters/__init__.py.
"""

from pathlib import Path

from torch import nn

from deepshrink.export import exporters  # noqa: F401  (importing it registers every exporter)
from deepshrink.export.base import EXPORTERS, Artifact, ExportContext, Exporter
from deepshrink.export.choice import choose_runtime, tune_onnxruntime
from deepshrink.variant import Deployment

__all__ = ["EXPORTERS", "Artifact", "Deployment", "ExportContext", "Exporter", "export"]


def export(model: nn.Module, deployment: Deployment, stem: Path, ctx: ExportContext) -> Artifact:
    """Write the deployment's files; the artifact's info says which runtime deploys it at batch 256 and 1."""
    art = EXPORTERS.get(deployment.name)(model, stem, ctx, deployment.opts())
    calib = (ctx.calib if ctx.calib is not None else ctx.example).numpy().astype(art.input_dtype)
    tuned = tune_onnxruntime(art.runners, calib, ctx.choice_margin)  # ONNX Runtime at its fastest graph first
    chosen = choose_runtime(art.runners, calib, margin=ctx.choice_margin)
    notes = "; ".join(str(n) for n in (art.info.get("notes"), tuned.pop("notes", None), chosen.pop("notes", None))
                      if n)
    art.info.update({**tuned, **chosen})
    if notes:
        art.info["notes"] = notes
    return art
