"""Lowerers of the layers with weights: fully connected and convolution (grouped, depthwise, with a fused max
pooling or residual addition), their weights stored dense or in place in the layout layouts.choose picks."""

import numpy as np

from deepshrink.errors import UserError
from deepshrink.mcu.graph import Node, QTensor
from deepshrink.mcu.layouts import Layout, choose
from deepshrink.mcu.lower_fast import lower_depthwise
from deepshrink.mcu.lower_simple import fused_add
from deepshrink.mcu.program import (
    LOWERERS,
    Fields,
    State,
    fold_bias,
    multipliers,
    pack_rows,
    q_fields,
    quant,
    stored_shape,
)

SHORT = {"int8_t": "i8", "int16_t": "i16", "uint8_t": "u8", "uint16_t": "u16"}  # in kernel names


@LOWERERS.register("fc")
def _lower_fc(s: State, i: int, node: Node) -> None:
    x, y = s.tensor(node.inputs[0]), s.tensor(node.output)
    if len(x.shape) != 1:
        raise UserError(f"{s.graph.source}: a fully connected layer on a {len(x.shape)}-D tensor (flatten it first)")
    w = node.attrs["w"]
    if (order := s.order.get(node.inputs[0])) is not None:
        permuted = np.empty_like(w)
        permuted[:, order] = w  # storage column order[j] holds ONNX input j
        w = permuted
    packed, kp = pack_rows(w)
    bias = fold_bias(node.attrs["bias"], w, x.zp, s.graph.source)
    mult = multipliers(s, x, node.attrs["w_scale"], y, w.shape[0], node)
    layout = choose(w, packed.size, allow_sparse=s.in_place)
    s.prog.macs += w.size
    s.layout[node.output] = "flat"
    s.order[node.output] = None
    xbuf, shape = s.buf(node.inputs[0]), "x".join(map(str, w.shape))
    if layout.kind.startswith("sparse") and (gathered := _gather(s, i, w, layout, xbuf)) is not None:
        xbuf, w, layout = gathered
        shape += f" ({w.shape[1]} inputs live)"
    args = [(xbuf, "const int8_t *"), (node.output, "int8_t *")]
    s.describe(f"{shape} int8 weights ({_scales(node)}){_stored(layout)}; out int8 {y.size}, {quant(y)}")
    if layout.kind == "dense":
        fields = {"w": s.array("weights", "int8_t", packed), "q": q_fields(s, bias, mult, y), "kp": kp,
                  "n_out": w.shape[0]}
        s.call("ds_fc", "ds_fc_t", fields, args)
        s.prog.kernels.add("fc")
        return
    name, struct, fields = _sparse(s, layout, bias, mult, y, w.shape, "int8_t")
    s.call(name, struct, fields, [*args, ("", "int32_t *")], note=layout.note)


def _scales(node: Node) -> str:
    ws = node.attrs["w_scale"]
    return "per-channel scales" if ws.size > 1 and np.any(ws != ws[0]) else "one scale"


def _stored(layout: Layout) -> str:
    return "" if layout.kind == "dense" else f" stored {layout.note}"


def _gather(s: State, i: int, w: np.ndarray, layout: Layout, xbuf: str) -> tuple[str, np.ndarray, Layout] | None:
    """Inputs no row reads (a pruned MNIST layer's image border: a quarter of LeNet-300-100's fc1) dropped
    before the layer: its live inputs copied side by side (runs of (start, length)), so the sparse rows'
    gaps skip only live ones and need fewer fillers. Taken when the rows shrink by more than the runs cost."""
    live = np.asarray(w.any(axis=0))
    if live.all() or not live.any():
        return None
    runs = _runs(live)
    compact = choose(w[:, live], layout.dense_bytes)
    if not compact.kind.startswith("sparse") or compact.nbytes + 2 * runs.size >= layout.nbytes:
        return None
    out = s.scratch(i, -(-int(live.sum()) // 4) * 4, "live", "int8_t", f"live inputs: int8 x {int(live.sum())}")
    fields: Fields = {"runs": s.array("runs", "uint8_t", runs), "n": runs.size // 2}
    s.call("ds_gather", "ds_gather_t", fields, [(xbuf, "const int8_t *"), (out, "int8_t *")],
           note=f"{int(live.sum())} of {live.size} inputs live", stem="gather")
    s.prog.kernels.add("gather")
    return out, w[:, live], compact


def _runs(live: np.ndarray) -> np.ndarray:
    """(skipped, copied) byte pairs walking `live` (kernels.c, ds_gather); a longer stretch takes more pairs."""
    out: list[int] = []
    edges = np.flatnonzero(np.diff(np.concatenate([[0], live.astype(np.int8), [0]])))
    end = 0
    for start, stop in zip(edges[0::2], edges[1::2], strict=True):
        skip, copy = int(start) - end, int(stop - start)
        while skip > 255 or copy > 255:
            step = min(copy, 255) if skip <= 255 else 0
            out += [min(skip, 255), step]
            skip, copy = skip - min(skip, 255), copy - step
        out += [skip, copy]
        end = int(stop)
    return np.array(out, np.uint8)


def _sparse(s: State, layout: Layout, bias: np.ndarray, mult: np.ndarray, y: QTensor, shape: tuple[int, int],
            xt: str, specialize: bool = True, stem: str = "") -> tuple[str, str, Fields]:
    """(the kernel for this in-place layout and activation type, its struct type, fields); `specialize`
    False when another kernel (a convolution's four-column one) runs the layer instead."""
    rows = shape[0]
    s.prog.layouts.append(layout.note)
    s.prog.in_place.append(layout.dense_bytes)
    if layout.kind.startswith("packed"):
        one = bool(np.all(mult == mult[0]))
        fields: Fields = {"w": s.array("packed", "uint8_t", layout.entries),
                          "q": q_fields(s, bias, mult[:1] if one else mult, y), "n_out": rows, "k": shape[1],
                          "per_channel": int(not one)}
        name = s.use("packed", f"ds_{layout.kind}_{SHORT[xt]}", bits=layout.gbits, xt=xt)
        return name, "ds_packed_t", fields
    count = "uint16_t" if layout.counts.max(initial=0) >= 256 else "uint8_t"
    gaps = {"g": layout.gbits} if layout.kind in ("sparse12", "sparse10") else {}
    name = f"ds_{layout.kind}{''.join(f'_g{v}' for v in gaps.values())}_{SHORT[count]}_{SHORT[xt]}"
    s.prog.kernels.add(layout.kind)
    if specialize:
        s.use(layout.kind, name, ct=count, xt=xt, **gaps)
    return name, "ds_sparse_t", _sparse_fields(s, layout, bias, mult, y, rows, count, stem)


def _sparse_fields(s: State, layout: Layout, bias: np.ndarray, mult: np.ndarray, y: QTensor, rows: int,
                   count: str, stem: str) -> Fields:
    """ds_sparse_t; a layer whose rows share one multiplier stores it once, one without fillers no
    compensation list, and the biases take the fewest bytes they fit (2, 3 or 4)."""
    one = bool(np.all(mult == mult[0]))
    fields: Fields = {"e": s.array("entries", "uint8_t", layout.entries),
                      "count": s.array("counts", count, layout.counts)}
    if layout.codebook.size:
        fields["cb"] = s.array("codebook", "int8_t", layout.codebook)
    if layout.comp.size > 3:
        fields["comp"] = s.array("comp", "int16_t", layout.comp)
    top = int(np.abs(bias.astype(np.int64)).max(initial=0))
    nbytes = 2 if top < 1 << 15 else 3 if top < 1 << 23 else 4
    stored = {4: lambda: bias, 2: lambda: bias.astype(np.int16),
              3: lambda: bias.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].reshape(-1)}[nbytes]()
    bias_name = s.array(f"{stem}bias", {4: "int32_t", 2: "int16_t", 3: "uint8_t"}[nbytes], stored)
    fields["q"] = {"bias": f"(const int32_t *)(const void *){bias_name}",
                   "mult": s.array(f"{stem}mult", "ds_mult_t", mult[:1] if one else mult), "zp": y.zp}
    return {**fields, "n_out": rows, "per_channel": int(not one), "bias_bytes": nbytes}


@LOWERERS.register("conv")
def _lower_conv(s: State, i: int, node: Node) -> None:
    a = node.attrs
    x, y = s.tensor(node.inputs[0]), s.tensor(a.get("conv_out", node.output))
    w, g = a["w"], a["group"]
    o, cg, kh, kw = w.shape
    chw = s.layout[node.inputs[0]] == "chw"
    if s.layout[node.inputs[0]] == "flat":
        raise UserError(f"{s.graph.source}: a convolution on a flattened tensor is not supported")
    if lower_depthwise(s, i, node):
        _describe_conv(s, node, Layout("dense", w.size, 0), s.tensor(node.output))
        return
    pool = a.get("pool")
    pk, ps = (pool["kernel"][0], pool["strides"][0]) if pool else (1, 1)
    conv_w = (x.shape[2] + a["pads"][1] + a["pads"][3] - kw) // a["strides"][1] + 1
    conv_h = (x.shape[1] + a["pads"][0] + a["pads"][2] - kh) // a["strides"][0] + 1
    oh, ow = s.tensor(node.output).shape[1:]
    rows, slice_ = _columns(w, chw)
    packed, kps = zip(*(pack_rows(rows[j * (o // g) : (j + 1) * (o // g)], wide=True) for j in range(g)),
                      strict=True)
    kp = kps[0]
    # The input zero point folds into the bias over the real weights only (slice padding multiplies zeros).
    bias = fold_bias(a["bias"], w.reshape(o, -1), x.zp, s.graph.source)
    mult = multipliers(s, x, a["w_scale"], y, o, node)
    ncols = x.shape[2] + a["pads"][1] + a["pads"][3]
    rowlen = max(ncols * slice_, (conv_w - 1) * a["strides"][1] * slice_ + kp) if chw else 0
    rowlen = -(-rowlen // 2) * 2
    positions = (oh * ow * pk * pk) if pool else conv_h * conv_w
    layout = choose(rows, sum(p.size for p in packed), allow_sparse=s.in_place and g == 1, repeats=positions,
                    wide=True)
    _describe_conv(s, node, layout, s.tensor(node.output))
    perm = layout.kind == "dense" and not chw and cg % 4 == 0  # kernels.c.j2, ds_widen4
    rb = _row_buffer(w, a, x.shape[0]) if layout.kind == "dense" and not chw and not pool else None
    if rb:  # the row buffer holds each pixel column's kh rows side by side: weights in (kx, ky, c) order
        padded = np.zeros((o, kw, kh, rb[2]), np.int8)
        padded[..., :cg] = w.transpose(0, 3, 2, 1)
        packed, kp = pack_rows(padded.reshape(o, -1))
        packed = (packed,)
    elif perm:
        packed = tuple(pack_rows(rows[j * (o // g) : (j + 1) * (o // g)])[0] for j in range(g))
    four = layout.kind in ("sparse12", "sparse10") and pk == ps == 2 and not chw and 3 * 2 * kp <= 4095
    weights, sparse, fns = _conv_weights(s, layout, np.concatenate(packed), (bias, mult, y), rows, kp, four)
    fields = {**weights, "q": q_fields(s, bias, mult, y), "in_h": x.shape[1], "in_w": x.shape[2], "in_c": x.shape[0],
              "out_c": o, "kh": kh, "kw": kw, "sh": a["strides"][0], "sw": a["strides"][1], "pt": a["pads"][0],
              "pl": a["pads"][1], "groups": g, "kp": kp, "pool_k": pk, "pool_s": ps, "out_h": oh, "out_w": ow,
              "in_zp": x.zp, "chw": int(chw), "perm": int(perm), "slice": slice_, "ncols": ncols, "rowlen": rowlen,
              **fused_add(s, node), **sparse}
    note = "; ".join(filter(None, [f"max pool {pk}x{pk} fused" if pool else "",
                                   "addition fused, in place" if "add" in a else "",
                                   layout.note if layout.kind != "dense" else ""]))
    if rb:
        fields = {**fields, "rb_cols": (conv_w - 1) * a["strides"][1] + kw, "rb_c": rb[2]}
    _call_conv(s, i, node, fields, note, fns, rb[:2] if rb else (0, 0), two=layout.kind == "dense" and not pool,
               four=four)
    s.prog.kernels.add("conv")
    s.prog.macs += o * cg * kh * kw * (oh * ow * pk * pk if pool else conv_h * conv_w)
    s.layout[node.output] = "hwc"


def _row_buffer(w: np.ndarray, a: dict, in_c: int) -> tuple[int, int, int] | None:
    """(off, unroll, channels) of a dense convolution that ds_conv_rb takes (no groups; its rows in groups of
    4; each pixel's channels padded to a multiple of 4, their weights 0, at most a third more; whole loop
    iterations of `unroll` blocks of 4 values; LDR's immediate offsets over three columns), else None. off:
    bytes from one output column's values to the next's in the row buffer."""
    o, _, kh, kw = w.shape
    c = -(-in_c // 4) * 4
    nblk = kh * kw * c // 4
    unroll = next((u for u in (6, 4, 3) if nblk % u == 0), 0)
    off = 2 * a["strides"][1] * kh * c
    # Padding a pixel's channels costs multiplies: 3 -> 4 (an RGB input) pays, 1 -> 4 (a spectrogram) does not.
    if a["group"] != 1 or o % 4 or 3 * c > 4 * in_c or not unroll or 2 * off + 8 * unroll > 4095:
        return None
    return off, unroll, c


def _call_conv(s: State, i: int, node: Node, f: Fields, note: str, fns: tuple[str, str], rb: tuple[int, int],
               two: bool, four: bool) -> None:
    """The layer's call and scratch buffers: ds_conv_rb with the column kernels for rb = (off, unroll) and
    its row buffer, or ds_conv (im2col columns; `two`: two output columns at a time, ds_dots16x2; `four`: a
    pooling window's)."""
    io = [(s.buf(node.inputs[0]), "const int8_t *"), (s.buf(node.output), "int8_t *")]
    kp, o = _int(f, "kp"), _int(f, "out_c")
    off, unroll = rb
    if off:
        buf = s.scratch(i, 2 * _int(f, "kh") * _int(f, "rb_cols") * _int(f, "rb_c"), "rows", "int16_t",
                        "input rows, widened: int16")
        acc = s.scratch(i, 4 * 3 * o, "acc", "int32_t", "accumulators of three columns: int32")
        # Kernels specialized for the layer's offsets (pairs and threes), or, optimizing for size, one pair
        # kernel for every layer (its offsets in registers; ~10 % more cycles on the MLPerf Tiny ResNet-8).
        if s.graph.optimize == "size":
            fns = ("ds_conv_cols2", "0")
            s.prog.kernels.add("convrb2")
        else:
            name = s.use("convrbpair", f"ds_conv_cols_o{off}_u{unroll}", off=off, u=unroll)
            fns = (f"{name}_2", f"{name}_3")
        s.call("ds_conv_rb", "ds_conv_t", f, [*io, (buf, "int16_t *"), (acc, "int32_t *")], note=note, fns=fns)
        return
    pk, chw = _int(f, "pool_k"), bool(_int(f, "chw"))
    col = s.scratch(i, 2 * (pk * _int(f, "rowlen") if chw else kp * (4 if four else 2 if two else 1)), "col",
                    "int16_t", "im2col " + ("rows" if chw else "columns" if four or two else "column") + ": int16")
    pairs = s.scratch(i, 4 * kp if two else 4, "pairs", "int16_t", "two columns interleaved: int16")
    acc = s.scratch(i, 4 * max(pk * pk, 1 + two) * (-(-(o // _int(f, "groups")) // 4) * 4), "acc", "int32_t",
                    "accumulators: int32")
    s.call("ds_conv", "ds_conv_t", f, [*io, (col, "int16_t *"), (pairs, "int16_t *"), (acc, "int32_t *")],
           note=note, fns=fns)
    s.prog.kernels.add("convim")


def _int(f: Fields, key: str) -> int:
    v = f[key]
    assert isinstance(v, int | np.integer), key
    return int(v)


def _columns(w: np.ndarray, chw: bool) -> tuple[np.ndarray, int]:
    """(weight rows in the order the kernel's columns hold the input, slice length): (kx, c, ky) with slices
    padded to even for a C x H x W input (kernels.c.j2, ds_slices), else (ky, kx, c)."""
    o, cg, kh, kw = w.shape
    if not chw:
        return w.transpose(0, 2, 3, 1).reshape(o, -1), 0
    slice_ = -(-(cg * kh) // 2) * 2
    cols = np.zeros((o, kw, slice_), np.int8)
    cols[:, :, : cg * kh] = w.transpose(0, 3, 1, 2).reshape(o, kw, cg * kh)
    return cols.reshape(o, kw * slice_), slice_


def _conv_weights(s: State, layout: Layout, packed: np.ndarray, q: tuple[np.ndarray, np.ndarray, QTensor],
                  rows: np.ndarray, kp: int, four: bool) -> tuple[Fields, Fields, tuple[str, str]]:
    """(the conv struct's dense weights, or its in-place ones, and ds_conv's in-place kernels (rows, four
    columns)). Stored in place, the
    rows read the column in its natural order: no padding, no block reordering; with a 2x2 pooling window
    (immediate offsets: 3 x S bytes <= 4095) one kernel takes its four columns in one pass."""
    if layout.kind == "dense":
        return {"w": s.array("weights", "int8_t", packed)}, {}, ("0", "0")
    kernel, struct, fields = _sparse(s, layout, *q, rows.shape, "int16_t", specialize=not four, stem="rows_")
    sparse = s.struct("sparse", struct, fields)
    if not four:
        return {}, {"sparse": f"&{sparse}"}, (kernel, "0")
    count = "uint16_t" if layout.counts.max(initial=0) >= 256 else "uint8_t"
    cols = s.use(f"{layout.kind}c", f"ds_{layout.kind}_cols4_g{layout.gbits}_{SHORT[count]}_s{2 * kp}",
                 g=layout.gbits, ct=count, s=2 * kp)
    return {}, {"sparse": f"&{sparse}"}, ("0", cols)


def _describe_conv(s: State, node: Node, layout: Layout, y: QTensor) -> None:
    a = node.attrs
    geometry = [f"stride {a['strides'][0]}" if max(a["strides"]) > 1 else "",
                f"pads {'/'.join(map(str, a['pads']))}" if any(a["pads"]) else "",
                f"{a['group']} groups" if a["group"] > 1 else "",
                "max pool {0}x{0} fused".format(a["pool"]["kernel"][0]) if "pool" in a else "",
                "addition fused" if "add" in a else ""]
    extra = "".join(f", {g}" for g in geometry if g)
    s.describe(f"{'x'.join(map(str, a['w'].shape))} int8 weights ({_scales(node)}){_stored(layout)}{extra}; "
               f"out int8 {stored_shape(y, 'hwc')}, {quant(y)}")
