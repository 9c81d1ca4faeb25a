"""From the integer graph to kernel calls: layouts, fusions, weight packing, bias folding.

Choices made here, and why:
- Activations are stored H x W x C (channels last) except the network input, which arrives C x H x W as
  the dataset stores it: a convolution's receptive field is then a few contiguous runs of channels, and a
  1x1 convolution none at all. A flatten of an H x W x C tensor costs nothing: the next fully connected
  layer's weight columns are permuted once, here, to the storage order.
- A max pooling whose input is a convolution's only use is computed inside that convolution (the
  convolution's full output never exists, which is most of LeNet-5's RAM).
- Weight rows are padded with zeros to a multiple of 4 bytes and interleaved 4 (then 2, then 1) rows at a
  time, the order the dot-product kernel reads them in (kernels.c, ds_dot).
- Biases absorb the input zero point (b - zp_x * sum(w)): the inner loops multiply raw int8 values.
- Requantization multipliers are computed in float32 in ONNX Runtime's order, (x_scale * w_scale) / y_scale.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deepshrink.errors import UserError
from deepshrink.mcu.graph import Graph, Node, QTensor
from deepshrink.mcu.layouts import Layout, choose
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
class _State:
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


Lowerer = Callable[[_State, int, Node], None]
LOWERERS: Registry[Lowerer] = Registry("integer operator")


def _multipliers(x: QTensor, w_scale: np.ndarray, y: QTensor, n: int) -> np.ndarray:
    ws = np.broadcast_to(w_scale.astype(np.float32), (n,))
    return (np.float32(x.scale) * ws) / np.float32(y.scale)


def _fold_bias(bias: np.ndarray, rows: np.ndarray, x_zp: int, source: str) -> np.ndarray:
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


def _q_fields(s: _State, bias: np.ndarray, mult: np.ndarray, y: QTensor) -> str:
    b = s.array("b", "int32_t", bias)
    m = s.array("m", "float", mult)
    return f"{{{b}, {m}, {y.zp}}}"


def lower(graph: Graph, in_place: bool = True) -> Program:
    """The kernel calls of `graph`; `in_place` False stores every layer dense (the reference an in-place
    build is compared with)."""
    prog = Program(graph)
    s = _State(graph, prog, in_place=in_place)
    inp = graph.input
    s.layout[inp.name] = "chw" if len(inp.shape) == 3 else "flat"
    s.order[inp.name] = None
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(graph.nodes):
        for t in node.inputs:
            consumers.setdefault(t, []).append(i)
    s.prog.buffers[inp.name] = Buffer(inp.name, inp.size, -1, -1, external="input")
    for i, node in enumerate(graph.nodes):
        if node.output in s.fused:
            continue
        nxt = consumers.get(node.output, [])
        if node.kind == "conv" and len(nxt) == 1 and _poolable(graph.nodes[nxt[0]]):
            pool = graph.nodes[nxt[0]]
            s.fused.add(pool.output)
            node = Node("conv", node.inputs, pool.output, {**node.attrs, "pool": pool.attrs})
        elif node.kind == "conv" and len(nxt) == 1 and (residual := _residual(s, consumers, node, nxt[0])):
            add = graph.nodes[nxt[0]]
            s.fused.add(add.output)
            s.root[add.output] = s.buf(residual)  # written over the other operand, in place
            node = Node("conv", node.inputs, add.output, {**node.attrs, "conv_out": node.output, "add": add})
        LOWERERS.get(node.kind)(s, i, node)
        if node.kind != "reshape" and node.output not in s.root:
            size = s.tensor(node.output).size
            s.prog.buffers[node.output] = Buffer(node.output, -(-size // 4) * 4, i, i)
    _lifetimes(s)
    out = s.buf(graph.output)
    if out == inp.name or s.order.get(graph.output) is not None:
        raise UserError(f"{graph.source}: the logits must be a vector computed by an operator from the input")
    prog.buffers[out].external = "logits"
    return prog


def _residual(s: _State, consumers: dict[str, list[int]], conv: Node, at: int) -> str | None:
    """The other operand of the addition at node `at` when the convolution can compute the sum itself, in
    place over that operand: it must be an arena tensor of the same layout whose last use is this addition,
    and not the convolution's own input (still read around each output pixel)."""
    add = s.graph.nodes[at]
    if add.kind != "add" or conv.output not in add.inputs or add.inputs[0] == add.inputs[1]:
        return None
    other = add.inputs[1] if add.inputs[0] == conv.output else add.inputs[0]
    buf = s.prog.buffers.get(s.buf(other))
    alive_after = any(j > at for j in consumers.get(other, [])) or any(
        j > at for name, users in consumers.items() if name != other and s.buf(name) == s.buf(other) for j in users)
    if buf is None or buf.external or alive_after or s.buf(other) == s.buf(conv.inputs[0]) or \
            s.layout.get(other) != "hwc":
        return None
    return other


def _poolable(node: Node) -> bool:
    a = node.attrs
    return node.kind == "maxpool" and a["kernel"][0] == a["kernel"][1] == a["strides"][0] == a["strides"][1] \
        and not any(a["pads"])


def _lifetimes(s: _State) -> None:
    """Each buffer lives from the node writing it to the last node reading it (or an alias of it)."""
    for i, node in enumerate(s.graph.nodes):
        for t in node.inputs:
            b = s.prog.buffers.get(s.buf(t))
            if b is not None:
                b.last = max(b.last, i)


@LOWERERS.register("reshape")
def _lower_reshape(s: _State, i: int, node: Node) -> None:
    src, dst = s.tensor(node.inputs[0]), s.tensor(node.output)
    s.root[node.output] = s.buf(node.inputs[0])
    layout = s.layout[node.inputs[0]]
    if len(dst.shape) == 3:
        if layout == "flat" or layout == "chw":  # an (N,) vector viewed as (N, 1, 1), or an input reshaped
            if dst.shape[1] * dst.shape[2] != 1 and layout == "flat":
                raise UserError(f"{s.graph.source}: Reshape of a vector into an image is not supported")
            s.layout[node.output] = layout if dst.shape[1] * dst.shape[2] != 1 else "hwc"
            return
        if src.shape != dst.shape:
            raise UserError(f"{s.graph.source}: Reshape between images {src.shape} -> {dst.shape} is not supported")
        s.layout[node.output] = layout
        return
    s.layout[node.output] = "flat"
    if layout == "hwc" and len(src.shape) == 3 and src.shape[1] * src.shape[2] > 1:
        c, h, w = src.shape  # storage index of each ONNX (C, H, W)-order element
        s.order[node.output] = np.arange(c * h * w).reshape(h, w, c).transpose(2, 0, 1).reshape(-1)
    else:
        s.order[node.output] = s.order.get(node.inputs[0])


@LOWERERS.register("fc")
def _lower_fc(s: _State, i: int, node: Node) -> None:
    x, y = s.tensor(node.inputs[0]), s.tensor(node.output)
    if len(x.shape) != 1:
        raise UserError(f"{s.graph.source}: a fully connected layer on a {len(x.shape)}-D tensor (flatten it first)")
    w = node.attrs["w"]
    if (order := s.order.get(node.inputs[0])) is not None:
        permuted = np.empty_like(w)
        permuted[:, order] = w  # storage column order[j] holds ONNX input j
        w = permuted
    packed, kp = pack_rows(w)
    bias = _fold_bias(node.attrs["bias"], w, x.zp, s.graph.source)
    mult = _multipliers(x, node.attrs["w_scale"], y, w.shape[0])
    layout = choose(w, packed.size, allow_sparse=s.in_place)
    s.prog.macs += w.size
    s.layout[node.output] = "flat"
    s.order[node.output] = None
    args = [(s.buf(node.inputs[0]), "const int8_t *"), (node.output, "int8_t *")]
    if layout.kind == "dense":
        wname = s.array("w", "int8_t", packed)
        s.prog.calls.append(Call("fc", "ds_fc_t", [wname, _q_fields(s, bias, mult, y), str(kp), str(w.shape[0])],
                                 args))
        s.prog.kernels.add("fc")
        return
    name, struct, fields = _sparse(s, layout, bias, mult, y, w.shape, "int8_t")
    s.prog.calls.append(Call(name, struct, fields, [*args, ("", "int32_t *")], note=layout.note))


def _sparse(s: _State, layout: Layout, bias: np.ndarray, mult: np.ndarray, y: QTensor, shape: tuple[int, int],
            xt: str, instantiate: bool = True) -> tuple[str, str, list[str]]:
    """(the kernel for this in-place layout and activation type, its struct type, fields); `instantiate`
    False when another kernel (a convolution's four-column one) runs the layer instead."""
    rows = shape[0]
    if layout.kind.startswith("packed"):
        one = bool(np.all(mult == mult[0]))
        fields = [s.array("e", "uint8_t", layout.entries), _q_fields(s, bias, mult[:1] if one else mult, y),
                  str(rows), str(shape[1]), str(int(not one))]
        s.prog.kernels.add("packed")
        s.prog.instantiations.add(f"DS_PACKED({layout.gbits}, {xt})")
        s.prog.layouts.append(layout.note)
        s.prog.in_place.append(layout.dense_bytes)
        return f"packed{layout.gbits}_{xt}", "ds_packed_t", fields
    count = "uint16_t" if layout.counts.max(initial=0) >= 256 else "uint8_t"
    params = f"{layout.gbits}, {count}, {xt}" if layout.kind in ("sparse12", "sparse10") else f"{count}, {xt}"
    s.prog.kernels.add(layout.kind)
    if instantiate:
        s.prog.instantiations.add(f"DS_{layout.kind.upper()}({params})")
    s.prog.layouts.append(layout.note)
    s.prog.in_place.append(layout.dense_bytes)
    return (f"{layout.kind}_{params.replace(', ', '_')}", "ds_sparse_t",
            _sparse_fields(s, layout, bias, mult, y, rows, count))


def _sparse_fields(s: _State, layout: Layout, bias: np.ndarray, mult: np.ndarray, y: QTensor, rows: int,
                   count: str) -> list[str]:
    """ds_sparse_t's initializer; a layer whose rows share one multiplier stores it once, one without fillers
    no compensation list, and the biases take the fewest bytes they fit (2, 3 or 4)."""
    one = bool(np.all(mult == mult[0]))
    entries = s.array("e", "uint8_t", layout.entries)
    counts = s.array("n", count, layout.counts)
    cb = s.array("cb", "int8_t", layout.codebook) if layout.codebook.size else "0"
    comp = s.array("comp", "int16_t", layout.comp) if layout.comp.size > 3 else "0"
    top = int(np.abs(bias.astype(np.int64)).max(initial=0))
    nbytes = 2 if top < 1 << 15 else 3 if top < 1 << 23 else 4
    if nbytes == 4:
        stored = s.array("b", "int32_t", bias)
    elif nbytes == 2:
        stored = s.array("b", "int16_t", bias.astype(np.int16))
    else:
        le = bias.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3]
        stored = s.array("b", "uint8_t", le.reshape(-1))
    m = s.array("m", "float", mult[:1] if one else mult)
    q = f"{{(const int32_t *)(const void *){stored}, {m}, {y.zp}}}"
    return [entries, counts, cb, comp, q, str(rows), str(int(not one)), str(nbytes)]


@LOWERERS.register("conv")
def _lower_conv(s: _State, i: int, node: Node) -> None:
    a = node.attrs
    x, y = s.tensor(node.inputs[0]), s.tensor(a.get("conv_out", node.output))
    w, g = a["w"], a["group"]
    o, cg, kh, kw = w.shape
    chw = s.layout[node.inputs[0]] == "chw"
    if s.layout[node.inputs[0]] == "flat":
        raise UserError(f"{s.graph.source}: a convolution on a flattened tensor is not supported")
    pool = a.get("pool")
    pk, ps = (pool["kernel"][0], pool["strides"][0]) if pool else (1, 1)
    conv_w = (x.shape[2] + a["pads"][1] + a["pads"][3] - kw) // a["strides"][1] + 1
    oh, ow = s.tensor(node.output).shape[1:]
    if chw:  # column order (kx, c, ky), slices padded to even (kernels.c, ds_slices)
        slice_ = -(-(cg * kh) // 2) * 2
        cols = np.zeros((o, kw, slice_), np.int8)
        cols[:, :, : cg * kh] = w.transpose(0, 3, 1, 2).reshape(o, kw, cg * kh)
        rows = cols.reshape(o, kw * slice_)
    else:  # (ky, kx, c)
        slice_ = 0
        rows = w.transpose(0, 2, 3, 1).reshape(o, -1)
    packed, kps = zip(*(pack_rows(rows[j * (o // g) : (j + 1) * (o // g)], wide=True) for j in range(g)),
                      strict=True)
    kp = kps[0]
    # The input zero point folds into the bias over the real weights only (slice padding multiplies zeros).
    bias = _fold_bias(a["bias"], w.reshape(o, -1), x.zp, s.graph.source)
    mult = _multipliers(x, a["w_scale"], y, o)
    ncols = x.shape[2] + a["pads"][1] + a["pads"][3]
    rowlen = max(ncols * slice_, (conv_w - 1) * a["strides"][1] * slice_ + kp) if chw else 0
    rowlen = -(-rowlen // 2) * 2
    layout = choose(rows, sum(p.size for p in packed), allow_sparse=s.in_place and g == 1)
    rows_fn, cols_fn, sparse = "0", "0", "0"
    if layout.kind == "dense":
        wname = s.array("w", "int8_t", np.concatenate(packed))
    else:  # the sparse rows read the column in its natural order: no padding, no block reordering
        wname = "0"
        # A 2x2 pooling window's four columns in one pass (immediate offsets: 3 x S bytes <= 4095).
        four = layout.kind in ("sparse12", "sparse10") and pk == ps == 2 and not chw and 3 * 2 * kp <= 4095
        kernel, struct, sp_fields = _sparse(s, layout, bias, mult, y, rows.shape, "int16_t", instantiate=not four)
        name = f"ds_sp{len(s.prog.definitions)}"
        s.prog.definitions.append(f"static const {struct} {name} = {{{', '.join(sp_fields)}}};")
        sparse = f"&{name}"
        rows_fn = "0" if four else f"ds_{kernel}"
        if four:
            count = "uint16_t" if layout.counts.max(initial=0) >= 256 else "uint8_t"
            cols_fn = f"ds_{layout.kind}c_{layout.gbits}_{count}_{2 * kp}"
            s.prog.instantiations.add(f"DS_{layout.kind.upper()}C({layout.gbits}, {count}, {2 * kp})")
            s.prog.kernels.add(f"{layout.kind}c")
    fields = [wname, _q_fields(s, bias, mult, y),
              *map(str, (x.shape[1], x.shape[2], x.shape[0], o, kh, kw, *a["strides"], a["pads"][0], a["pads"][1],
                         g, kp, pk, ps, oh, ow, x.zp, int(chw), slice_, ncols, rowlen)), *_fused_add(s, node), sparse]
    col = s.scratch(i, 2 * (pk * rowlen if chw else kp * (4 if cols_fn != "0" else 1)))
    acc = s.scratch(i, 4 * pk * pk * (-(-(o // g) // 4) * 4))
    note = "; ".join(filter(None, [f"max pool {pk}x{pk} fused" if pool else "",
                                   "addition fused, in place" if "add" in a else "",
                                   layout.note if layout.kind != "dense" else ""]))
    s.prog.calls.append(Call("conv", "ds_conv_t", fields, [(s.buf(node.inputs[0]), "const int8_t *"),
                                                          (s.buf(node.output), "int8_t *"), (col, "int16_t *"),
                                                          (acc, "int32_t *")], note=note,
                             fn=f"{rows_fn}, {cols_fn}"))
    s.prog.kernels.add("conv")
    conv_h = (x.shape[1] + a["pads"][0] + a["pads"][2] - kh) // a["strides"][0] + 1
    s.prog.macs += o * cg * kh * kw * (oh * ow * pk * pk if pool else conv_h * conv_w)
    s.layout[node.output] = "hwc"


@LOWERERS.register("maxpool")
def _lower_maxpool(s: _State, i: int, node: Node) -> None:
    x, y = s.tensor(node.inputs[0]), s.tensor(node.output)
    if s.layout[node.inputs[0]] != "hwc" and x.shape[0] > 1:
        raise UserError(f"{s.graph.source}: max pooling straight on a multi-channel network input is not supported")
    a = node.attrs
    fields = [str(v) for v in (x.shape[1], x.shape[2], x.shape[0], y.shape[1], y.shape[2], *a["kernel"],
                               *a["strides"], a["pads"][0], a["pads"][1])]
    s.prog.calls.append(Call("maxpool", "ds_pool_t", fields, [(s.buf(node.inputs[0]), "const int8_t *"),
                                                             (node.output, "int8_t *")]))
    s.prog.kernels.add("maxpool")
    s.layout[node.output] = "hwc"


def _add_fields(s: _State, node: Node) -> list[str]:
    """ds_add_t's initializer: ONNX Runtime's scale ratios in float32, zero points in its own domain."""
    a, b, y = (s.tensor(n) for n in (*node.inputs, node.output))
    off = s.graph.offset
    ra, rb = np.float32(a.scale) / np.float32(y.scale), np.float32(b.scale) / np.float32(y.scale)
    return [c_float(ra), c_float(rb), str(a.zp + off), str(b.zp + off), str(y.zp + off), str(off), str(y.size)]


def _fused_add(s: _State, node: Node) -> list[str]:
    """The conv struct's last fields: a pointer to its fused addition's parameters, and which operand it is."""
    add = node.attrs.get("add")
    if add is None:
        return ["0", "0"]
    name = f"ds_add{len(s.prog.definitions)}"
    s.prog.definitions.append(f"static const ds_add_t {name} = {{{', '.join(_add_fields(s, add))}}};")
    return [f"&{name}", str(int(add.inputs[0] == node.attrs["conv_out"]))]


@LOWERERS.register("add")
def _lower_add(s: _State, i: int, node: Node) -> None:
    if s.layout[node.inputs[0]] != s.layout[node.inputs[1]] or s.order.get(node.inputs[0]) is not None or \
            s.order.get(node.inputs[1]) is not None:
        raise UserError(f"{s.graph.source}: an addition of tensors stored in different orders is not supported")
    fields = _add_fields(s, node)
    s.prog.calls.append(Call("add", "ds_add_t", fields, [(s.buf(node.inputs[0]), "const int8_t *"),
                                                        (s.buf(node.inputs[1]), "const int8_t *"),
                                                        (node.output, "int8_t *")]))
    s.prog.kernels.add("add")
    s.layout[node.output] = s.layout[node.inputs[0]]
    s.order[node.output] = None


def _global(s: _State, i: int, node: Node) -> None:
    """QLinearGlobalAveragePool, and an average pooling over the whole image without padding (ONNX Runtime
    runs that one on the same code)."""
    x, y = s.tensor(node.inputs[0]), s.tensor(node.output)
    c, n = x.shape[0], x.shape[1] * x.shape[2]
    mult = np.float32(x.scale) / (np.float32(y.scale) * np.float32(n))
    acc = s.scratch(i, 4 * c)
    s.prog.calls.append(Call("gavgpool", "ds_gavg_t", [c_float(mult), str(n), str(c), str(x.zp), str(y.zp)],
                             [(s.buf(node.inputs[0]), "const int8_t *"), (node.output, "int8_t *"),
                              (acc, "int32_t *")]))
    s.prog.kernels.add("gavgpool")
    s.layout[node.output] = "hwc"


@LOWERERS.register("gavgpool")
def _lower_gavgpool(s: _State, i: int, node: Node) -> None:
    if s.layout[node.inputs[0]] != "hwc" and s.tensor(node.inputs[0]).shape[0] > 1:
        raise UserError(f"{s.graph.source}: global pooling straight on a multi-channel network input is not "
                        "supported")
    _global(s, i, node)


@LOWERERS.register("avgpool")
def _lower_avgpool(s: _State, i: int, node: Node) -> None:
    x, y = s.tensor(node.inputs[0]), s.tensor(node.output)
    a = node.attrs
    if s.layout[node.inputs[0]] != "hwc" and x.shape[0] > 1:
        raise UserError(f"{s.graph.source}: average pooling straight on a multi-channel network input is not "
                        "supported")
    if tuple(a["kernel"]) == tuple(x.shape[1:]) and not any(a["pads"]):
        _global(s, i, node)
        return
    off = s.graph.offset
    fields = [*map(str, (x.shape[1], x.shape[2], x.shape[0], y.shape[1], y.shape[2], *a["kernel"], *a["strides"],
                         a["pads"][0], a["pads"][1], a["count_include_pad"], x.zp + off, y.zp + off, off)),
              c_float(x.scale), c_float(y.scale)]
    s.prog.calls.append(Call("avgpool", "ds_avgpool_t", fields, [(s.buf(node.inputs[0]), "const int8_t *"),
                                                                (node.output, "int8_t *")]))
    s.prog.kernels.add("avgpool")
    s.layout[node.output] = "hwc"


def c_float(v: float | np.floating) -> str:
    """A float32 as an exact C hexadecimal literal."""
    return f"{float(np.float32(v)).hex()}f"


def lowered_kinds() -> list[str]:
    return LOWERERS.names()


def describe(prog: Program) -> dict[str, Any]:
    """Facts about the program for results rows: kernels used and MACs per inference."""
    return {"mcu_kernels": " ".join(sorted(prog.kernels - {"base", "argmax"})), "macs": prog.macs}
