"""The sparse deployable file of an unstructurally pruned model, and its exporter (`sparse`).

Layout (`.dsparse`): magic, u32 header length, JSON header, then byte streams. Each Linear/Conv2d
weight is stored as its non-zeros only, in flat (row-major) order:
  - relative indices: u8 gap = number of zeros skipped since the previous stored entry; a gap over 255
    is bridged by filler entries (gap 255, value +0.0), as in Deep Compression (Han et al. 2016);
  - values: float32, byte-plane shuffled (all sign/exponent bytes together) and then compressed
    losslessly (lzma), so the bytes that barely vary among trained weights cost almost nothing.
Everything else (biases) is stored dense. Decoding reproduces every tensor bit for bit: "non-zero"
is decided on the bit pattern, so a -0.0 would be kept as an explicit value.
"""

import json
import lzma
import struct
import time
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from deepshrink.checkpoint import atomic_write_bytes
from deepshrink.errors import UserError
from deepshrink.export import (
    EXPORTERS,
    Artifact,
    ExportContext,
    Runner,
    RunnerFactory,
    export_onnx,
    ort_runner,
    torch_runner,
)
from deepshrink.registry import Registry

MAGIC = b"DSPARSE1"
MAX_GAP = 255

Codec = tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]
CODECS: Registry[Codec] = Registry("sparse codec")
CODECS.register("none")((lambda b: b, lambda b: b))
CODECS.register("zlib")((lambda b: zlib.compress(b, 9), zlib.decompress))
CODECS.register("lzma")((lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME), lzma.decompress))


def encode_positions(flat_bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(u8 gaps, entry -> flat position) for the non-zero bit patterns, fillers included."""
    pos = np.flatnonzero(flat_bits)
    gaps = np.diff(pos, prepend=-1) - 1
    fillers = gaps // (MAX_GAP + 1)
    count = len(pos) + int(fillers.sum())
    # Entry k of a position's run: fillers first (each advancing 256 positions), then the value itself.
    owner = np.repeat(np.arange(len(pos)), fillers + 1)
    within = np.arange(count) - np.repeat(np.cumsum(fillers + 1) - (fillers + 1), fillers + 1)
    is_value = within == fillers[owner]
    out_gaps = np.where(is_value, gaps[owner] - fillers[owner] * (MAX_GAP + 1), MAX_GAP).astype(np.uint8)
    entry_pos = np.cumsum(out_gaps.astype(np.int64) + 1) - 1
    return out_gaps, np.where(is_value, entry_pos, -1)


def _shuffle(values: np.ndarray) -> bytes:
    return values.astype("<f4").view(np.uint8).reshape(-1, 4).T.tobytes()


def _unshuffle(data: bytes, n: int) -> np.ndarray:
    return np.frombuffer(data, np.uint8).reshape(4, n).T.copy().view("<f4").reshape(n)


class Streams:
    """The body of a container file: compressed byte streams, each addressed by (offset, length)."""

    def __init__(self, codec: str) -> None:
        self.codec, self.compress = codec, CODECS.get(codec)[0]
        self.blobs: list[bytes] = []
        self.offset = 0

    def add(self, raw: bytes) -> tuple[int, int]:
        self.blobs.append(self.compress(raw))
        self.offset += len(self.blobs[-1])
        return self.offset - len(self.blobs[-1]), len(self.blobs[-1])

    def pack(self, magic: bytes, header: dict[str, Any]) -> bytes:
        """magic, u32 header length, JSON header (with the codec), then the streams."""
        text = json.dumps({"codec": self.codec, **header}, separators=(",", ":")).encode()
        return magic + struct.pack("<I", len(text)) + text + b"".join(self.blobs)


def read_container(data: bytes, magic: bytes, source: str,
                   what: str) -> tuple[dict[str, Any], Callable[[list[int]], bytes]]:
    """(header, stream reader) of a file written by `Streams.pack`; a wrong magic is a user error."""
    if data[: len(magic)] != magic:
        raise UserError(f"{source}: not a deepshrink {what}")
    (hlen,) = struct.unpack("<I", data[len(magic) : len(magic) + 4])
    start = len(magic) + 4
    header = json.loads(data[start : start + hlen])
    body = memoryview(data)[start + hlen :]
    decompress = CODECS.get(header["codec"])[1]

    def blob(span: list[int]) -> bytes:
        return decompress(bytes(body[span[0] : span[0] + span[1]]))

    return header, blob


def encode_state(state: dict[str, Tensor], sparse_keys: set[str], codec: str = "lzma") -> bytes:
    streams = Streams(codec)
    add = streams.add
    entries: list[dict[str, Any]] = []
    for key, t in state.items():
        arr = t.detach().cpu().contiguous().numpy()
        entry: dict[str, Any] = {"key": key, "shape": list(arr.shape), "dtype": str(arr.dtype)}
        if key in sparse_keys and arr.dtype == np.float32:
            flat = arr.reshape(-1)
            gaps, where = encode_positions(flat.view(np.uint32))
            values = np.where(where >= 0, flat[np.maximum(where, 0)], np.float32(0.0)).astype(np.float32)
            entry.update(kind="sparse", entries=len(gaps), nonzero=int((where >= 0).sum()),
                         gaps=add(gaps.tobytes()), values=add(_shuffle(values)))
        else:
            entry.update(kind="dense", data=add(arr.tobytes()))
        entries.append(entry)
    return streams.pack(MAGIC, {"tensors": entries})


def decode_state(data: bytes, source: str = "sparse file") -> dict[str, Tensor]:
    header, blob = read_container(data, MAGIC, source, "sparse file")
    out: dict[str, Tensor] = {}
    for e in header["tensors"]:
        shape, dtype = tuple(e["shape"]), np.dtype(e["dtype"])
        if e["kind"] == "sparse":
            gaps = np.frombuffer(blob(e["gaps"]), np.uint8)
            values = _unshuffle(blob(e["values"]), e["entries"])
            flat = np.zeros(int(np.prod(shape)), np.float32)
            flat[np.cumsum(gaps.astype(np.int64) + 1) - 1] = values
            arr = flat.reshape(shape)
        else:
            arr = np.frombuffer(blob(e["data"]), dtype).reshape(shape).copy()
        out[e["key"]] = torch.from_numpy(arr)
    return out


def sparse_weight_keys(model: nn.Module) -> set[str]:
    return {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


def write_sparse(model: nn.Module, path: Path, codec: str = "lzma") -> Path:
    atomic_write_bytes(path, encode_state(model.state_dict(), sparse_weight_keys(model), codec))
    return path


class SparseLinear(nn.Module):
    """y = x W^T + b with W held as a CSR tensor: the work done is proportional to the non-zeros."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        with warnings.catch_warnings():  # "CSR support is in beta": CSR @ dense is all this uses
            warnings.simplefilter("ignore", UserWarning)
            self.weight_csr = linear.weight.detach().to_sparse_csr()
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: Tensor) -> Tensor:
        y = torch.sparse.mm(self.weight_csr, x.t()).t()
        return y if self.bias is None else y + self.bias


def to_sparse_kernels(model: nn.Module) -> nn.Module:
    """A copy whose Linear layers run CSR matmuls; convolutions stay dense (no sparse conv kernel
    on CPU in torch), so their zeros are still multiplied."""
    import copy

    out = copy.deepcopy(model).eval()
    for name, mod in list(out.named_modules()):
        if isinstance(mod, nn.Linear):
            parent = out.get_submodule(name.rpartition(".")[0]) if "." in name else out
            setattr(parent, name.rpartition(".")[2], SparseLinear(mod))
    return out


def _time_batched(run: Runner, x: np.ndarray, batch: int = 256, repeats: int = 5) -> float:
    """Median microseconds per image over `repeats` passes, after one warm-up pass."""
    def one() -> float:
        t0 = time.perf_counter()
        for i in range(0, len(x), batch):
            run(x[i : i + batch])
        return time.perf_counter() - t0

    one()
    return float(np.median([one() for _ in range(repeats)])) / len(x) * 1e6


def compare_kernels(dense: RunnerFactory, sparse: RunnerFactory, x: np.ndarray) -> dict[str, Any]:
    """Dense kernels on the zero-filled weights vs CSR kernels, same input, 1 thread, batch 256."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        d_run, s_run = dense(1, "cpu"), sparse(1, "cpu")
        d_us, s_us = _time_batched(d_run, x), _time_batched(s_run, x)
    finally:
        torch.set_num_threads(prev)
    return {"dense_us_per_image": d_us, "sparse_us_per_image": s_us,
            "sparse_kernel_faster": s_us < d_us, "faster_kernel": "torch-sparse" if s_us < d_us else "torch"}


@EXPORTERS.register("sparse")
def export_sparse(model: nn.Module, stem: Path, ctx: ExportContext, opts: dict[str, Any]) -> Artifact:
    """Primary file: the sparse file. Every runner runs the model decoded from that file."""
    path = write_sparse(model, stem.with_suffix(".dsparse"), str(opts.get("codec", "lzma")))
    decoded = load_sparse_into(model, path)
    # The zero-filled dense ONNX sits beside the manifest, so `deepshrink bench` can time it.
    onnx_path = export_onnx(decoded, stem.with_suffix(".onnx"), ctx.example)
    dense, sparse = torch_runner(decoded), torch_runner(to_sparse_kernels(decoded))
    probe = (ctx.calib if ctx.calib is not None else ctx.example).numpy().astype(np.float32)
    info: dict[str, Any] = {"sparse": True, "sparse_codec": str(opts.get("codec", "lzma")),
                            **compare_kernels(dense, sparse, probe)}
    return Artifact(path=path, kind="sparse", precision="fp32",
                    files={p.name: p.stat().st_size for p in (path, onnx_path)},
                    runners={"onnxruntime": ort_runner(onnx_path), "torch": dense, "torch-sparse": sparse},
                    info=info)


def load_sparse_into(model: nn.Module, path: Path) -> nn.Module:
    """A copy of `model` holding the weights decoded from `path` (the model that actually ships)."""
    import copy

    out = copy.deepcopy(model).cpu().eval()
    out.load_state_dict(decode_state(path.read_bytes(), str(path)))
    return out
