"""Recompute a results.csv row from its artifact alone: the file's byte size, and the test accuracy of the
model the file decodes to, run in ONNX Runtime (SPEC §6: every number comes from the deployed artifact)."""

import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from deepshrink.checkpoint import load_checkpoint
from deepshrink.data import DataSplits
from deepshrink.export.exporters.dsparse import load_sparse_into
from deepshrink.export.formats import dsonnx
from deepshrink.export.formats.onnx_float import export_onnx


def _onnx_accuracy(model_bytes: bytes, data: DataSplits) -> float:
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = data.test_x.numpy().astype(np.float16 if "float16" in inp.type else np.float32)
    logits = np.concatenate([sess.run(None, {inp.name: x[i : i + 256]})[0] for i in range(0, len(x), 256)])
    return float((logits.argmax(1) == data.test_y.numpy()).mean() * 100.0)


def decoded_accuracy(run_dir: Path, row: dict[str, str], data: DataSplits) -> float:
    """Accuracy of what `row["artifact"]` decodes to (.onnx as is, .dsonnx unpacked, .dsparse decoded into
    the checkpoint's architecture)."""
    path = run_dir / row["artifact"]
    if path.suffix == ".onnx":
        return _onnx_accuracy(path.read_bytes(), data)
    if path.suffix == ".dsonnx":
        return _onnx_accuracy(dsonnx.decode(path.read_bytes(), str(path)), data)
    if path.suffix == ".dsparse":
        model, _ = load_checkpoint(run_dir / row["checkpoint"])
        decoded = load_sparse_into(model, path)
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = export_onnx(decoded, Path(tmp) / "d.onnx", data.test_x[:1])
            return _onnx_accuracy(onnx_path.read_bytes(), data)
    raise AssertionError(f"no independent decoder for {path.suffix} in this test")


def check_rows_against_artifacts(run_dir: Path, rows: list[dict[str, str]], data: DataSplits) -> None:
    for r in rows:
        if r["status"] != "ok":
            continue
        assert int(r["size_bytes"]) == (run_dir / r["artifact"]).stat().st_size, r["variant"]
        got = decoded_accuracy(run_dir, r, data)
        assert abs(float(r["accuracy_pct"]) - got) < 1e-4, (r["variant"], r["accuracy_pct"], got)
