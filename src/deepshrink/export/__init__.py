"""Deployable artifacts. A `Deployment` names how a compressed model ships; the exporter registered
for that name writes the files and says how each runtime runs them.

Formats: `fp32`/`fp16`/`fp64` (floating.py), `int8` (integer QDQ ONNX, int8.py), `packed` (sub-8-bit
weights, packed.py), `sparse` (sparse.py) and `dsz` (Deep Compression, dsz.py); the compact ones share
one container codec (container.py). Adding a format: a module with one `@EXPORTERS.register(name)`
function, imported below. Every artifact's runtimes are then timed against each other (deploy.py): the
fastest is what it deploys.
"""

from pathlib import Path

from torch import nn

from deepshrink.export import dsz, floating, int8, packed, sparse  # noqa: F401  (each registers its exporters)
from deepshrink.export.base import EXPORTERS, Artifact, Deployment, ExportContext, Exporter
from deepshrink.export.deploy import choose_runtime, tune_onnxruntime

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
