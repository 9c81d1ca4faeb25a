"""Lowerers of the operators without weights: reshape/flatten (a view), max, average and global pooling,
and the addition (ONNX Runtime's QLinearAdd arithmetic, also fused into a convolution)."""

from typing import Any

import numpy as np

from deepshrink.errors import UserError
from deepshrink.mcu.fixed import INT8, MULT_FIELDS, add_params, add_tables, requant_table, softmax_params
from deepshrink.mcu.graph import Node, QTensor
from deepshrink.mcu.program import LOWERERS, Fields, State, c_float, mult_value, quant, stored_shape


@LOWERERS.register("reshape")
def _lower_reshape(s: State, i: int, node: Node) -> None:
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
    if node.attrs.get("hwc_order"):  # TFLite's RESHAPE flattens H x W x C: the storage order already
        s.order[node.output] = None
    elif layout == "hwc" and len(src.shape) == 3 and src.shape[1] * src.shape[2] > 1:
        c, h, w = src.shape  # storage index of each ONNX (C, H, W)-order element
        s.order[node.output] = np.arange(c * h * w).reshape(h, w, c).transpose(2, 0, 1).reshape(-1)
    else:
        s.order[node.output] = s.order.get(node.inputs[0])


@LOWERERS.register("hwc")
def _lower_hwc(s: State, i: int, node: Node) -> None:
    """The network input copied H x W x C (lower.hwc_input puts it where an operator needs it)."""
    x = s.tensor(node.inputs[0])
    s.call("ds_hwc", "ds_hwc_t", {"c": x.shape[0], "hw": x.shape[1] * x.shape[2]},
           [(s.buf(node.inputs[0]), "const int8_t *"), (node.output, "int8_t *")])
    s.prog.kernels.add("hwc")
    s.layout[node.output] = "hwc"
    s.order[node.output] = None
    s.describe(f"the input turned channels last; out int8 {stored_shape(x, 'hwc')}")


def storage(s: State, name: str) -> str:
    """A tensor's layout, a one-channel image's C x H x W being H x W x C too."""
    t, layout = s.tensor(name), s.layout[name]
    return "hwc" if layout == "chw" and len(t.shape) == 3 and t.shape[0] == 1 else layout


@LOWERERS.register("maxpool")
def _lower_maxpool(s: State, i: int, node: Node) -> None:
    x, y = s.tensor(node.inputs[0]), s.tensor(node.output)
    if s.layout[node.inputs[0]] != "hwc" and x.shape[0] > 1:
        raise UserError(f"{s.graph.source}: max pooling straight on a multi-channel network input is not supported")
    a = node.attrs
    args = [(s.buf(node.inputs[0]), "const int8_t *"), (node.output, "int8_t *")]
    s.layout[node.output] = "hwc"
    if (x.scale, x.zp) != (y.scale, y.zp):  # a float island in ONNX Runtime (graph.py, _island)
        if s.graph.arith == "fixed":
            raise UserError(f"{s.graph.source}: --arith fixed: this max pooling requantizes in float (ONNX "
                            "Runtime's float island); use --arith float")
        s.call("ds_maxpoolq", "ds_maxpoolq_t", {"pool": _window(x, y, a), "in_zp": x.zp, "zp": y.zp,
                                                "x_scale": c_float(x.scale), "y_scale": c_float(y.scale)}, args)
        s.prog.kernels.add("maxpoolq")
        s.describe(f"max {_geometry(a)}, requantized as ONNX Runtime's float operators; out int8 "
                   f"{stored_shape(y, 'hwc')}, {quant(y)}")
        return
    s.call("ds_maxpool", "ds_pool_t", _window(x, y, a), args)
    s.prog.kernels.add("maxpool")
    s.describe(f"max {_geometry(a)}; out int8 {stored_shape(y, 'hwc')}")


def _window(x: QTensor, y: QTensor, a: dict[str, Any]) -> Fields:
    """A pooling's geometry (ds_pool_t, and ds_avgpool_t's first fields): H x W x C in and out, window,
    stride, top and left padding."""
    return {"in_h": x.shape[1], "in_w": x.shape[2], "c": x.shape[0], "out_h": y.shape[1], "out_w": y.shape[2],
            "kh": a["kernel"][0], "kw": a["kernel"][1], "sh": a["strides"][0], "sw": a["strides"][1],
            "pt": a["pads"][0], "pl": a["pads"][1]}


def _geometry(a: dict[str, Any]) -> str:
    pads = f", pads {'/'.join(map(str, a['pads']))}" if any(a["pads"]) else ""
    return f"{a['kernel'][0]}x{a['kernel'][1]}, stride {a['strides'][0]}x{a['strides'][1]}{pads}"


def add_fields(s: State, node: Node) -> Fields:
    """ds_add_t: ONNX Runtime's scale ratios in float32, zero points in its own domain; or with fixed
    arithmetic TFLite's int8 ADD multipliers (mcu/fixed.py)."""
    a, b, y = (s.tensor(n) for n in (*node.inputs, node.output))
    if s.graph.arith == "fixed":
        clamp = node.attrs.get("clamp", INT8)
        p = add_params((a.scale, a.zp), (b.scale, b.zp), (y.scale, y.zp), clamp)
        ta, tb = add_tables(p)
        row = requant_table(np.array([0.0]), clamp)[0]
        row[:3] = p["my"], p["sy"], -p["sy"] - 1 if p["sy"] < 0 else -1
        row[5] = (1 << 30) + (1 << (30 - p["sy"])) if p["sy"] < 0 else 0
        my: Fields = {f: f"{int(v)}LL" if f == "k" else int(v) for f, v in zip(MULT_FIELDS, row, strict=True)}
        return {"ta": s.array("add_ta", "int32_t", ta), "tb": s.array("add_tb", "int32_t", tb), "my": my,
                "zy": p["zy"], "n": y.size}
    off = s.graph.offset
    ra, rb = np.float32(a.scale) / np.float32(y.scale), np.float32(b.scale) / np.float32(y.scale)
    return {"ra": c_float(ra), "rb": c_float(rb), "za": a.zp + off, "zb": b.zp + off, "zy": y.zp + off,
            "off": off, "n": y.size}


def fused_add(s: State, node: Node) -> Fields:
    """The conv struct's fields of its fused addition: its parameters, and which operand the convolution is."""
    add = node.attrs.get("add")
    if add is None:
        return {}
    name = s.struct("add", "ds_add_t", add_fields(s, add))
    return {"add": f"&{name}", "add_first": int(add.inputs[0] == node.attrs["conv_out"])}


@LOWERERS.register("add")
def _lower_add(s: State, i: int, node: Node) -> None:
    if storage(s, node.inputs[0]) != storage(s, node.inputs[1]) or s.order.get(node.inputs[0]) is not None or \
            s.order.get(node.inputs[1]) is not None:
        raise UserError(f"{s.graph.source}: an addition of tensors stored in different orders is not supported")
    s.call("ds_add", "ds_add_t", add_fields(s, node), [(s.buf(node.inputs[0]), "const int8_t *"),
                                                       (s.buf(node.inputs[1]), "const int8_t *"),
                                                       (node.output, "int8_t *")])
    s.prog.kernels.add("add")
    s.layout[node.output] = s.layout[node.inputs[0]] if s.layout[node.inputs[0]] == s.layout[node.inputs[1]] \
        else "hwc"
    s.order[node.output] = None
    y = s.tensor(node.output)
    s.describe(f"addition; out int8 {stored_shape(y, s.layout[node.output])}, {quant(y)}")


def _global(s: State, i: int, node: Node) -> None:
    """QLinearGlobalAveragePool, and an average pooling over the whole image without padding (ONNX Runtime
    runs that one on the same code)."""
    x, y = s.tensor(node.inputs[0]), s.tensor(node.output)
    c, n = x.shape[0], x.shape[1] * x.shape[2]
    # ONNX Runtime's float32 ratio; TFLite-style fixed point starts from the same ratio in double
    mult = float(np.float64(x.scale) / (np.float64(y.scale) * n)) if s.graph.arith == "fixed" else \
        float(np.float32(x.scale) / (np.float32(y.scale) * np.float32(n)))
    acc = s.scratch(i, 4 * c, "acc", "int32_t", f"sums: int32 x {c}")
    s.call("ds_gavgpool", "ds_gavg_t", {"mult": mult_value(s, mult, node), "n": n, "c": c, "in_zp": x.zp, "zp": y.zp},
           [(s.buf(node.inputs[0]), "const int8_t *"), (node.output, "int8_t *"), (acc, "int32_t *")])
    s.prog.kernels.add("gavgpool")
    s.layout[node.output] = "hwc"
    s.describe(f"global average of {x.shape[1]}x{x.shape[2]}x{c}; out int8 {c}, {quant(y)}")


@LOWERERS.register("gavgpool")
def _lower_gavgpool(s: State, i: int, node: Node) -> None:
    if s.layout[node.inputs[0]] != "hwc" and s.tensor(node.inputs[0]).shape[0] > 1:
        raise UserError(f"{s.graph.source}: global pooling straight on a multi-channel network input is not "
                        "supported")
    _global(s, i, node)


@LOWERERS.register("avgpool")
def _lower_avgpool(s: State, i: int, node: Node) -> None:
    x, y = s.tensor(node.inputs[0]), s.tensor(node.output)
    a = node.attrs
    if s.layout[node.inputs[0]] != "hwc" and x.shape[0] > 1:
        raise UserError(f"{s.graph.source}: average pooling straight on a multi-channel network input is not "
                        "supported")
    if tuple(a["kernel"]) == tuple(x.shape[1:]) and not any(a["pads"]):
        _global(s, i, node)
        return
    if s.graph.arith == "fixed":
        raise UserError(f"{s.graph.source}: --arith fixed: average pooling over part of the image is computed in "
                        "float only; use --arith float")
    off = s.graph.offset
    fields = {**_window(x, y, a), "count_pad": a["count_include_pad"], "in_zp": x.zp + off, "zp": y.zp + off,
              "off": off, "x_scale": c_float(x.scale), "y_scale": c_float(y.scale)}
    s.call("ds_avgpool", "ds_avgpool_t", fields, [(s.buf(node.inputs[0]), "const int8_t *"),
                                                  (node.output, "int8_t *")])
    s.prog.kernels.add("avgpool")
    s.layout[node.output] = "hwc"
    s.describe(f"average {_geometry(a)}; out int8 {stored_shape(y, 'hwc')}, {quant(y)}")


@LOWERERS.register("avgpool_tfl")
def _lower_avgpool_tfl(s: State, i: int, node: Node) -> None:
    """TFLite's AVERAGE_POOL_2D (input and output share a quantization: a rounded mean of raw values)."""
    x, y = s.tensor(node.inputs[0]), s.tensor(node.output)
    a = node.attrs
    lo, hi = a.get("clamp", INT8)
    acc = s.scratch(i, 4 * x.shape[0], "acc", "int32_t", f"sums: int32 x {x.shape[0]}")
    s.call("ds_avgpool_tfl", "ds_avgpool_tfl_t", {**_window(x, y, a), "lo": lo, "hi": hi},
           [(s.buf(node.inputs[0]), "const int8_t *"), (node.output, "int8_t *"), (acc, "int32_t *")])
    s.prog.kernels.add("avgpool_tfl")
    s.layout[node.output] = "hwc"
    s.describe(f"average {_geometry(a)} (TFLite rounding); out int8 {stored_shape(y, 'hwc')}, {quant(y)}")


@LOWERERS.register("softmax")
def _lower_softmax(s: State, i: int, node: Node) -> None:
    """int8 SOFTMAX over a vector, as CMSIS-NN computes it in TensorFlow Lite Micro."""
    x = s.tensor(node.inputs[0])
    if len(x.shape) != 1 or s.order.get(node.inputs[0]) is not None:
        raise UserError(f"{s.graph.source}: SOFTMAX over a {len(x.shape)}-D tensor; the target takes a vector")
    fields: Fields = {**softmax_params(node.attrs["beta"], x.scale), "n": x.size}
    s.call("ds_softmax", "ds_softmax_t", fields, [(s.buf(node.inputs[0]), "const int8_t *"),
                                                  (node.output, "int8_t *")])
    s.prog.kernels.add("softmax")
    s.layout[node.output] = "flat"
    s.order[node.output] = None
    s.describe(f"softmax of {x.size} (beta {node.attrs['beta']:g}); out int8 {x.size}, scale 1/256, zp -128")
