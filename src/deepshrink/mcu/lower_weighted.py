"""Lowerers of the layers with weights: fully connected and convolution (grouped, depthwise, with a fused max
pooling or residual addition), their weights stored dense or in place in the layout layouts.choose picks."""

import numpy as np

from deepshrink.errors import UserError
from deepshrink.mcu.graph import Node, QTensor
from deepshrink.mcu.layouts import Layout, choose
from deepshrink.mcu.lower_simple import fused_add
from deepshrink.mcu.program import LOWERERS, Call, State, fold_bias, multipliers, pack_rows, q_fields


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
    mult = multipliers(x, node.attrs["w_scale"], y, w.shape[0])
    layout = choose(w, packed.size, allow_sparse=s.in_place)
    s.prog.macs += w.size
    s.layout[node.output] = "flat"
    s.order[node.output] = None
    xbuf = s.buf(node.inputs[0])
    if layout.kind.startswith("sparse") and (gathered := _gather(s, i, w, layout, xbuf)) is not None:
        xbuf, w, layout = gathered
    args = [(xbuf, "const int8_t *"), (node.output, "int8_t *")]
    if layout.kind == "dense":
        wname = s.array("w", "int8_t", packed)
        s.prog.calls.append(Call("fc", "ds_fc_t", [wname, q_fields(s, bias, mult, y), str(kp), str(w.shape[0])],
                                 args))
        s.prog.kernels.add("fc")
        return
    name, struct, fields = _sparse(s, layout, bias, mult, y, w.shape, "int8_t")
    s.prog.calls.append(Call(name, struct, fields, [*args, ("", "int32_t *")], note=layout.note))


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
    out = s.scratch(i, -(-int(live.sum()) // 4) * 4)
    fields = [s.array("runs", "uint8_t", runs), str(runs.size // 2)]
    s.prog.calls.append(Call("gather", "ds_gather_t", fields, [(xbuf, "const int8_t *"), (out, "int8_t *")],
                             note=f"{int(live.sum())} of {live.size} inputs live"))
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
            xt: str, instantiate: bool = True) -> tuple[str, str, list[str]]:
    """(the kernel for this in-place layout and activation type, its struct type, fields); `instantiate`
    False when another kernel (a convolution's four-column one) runs the layer instead."""
    rows = shape[0]
    if layout.kind.startswith("packed"):
        one = bool(np.all(mult == mult[0]))
        fields = [s.array("e", "uint8_t", layout.entries), q_fields(s, bias, mult[:1] if one else mult, y),
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


def _sparse_fields(s: State, layout: Layout, bias: np.ndarray, mult: np.ndarray, y: QTensor, rows: int,
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
def _lower_conv(s: State, i: int, node: Node) -> None:
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
    conv_h = (x.shape[1] + a["pads"][0] + a["pads"][2] - kh) // a["strides"][0] + 1
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
    bias = fold_bias(a["bias"], w.reshape(o, -1), x.zp, s.graph.source)
    mult = multipliers(x, a["w_scale"], y, o)
    ncols = x.shape[2] + a["pads"][1] + a["pads"][3]
    rowlen = max(ncols * slice_, (conv_w - 1) * a["strides"][1] * slice_ + kp) if chw else 0
    rowlen = -(-rowlen // 2) * 2
    positions = (oh * ow * pk * pk) if pool else conv_h * conv_w
    layout = choose(rows, sum(p.size for p in packed), allow_sparse=s.in_place and g == 1, repeats=positions,
                    wide=True)
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
    fields = [wname, q_fields(s, bias, mult, y),
              *map(str, (x.shape[1], x.shape[2], x.shape[0], o, kh, kw, *a["strides"], a["pads"][0], a["pads"][1],
                         g, kp, pk, ps, oh, ow, x.zp, int(chw), slice_, ncols, rowlen)), *fused_add(s, node), sparse]
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
    s.prog.macs += o * cg * kh * kw * (oh * ow * pk * pk if pool else conv_h * conv_w)
    s.layout[node.output] = "hwc"
