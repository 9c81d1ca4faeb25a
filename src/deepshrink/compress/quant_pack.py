"""Sub-8-bit weights stored bit-packed (`packed` deployment), the decoder that reproduces them
exactly, and the accuracy-vs-bits figure.

File layout (little endian): b"DSQP" | u32 header length | JSON header | payload. The header lists,
per tensor, its name, shape, kind ("codes" with bits, or "f32") and byte range; codes are signed
integers in [-qmax, qmax] stored offset by qmax as `bits`-bit unsigned fields, LSB first; each coded
weight has a per-output-channel float32 step ("<name>.step"). Decoded weight = code * step in float32,
exactly the forward of the QAT wrapper, so the measured model is the trained one.
"""

import copy
import json
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepshrink.checkpoint import atomic_write_bytes
from deepshrink.compress.quant_graph import plan, quantize_weight
from deepshrink.errors import UserError
from deepshrink.export import EXPORTERS, Artifact, ExportContext, export_onnx, ort_runner, torch_runner

MAGIC = b"DSQP"


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Unsigned ints < 2**bits -> a dense bit stream (LSB-first within each byte)."""
    v = values.astype(np.uint8).ravel()
    planes = ((v[:, None] >> np.arange(bits, dtype=np.uint8)) & 1).astype(np.uint8)
    return np.packbits(planes.ravel(), bitorder="little").tobytes()


def unpack_bits(data: bytes, bits: int, count: int) -> np.ndarray:
    flat = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")[: count * bits]
    planes = flat.reshape(count, bits).astype(np.uint8)
    return (planes << np.arange(bits, dtype=np.uint8)).sum(1).astype(np.uint8)


def encode(model: nn.Module, bits: int, steps: dict[str, torch.Tensor]) -> bytes:
    """The packed file for `model`: weights of weighted layers as codes, all else float32."""
    qmax = 2 ** (bits - 1) - 1
    coded = {f"{op.name}.weight": op.name for op in plan(model) if op.weighted}
    header: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    offset = 0

    def add(name: str, kind: str, shape: Sequence[int], blob: bytes) -> None:
        nonlocal offset
        header.append({"name": name, "kind": kind, "shape": list(shape), "offset": offset, "size": len(blob)})
        chunks.append(blob)
        offset += len(blob)

    for name, t in model.state_dict().items():
        t = t.detach().float().cpu()
        if name in coded:
            step = steps[coded[name]].float().cpu()
            codes = quantize_weight(t, step, qmax).numpy().astype(np.int16) + qmax
            add(name, "codes", t.shape, pack_bits(codes, bits))
            add(f"{name}.step", "f32", step.shape, step.numpy().astype("<f4").tobytes())
        else:
            add(name, "f32", t.shape, t.numpy().astype("<f4").tobytes())
    head = json.dumps({"format": "deepshrink.packed/1", "bits": bits, "tensors": header},
                      separators=(",", ":")).encode()
    return MAGIC + struct.pack("<I", len(head)) + head + b"".join(chunks)


def decode(blob: bytes) -> dict[str, torch.Tensor]:
    """The state dict a packed file holds, weights dequantized as code * step in float32."""
    if blob[:4] != MAGIC:
        raise UserError("packed file: bad magic (not a deepshrink packed model)")
    (n,) = struct.unpack("<I", blob[4:8])
    head = json.loads(blob[8 : 8 + n])
    payload = memoryview(blob)[8 + n :]
    bits = int(head["bits"])
    qmax = 2 ** (bits - 1) - 1
    raw = {t["name"]: (t, bytes(payload[t["offset"] : t["offset"] + t["size"]])) for t in head["tensors"]}
    state: dict[str, torch.Tensor] = {}
    for name, (t, data) in raw.items():
        if name.endswith(".step"):
            continue
        shape = tuple(t["shape"])
        if t["kind"] == "f32":
            state[name] = torch.from_numpy(np.frombuffer(data, "<f4").reshape(shape).copy())
            continue
        count = int(np.prod(shape))
        codes = torch.from_numpy(unpack_bits(data, bits, count).astype(np.float32) - qmax).reshape(shape)
        step = torch.from_numpy(np.frombuffer(raw[f"{name}.step"][1], "<f4").copy())
        state[name] = codes * step.reshape(-1, *([1] * (len(shape) - 1)))
    return state


@EXPORTERS.register("packed")
def export_packed(model: nn.Module, stem: Path, ctx: ExportContext, opts: dict[str, Any]) -> Artifact:
    """Writes the packed file; runs the model decoded from it (torch, and ONNX Runtime on a float
    ONNX copy of the decoded weights: the runtime's working form, not what ships)."""
    bits = int(opts["bits"])
    steps = {name: torch.tensor(vals) for name, vals in opts["steps"]}
    path = stem.with_suffix(".dsq")
    atomic_write_bytes(path, encode(model, bits, steps))
    decoded = copy.deepcopy(model).float()
    decoded.load_state_dict(decode(path.read_bytes()))
    onnx_path = export_onnx(copy.deepcopy(decoded), stem.with_name(f"{stem.name}.decoded.onnx"), ctx.example)
    return Artifact(path=path, kind=f"packed-int{bits}-weights", precision=f"int{bits}-weights",
                    files={path.name: path.stat().st_size, onnx_path.name: onnx_path.stat().st_size},
                    runners={"onnxruntime": ort_runner(onnx_path), "torch": torch_runner(decoded)},
                    info={"weight_bits": bits, "decoded_onnx_bytes": onnx_path.stat().st_size})
