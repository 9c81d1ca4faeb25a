"""From the integer graph to kernel calls: layouts, fusions, weight packing, bias folding.

Choices made here, and why:
- Activations are stored H x W x C (channels last) except the network input, which arrives C x H x W as
  the dataset stores it: a convolution's receptive field is then a few contiguous runs of channels, and a
  1x1 convolution none at all. A pooling or an addition on a multi-channel input reads a copy turned
  H x W x C once, first (hwc_input); a convolution there keeps reading C x H x W. A flatten of an
  H x W x C tensor costs nothing: the next fully connected layer's weight columns are permuted once, here,
  to the storage order.
- A max pooling whose input is a convolution's only use is computed inside that convolution (the
  convolution's full output never exists, which is most of LeNet-5's RAM).
- Weight rows are padded with zeros to a multiple of 4 bytes and interleaved 4 (then 2, then 1) rows at a
  time, the order the dot-product kernel reads them in (kernels.c.j2, ds_dots8 and ds_dots16).
- Biases absorb the input zero point (b - zp_x * sum(w)): the inner loops multiply raw int8 values.
- Requantization multipliers are computed in float32 in ONNX Runtime's order, (x_scale * w_scale) / y_scale,
  or, with the graph's `fixed` arithmetic, as TensorFlow Lite's Q31 multipliers and shifts (mcu/fixed.py).
"""

from dataclasses import replace
from typing import Any

from deepshrink.errors import UserError
from deepshrink.mcu import lower_simple, lower_weighted  # noqa: F401  (their lowerers register themselves)
from deepshrink.mcu.graph import Graph, Node
from deepshrink.mcu.program import LOWERERS, Buffer, Program, State, stored_shape


def lower(graph: Graph, in_place: bool = True) -> Program:
    """The kernel calls of `graph`; `in_place` False stores every layer dense (the reference an in-place
    build is compared with)."""
    graph = hwc_input(graph)
    prog = Program(graph)
    s = State(graph, prog, in_place=in_place)
    inp = graph.input
    s.layout[inp.name] = graph.input_layout if len(inp.shape) == 3 else "flat"
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
        if node.kind == "conv" and len(nxt) == 1 and _poolable(s, graph.nodes[nxt[0]]):
            pool = graph.nodes[nxt[0]]
            s.fused.add(pool.output)
            node = replace(node, output=pool.output, attrs={**node.attrs, "pool": pool.attrs})
        elif node.kind == "conv" and len(nxt) == 1 and (residual := _residual(s, consumers, node, nxt[0])):
            add = graph.nodes[nxt[0]]
            s.fused.add(add.output)
            s.root[add.output] = s.buf(residual)  # written over the other operand, in place
            node = replace(node, output=add.output, attrs={**node.attrs, "conv_out": node.output, "add": add})
        if node.kind != "reshape":  # a view: no layer of its own
            s.layer = s.names.layer(node.kind, node.name)
        LOWERERS.get(node.kind)(s, i, node)
        if node.kind != "reshape" and node.output not in s.root:
            s.prog.buffers[node.output] = _output(s, i, node.output)
    _lifetimes(s)
    out = s.buf(graph.output)
    if out == inp.name or s.order.get(graph.output) is not None:
        raise UserError(f"{graph.source}: the logits must be a vector computed by an operator from the input")
    prog.buffers[out].external = "logits"
    return prog


def hwc_input(graph: Graph) -> Graph:
    """`graph` with the input turned H x W x C once, first (ds_hwc), when an operator that reads channels last
    (a pooling, an addition) takes the input of several channels; those read the copy. A convolution (the
    fast path: it reads C x H x W directly) and a flatten keep reading the input as it arrives."""
    inp = graph.input
    direct = ("conv", "reshape")
    if len(inp.shape) != 3 or inp.shape[0] == 1 or graph.input_layout == "hwc" or \
            not any(inp.name in n.inputs and n.kind not in direct for n in graph.nodes):
        return graph
    name = f"{inp.name}:hwc"
    nodes = [Node("hwc", [inp.name], name)] + [
        n if n.kind in direct else replace(n, inputs=[name if t == inp.name else t for t in n.inputs])
        for n in graph.nodes]
    return replace(graph, nodes=nodes, tensors={**graph.tensors, name: replace(inp, name=name)})


def _output(s: State, i: int, tensor: str) -> Buffer:
    """The arena buffer of a layer's output, named after the layer (conv1_out)."""
    t = s.tensor(tensor)
    return Buffer(tensor, -(-t.size // 4) * 4, i, i, cname=s.names.unique(f"{s.layer}_out"),
                  what=f"{s.layer} output: int8 {stored_shape(t, s.layout.get(tensor, 'flat'))}")


def _residual(s: State, consumers: dict[str, list[int]], conv: Node, at: int) -> str | None:
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


def _poolable(s: State, node: Node) -> bool:
    a, x, y = node.attrs, s.tensor(node.inputs[0]), s.tensor(node.output)
    return node.kind == "maxpool" and a["kernel"][0] == a["kernel"][1] == a["strides"][0] == a["strides"][1] \
        and not any(a["pads"]) and (x.scale, x.zp) == (y.scale, y.zp)  # else it requantizes (ds_maxpoolq)


def _lifetimes(s: State) -> None:
    """Each buffer lives from the node writing it to the last node reading it (or an alias of it)."""
    for i, node in enumerate(s.graph.nodes):
        for t in node.inputs:
            b = s.prog.buffers.get(s.buf(t))
            if b is not None:
                b.last = max(b.last, i)


def lowered_kinds() -> list[str]:
    return LOWERERS.names()


def describe(prog: Program) -> dict[str, Any]:
    """Facts about the program for results rows: kernels used and MACs per inference."""
    return {"mcu_kernels": " ".join(sorted(prog.kernels - {"base", "argmax"})), "macs": prog.macs}
