"""The `.dsq` file: sub-8-bit weights stored as bit-packed codes, and the decoder that reproduces them
exactly.

On the container codec (container.py, stream codec `none`: packed codes barely compress). The header
lists, per tensor, its name, shape, kind ("codes", or "f32") and stream; codes are signed integers in
[-qmax, qmax] stored offset by qmax as `bits`-bit unsigned fields, LSB first; each coded weight has a
per-output-channel float32 step ("<name>.step"). Decoded weight = code * step in float32, exactly the
forward of the QAT wrapper, so the measured model is the trained one.
"""

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from deepshrink.errors import UserError
from deepshrink.export.formats.container import Streams, read_container, reader, shape_of
from deepshrink.quant.scales import quantize_weight

MAGIC = b"DSQP0002"
FORMAT = "deepshrink.packed/2"  # the format string files written since 2 carry
WHAT = "bit-packed weight file (.dsq)"


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Unsigned ints < 2**bits -> a dense bit stream (LSB-first within each byte)."""
    v = values.astype(np.uint8).ravel()
    planes = ((v[:, None] >> np.arange(bits, dtype=np.uint8)) & 1).astype(np.uint8)
    return np.packbits(planes.ravel(), bitorder="little").tobytes()


def unpack_bits(data: bytes, bits: int, count: int) -> np.ndarray:
    flat = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")[: count * bits]
    planes = flat.reshape(count, bits).astype(np.uint8)
    return (planes << np.arange(bits, dtype=np.uint8)).sum(1).astype(np.uint8)


def encode(state: dict[str, torch.Tensor], bits: int, steps: dict[str, torch.Tensor]) -> bytes:
    """The .dsq bytes of a state dict: the tensors `steps` names (a weight key -> its per-output-channel
    step) as `bits`-bit codes, every other tensor float32."""
    qmax = 2 ** (bits - 1) - 1
    header: list[dict[str, Any]] = []
    streams = Streams("none")

    def add(name: str, kind: str, shape: Sequence[int], blob: bytes) -> None:
        header.append({"name": name, "kind": kind, "shape": list(shape), "data": streams.add(blob)})

    for name, t in state.items():
        t = t.detach().float().cpu()
        if name in steps:
            step = steps[name].float().cpu()
            codes = quantize_weight(t, step, qmax).numpy().astype(np.int16) + qmax
            add(name, "codes", t.shape, pack_bits(codes, bits))
            add(f"{name}.step", "f32", step.shape, step.numpy().astype("<f4").tobytes())
        else:
            add(name, "f32", t.shape, t.numpy().astype("<f4").tobytes())
    return streams.pack(MAGIC, {"format": FORMAT, "bits": bits, "tensors": header})


@reader(WHAT)
def decode(blob: bytes, source: str) -> dict[str, torch.Tensor]:
    """The state dict a .dsq file holds, weights dequantized as code * step in float32; every size
    the header claims is checked against the file before anything is allocated."""
    what = WHAT
    head, read = read_container(blob, MAGIC, source, what)
    bits = head.get("bits")
    if type(bits) is not int or not 2 <= bits <= 8 or not isinstance(head.get("tensors"), list):
        raise UserError(f"{source}: corrupt {what} (bits {str(bits)[:20]} or tensor list)")
    qmax = 2 ** (bits - 1) - 1
    raw: dict[str, tuple[tuple[int, ...], str, bytes]] = {}
    for t in head["tensors"]:
        if not isinstance(t, dict) or not isinstance(t.get("name"), str) or t.get("kind") not in ("codes", "f32"):
            raise UserError(f"{source}: corrupt {what} (bad tensor entry {str(t)[:60]})")
        shape, count = shape_of(t.get("shape"), source, what)
        size = (count * bits + 7) // 8 if t["kind"] == "codes" else 4 * count
        raw[t["name"]] = (shape, t["kind"], read(t.get("data"), size))
    state: dict[str, torch.Tensor] = {}
    for name, (shape, kind, data) in raw.items():
        if name.endswith(".step") and kind == "f32":
            continue
        if kind == "f32":
            state[name] = torch.from_numpy(np.frombuffer(data, "<f4").reshape(shape).copy())
            continue
        step_shape, _, step_data = raw.get(f"{name}.step", ((), "", b""))
        if not shape or step_shape != (shape[0],):
            raise UserError(f"{source}: corrupt {what} ({name} has no per-channel step of {shape[:1]} values)")
        codes = torch.from_numpy(unpack_bits(data, bits, math.prod(shape)).astype(np.float32) - qmax).reshape(shape)
        step = torch.from_numpy(np.frombuffer(step_data, "<f4").copy())
        state[name] = codes * step.reshape(-1, *([1] * (len(shape) - 1)))
    return state
