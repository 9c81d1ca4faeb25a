"""Lowerers of the operators without weights: reshape/flatten (a view), max, average and global pooling,
and the addition (ONNX Runtime's QLinearAdd arithmetic, also fused into a convolution)."""

import numpy as np

from deepshrink.errors import UserError
from deepshrink.mcu.graph import Node
from deepshrink.mcu.program import LOWERERS, Call, State, c_float


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
    if layout == "hwc" and len(src.shape) == 3 and src.shape[1] * src.shape[2] > 1:
        c, h, w = src.shape  # storage index of each ONNX (C, H, W)-order element
        s.order[node.output] = np.arange(c * h * w).reshape(h, w, c).transpose(2, 0, 1).reshape(-1)
    else:
        s.order[node.output] = s.order.get(node.inputs[0])


@LOWERERS.register("maxpool")
def _lower_maxpool(s: State, i: int, node: Node) -> None:
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


def add_fields(s: State, node: Node) -> list[str]:
    """ds_add_t's initializer: ONNX Runtime's scale ratios in float32, zero points in its own domain."""
    a, b, y = (s.tensor(n) for n in (*node.inputs, node.output))
    off = s.graph.offset
    ra, rb = np.float32(a.scale) / np.float32(y.scale), np.float32(b.scale) / np.float32(y.scale)
    return [c_float(ra), c_float(rb), str(a.zp + off), str(b.zp + off), str(y.zp + off), str(off), str(y.size)]


def fused_add(s: State, node: Node) -> list[str]:
    """The conv struct's last fields: a pointer to its fused addition's parameters, and which operand it is."""
    add = node.attrs.get("add")
    if add is None:
        return ["0", "0"]
    name = f"ds_add{len(s.prog.definitions)}"
    s.prog.definitions.append(f"static const ds_add_t {name} = {{{', '.join(add_fields(s, add))}}};")
    return [f"&{name}", str(int(add.inputs[0] == node.attrs["conv_out"]))]


@LOWERERS.register("add")
def _lower_add(s: State, i: int, node: Node) -> None:
    if s.layout[node.inputs[0]] != s.layout[node.inputs[1]] or s.order.get(node.inputs[0]) is not None or \
            s.order.get(node.inputs[1]) is not None:
        raise UserError(f"{s.graph.source}: an addition of tensors stored in different orders is not supported")
    fields = add_fields(s, node)
    s.prog.calls.append(Call("add", "ds_add_t", fields, [(s.buf(node.inputs[0]), "const int8_t *"),
                                                        (s.buf(node.inputs[1]), "const int8_t *"),
                                                        (node.output, "int8_t *")]))
    s.prog.kernels.add("add")
    s.layout[node.output] = s.layout[node.inputs[0]]
    s.order[node.output] = None


def _global(s: State, i: int, node: Node) -> None:
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
    off = s.graph.offset
    fields = [*map(str, (x.shape[1], x.shape[2], x.shape[0], y.shape[1], y.shape[2], *a["kernel"], *a["strides"],
                         a["pads"][0], a["pads"][1], a["count_include_pad"], x.zp + off, y.zp + off, off)),
              c_float(x.scale), c_float(y.scale)]
    s.prog.calls.append(Call("avgpool", "ds_avgpool_t", fields, [(s.buf(node.inputs[0]), "const int8_t *"),
                                                                (node.output, "int8_t *")]))
    s.prog.kernels.add("avgpool")
    s.layout[node.output] = "hwc"
