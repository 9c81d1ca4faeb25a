"""The lowered program (buffers, constant arrays, kernel calls) and the state lowering keeps per tensor;
the helpers every lowerer shares: requantization multipliers, bias folding, weight row packing."""

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from deepshrink.errors import UserError
from deepshrink.mcu.graph import Graph, Node, QTensor
from deepshrink.registry import Registry


@dataclass
class Buffer:
    """Bytes one tensor or scratch area needs in the arena from node `first` to node `last`."""

    name: str
    size: int
    first: int
    last: int
    external: str = ""  # "input" or "logits": the caller's memory, not the arena
    offset: int = -1


@dataclass
class CArray:
    name: str
    ctype: str  # int8_t, int32_t or float
    values: np.ndarray


@dataclass
class Call:
    """One kernel call: `ds_<kernel>(&<struct>, <args>...)`; args name buffers."""

    kernel: str
    struct_type: str
    fields: list[str]  # the const struct's initializer, in declaration order
    args: list[tuple[str, str]]  # (buffer name, C type of the pointer)
    note: str = ""
    fn: str = ""  # a function argument before the buffers (a convolution's in-place rows kernel, or 0)


@dataclass
class Program:
    graph: Graph
    calls: list[Call] = field(default_factory=list)
    arrays: list[CArray] = field(default_factory=list)
    buffers: dict[str, Buffer] = field(default_factory=dict)
    kernels: set[str] = field(default_factory=lambda: {"base", "argmax"})
    definitions: list[str] = field(default_factory=list)  # const structs a call's fields point to
    instantiations: set[str] = field(default_factory=set)  # kernel macros expanded for this model
    layouts: list[str] = field(default_factory=list)  # each in-place layer's weight layout, for notes
    in_place: list[int] = field(default_factory=list)  # and the bytes it would take stored dense
    macs: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class State:
    """What lowering knows about each tensor: its storage (after aliases), layout and flatten order."""

    graph: Graph
    prog: Program
    root: dict[str, str] = field(default_factory=dict)  # tensor -> tensor whose storage it shares
    layout: dict[str, str] = field(default_factory=dict)  # "chw" | "hwc" | "flat"
    order: dict[str, np.ndarray | None] = field(default_factory=dict)  # flat tensor -> storage permutation
    fused: set[str] = field(default_factory=set)  # nodes already lowered into another node's call
    in_place: bool = True  # may weights be stored sparse (else every layer dense: the reference build)

    def tensor(self, name: str) -> QTensor:
        return self.graph.tensors[name]

    def buf(self, name: str) -> str:
        return self.root.get(name, name)

    def array(self, stem: str, ctype: str, values: np.ndarray) -> str:
        name = f"ds_{stem}{len(self.prog.arrays)}"
        self.prog.arrays.append(CArray(name, ctype, values))
        return name

    def scratch(self, node: int, size: int) -> str:
        name = f"scratch{node}_{len(self.prog.buffers)}"
        self.prog.buffers[name] = Buffer(name, size, node, node)
        return name


Lowerer = Callable[[State, int, Node], None]
LOWERERS: Registry[Lowerer] = Registry("integer operator")


def multipliers(x: QTensor, w_scale: np.ndarray, y: QTensor, n: int) -> np.ndarray:
    ws = np.broadcast_to(w_scale.astype(np.float32), (n,))
    return (np.float32(x.scale) * ws) / np.float32(y.scale)


def fold_bias(bias: np.ndarray, rows: np.ndarray, x_zp: int, source: str) -> np.ndarray:
    folded = bias.astype(np.int64) - x_zp * rows.astype(np.int64).sum(axis=1)
    if np.abs(folded).max(initial=0) >= 2**31:
        raise UserError(f"{source}: a bias does not fit int32 once the input zero point is folded into it")
    return folded.astype(np.int32)


def pack_rows(rows: np.ndarray, wide: bool = False) -> tuple[np.ndarray, int]:
    """int8 rows (n, k) -> (flash bytes in ds_dot's order, kp): zero-padded to kp = k rounded up to 4, then
    4, 2 or 1 rows at a time interleaved by 4-byte blocks; for int16 activations (`wide`: a convolution's
    column) each block is stored w0 w2 w1 w3 (kernels.c, ds_dot16)."""
    n, k = rows.shape
    kp = -(-k // 4) * 4
    padded = np.zeros((n, kp), np.int8)
    padded[:, :k] = rows
    if wide:
        padded = padded.reshape(n, kp // 4, 4)[:, :, [0, 2, 1, 3]].reshape(n, kp)
    out, r = [], 0
    while r < n:
        step = 4 if n - r >= 4 else 2 if n - r >= 2 else 1
        group = padded[r : r + step].reshape(step, kp // 4, 4)
        out.append(group.transpose(1, 0, 2).reshape(-1))
        r += step
    return np.concatenate(out), kp


def q_fields(s: State, bias: np.ndarray, mult: np.ndarray, y: QTensor) -> str:
    b = s.array("b", "int32_t", bias)
    m = s.array("m", "float", mult)
    return f"{{{b}, {m}, {y.zp}}}"


def c_float(v: float | np.floating) -> str:
    """A float32 as an exact C hexadecimal literal."""
    return f"{float(np.float32(v)).hex()}f"
