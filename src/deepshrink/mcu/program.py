"""The lowered program (buffers, named constant arrays and parameter structs, kernel calls, the specialized
kernels it needs) and the state lowering keeps per tensor and layer; the helpers every lowerer shares:
requantization multipliers, bias folding, weight row packing, comments' shapes."""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeAlias

import numpy as np

from deepshrink.errors import UserError
from deepshrink.mcu.fixed import INT8, MULT_FIELDS, requant_table
from deepshrink.mcu.graph import Graph, Node, QTensor
from deepshrink.mcu.names import Namer
from deepshrink.registry import Registry

# A C struct's designated initializer: field -> value, or a nested struct's fields (`.q = {.bias = ...}`).
Fields: TypeAlias = dict[str, "str | int | Fields"]


@dataclass
class Buffer:
    """Bytes one tensor or scratch area needs in the arena from node `first` to node `last`."""

    name: str  # the graph tensor it holds, or the scratch area's C name
    size: int
    first: int
    last: int
    external: str = ""  # "input" or "logits": the caller's memory, not the arena
    offset: int = -1
    cname: str = ""  # its C name (conv1_out) where it is not `name`
    ctype: str = "int8_t"  # its elements (an im2col column: int16_t; accumulators: int32_t)
    what: str = ""  # what it holds, for the arena plan's comment

    @property
    def c(self) -> str:
        return self.cname or self.name


@dataclass
class CArray:
    name: str
    ctype: str  # int8_t, int32_t or float
    values: np.ndarray
    layer: str = ""  # the layer it belongs to (model.c groups each layer's constants under its comment)


@dataclass
class CStruct:
    """A const struct: a layer's parameters, or a part of them another struct points to."""

    ctype: str
    name: str
    fields: Fields
    layer: str = ""


@dataclass
class Call:
    """One kernel call: `<kernel>(&<struct>, <fns>..., <buffers>...)`; args name buffers."""

    kernel: str  # the C function
    struct: str  # the const struct of its parameters
    args: list[tuple[str, str]]  # (buffer name, C type of the pointer)
    note: str = ""
    fns: tuple[str, ...] = ()  # function arguments before the buffers (a convolution's in-place kernels, or 0)


@dataclass(frozen=True)
class Spec:
    """One rendering of a specialized kernel (kernels.c.j2, `specs.<section>`): its C name and parameters."""

    section: str
    name: str
    params: tuple[tuple[str, str | int], ...]


@dataclass
class Program:
    graph: Graph
    calls: list[Call] = field(default_factory=list)
    consts: list[CArray | CStruct] = field(default_factory=list)  # in order: what a struct points to first
    descriptions: dict[str, str] = field(default_factory=dict)  # layer -> its one-line comment in model.c
    buffers: dict[str, Buffer] = field(default_factory=dict)
    kernels: set[str] = field(default_factory=lambda: {"base", "argmax"})
    specs: dict[str, Spec] = field(default_factory=dict)  # specialized kernels rendered for this model, by name
    layouts: list[str] = field(default_factory=list)  # each in-place layer's weight layout, for notes
    in_place: list[int] = field(default_factory=list)  # and the bytes it would take stored dense
    macs: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class State:
    """What lowering knows about each tensor: its storage (after aliases), layout and flatten order; and the
    layer being lowered, whose constants and scratch buffers are named after it."""

    graph: Graph
    prog: Program
    root: dict[str, str] = field(default_factory=dict)  # tensor -> tensor whose storage it shares
    layout: dict[str, str] = field(default_factory=dict)  # "chw" | "hwc" | "flat"
    order: dict[str, np.ndarray | None] = field(default_factory=dict)  # flat tensor -> storage permutation
    fused: set[str] = field(default_factory=set)  # nodes already lowered into another node's call
    in_place: bool = True  # may weights be stored sparse (else every layer dense: the reference build)
    names: Namer = field(default_factory=Namer)
    layer: str = ""  # the C name of the layer being lowered (conv1), set by lower() before each lowerer

    def tensor(self, name: str) -> QTensor:
        return self.graph.tensors[name]

    def buf(self, name: str) -> str:
        return self.root.get(name, name)

    def array(self, stem: str, ctype: str, values: np.ndarray) -> str:
        name = self.names.unique(f"{self.layer}_{stem}")
        self.prog.consts.append(CArray(name, ctype, values, self.layer))
        return name

    def struct(self, stem: str, ctype: str, fields: Fields) -> str:
        name = self.names.unique(f"{self.layer}_{stem}")
        self.prog.consts.append(CStruct(ctype, name, fields, self.layer))
        return name

    def scratch(self, node: int, size: int, stem: str, ctype: str, what: str) -> str:
        name = self.names.unique(f"{self.layer}_{stem}")
        self.prog.buffers[name] = Buffer(name, size, node, node, ctype=ctype, what=f"{self.layer} {what}")
        return name

    def call(self, kernel: str, ctype: str, fields: Fields, args: list[tuple[str, str]], note: str = "",
             fns: tuple[str, ...] = (), stem: str = "") -> None:
        """A kernel call whose parameters are a const struct named after the layer (`stem`: a second call's)."""
        name = self.names.unique(f"{self.layer}_{stem}") if stem else self.layer
        self.prog.consts.append(CStruct(ctype, name, fields, self.layer))
        self.prog.calls.append(Call(kernel, name, args, note, fns))

    def describe(self, text: str) -> None:
        self.prog.descriptions[self.layer] = f"{self.layer}: {text}"

    def use(self, section: str, name: str, **params: str | int) -> str:
        """Render kernels.c.j2's `section` once more as the function `name` (once per name); returns it."""
        self.prog.kernels.add(section)
        self.prog.specs[name] = Spec(section, name, tuple(sorted(params.items())))
        return name


Lowerer = Callable[[State, int, Node], None]
LOWERERS: Registry[Lowerer] = Registry("integer operator")


def multipliers(s: "State", x: QTensor, w_scale: np.ndarray, y: QTensor, n: int, node: Node) -> np.ndarray:
    """Per output channel: float32 (x_scale * w_scale) / y_scale as ONNX Runtime computes it, or with fixed
    arithmetic TFLite's (m, shift, lo, hi) rows from the same ratio in float64 (the node's fused clamp)."""
    if s.graph.arith == "fixed":
        ws = np.broadcast_to(w_scale.astype(np.float64), (n,))
        return requant_table(np.float64(x.scale) * ws / np.float64(y.scale), node.attrs.get("clamp", INT8))
    ws = np.broadcast_to(w_scale.astype(np.float32), (n,))
    return (np.float32(x.scale) * ws) / np.float32(y.scale)


def mult_value(s: "State", real: float, node: Node) -> "str | Fields":
    """One ds_mult_t initializer (a pooling's): a float literal, or the fixed-point struct's fields."""
    if s.graph.arith == "fixed":
        row = requant_table(np.array([real]), node.attrs.get("clamp", INT8))[0]
        return {f: f"{int(v)}LL" if f == "k" else int(v) for f, v in zip(MULT_FIELDS, row, strict=True)}
    return c_float(real)


def fold_bias(bias: np.ndarray, rows: np.ndarray, x_zp: int, source: str) -> np.ndarray:
    folded = bias.astype(np.int64) - x_zp * rows.astype(np.int64).sum(axis=1)
    if np.abs(folded).max(initial=0) >= 2**31:
        raise UserError(f"{source}: a bias does not fit int32 once the input zero point is folded into it")
    return folded.astype(np.int32)


def pack_rows(rows: np.ndarray, wide: bool = False) -> tuple[np.ndarray, int]:
    """int8 rows (n, k) -> (flash bytes in ds_dot's order, kp): zero-padded to kp = k rounded up to 4, then
    4, 2 or 1 rows at a time interleaved by 4-byte blocks; for int16 activations (`wide`: a convolution's
    column) each block is stored w0 w2 w1 w3 (kernels.c.j2, ds_dots16)."""
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


def q_fields(s: State, bias: np.ndarray, mult: np.ndarray, y: QTensor) -> Fields:
    """ds_q_t: the layer's biases, requantization multipliers and output zero point."""
    fast = s.graph.arith == "fixed" and bool(np.all(mult[:, 2] >= 0) and np.all(mult[:, 3] == INT8[0])
                                             and np.all(mult[:, 4] == INT8[1]))
    return {"bias": s.array("bias", "int32_t", bias), "mult": s.array("mult", "ds_mult_t", mult), "zp": y.zp,
            "fast": int(fast)}


def c_float(v: float | np.floating) -> str:
    """A float32 as an exact C hexadecimal literal."""
    return f"{float(np.float32(v)).hex()}f"


def stored_shape(t: QTensor, layout: str) -> str:
    """A tensor's shape in the order its C buffer stores it: "12x12x6 HWC", "120"."""
    if len(t.shape) != 3 or t.shape[1] * t.shape[2] == 1:
        return str(t.size)
    c, h, w = t.shape
    return f"{h}x{w}x{c} HWC" if layout == "hwc" else f"{c}x{h}x{w} CHW"


def quant(t: QTensor) -> str:
    """A tensor's quantization for a comment: int8 values v mean (v - zp) * scale."""
    return f"scale {t.scale:.4g}, zp {t.zp}"
