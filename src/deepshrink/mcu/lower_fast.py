"""Fast paths of the convolution lowerer for the layers MLPerf Tiny's models are made of, dense weights only
(an in-place layout keeps the general kernel): depthwise 3 x 3 (kernels.c.j2, ds_dwconv)."""

import numpy as np

from deepshrink.mcu.graph import Node
from deepshrink.mcu.program import State, fold_bias, multipliers, q_fields


def depthwise_weights(w: np.ndarray) -> np.ndarray:
    """(C, 1, 3, 3) int8 filters -> ds_dwconv's int16 order: per block of 4 channels, taps (0, 1) .. (6, 7)
    as a pair per channel (channels 0, 2, 1, 3), then tap 8 of channels 0, 2, 1, 3; then the 9 taps of each
    channel left over."""
    c = w.shape[0]
    taps = w.reshape(c, 9).astype(np.int16)
    nb = c // 4
    blocks = taps[: 4 * nb].reshape(nb, 4, 9)
    pairs = blocks[:, [0, 2, 1, 3], :8].reshape(nb, 4, 4, 2).transpose(0, 2, 1, 3).reshape(nb, 32)
    last = blocks[:, [0, 2, 1, 3], 8]
    return np.concatenate([np.concatenate([pairs, last], axis=1).reshape(-1), taps[4 * nb :].reshape(-1)])


def lower_depthwise(s: State, i: int, node: Node) -> bool:
    """A depthwise 3 x 3 convolution (channel multiplier 1) on an H x W x C input, nothing fused behind it,
    lowered to ds_dwconv; False when the layer is not one."""
    a = node.attrs
    x, y = s.tensor(node.inputs[0]), s.tensor(node.output)
    w = a["w"]
    o, cg, kh, kw = w.shape
    if (s.layout[node.inputs[0]] != "hwc" or cg != 1 or a["group"] != o or o != x.shape[0] or (kh, kw) != (3, 3)
            or "pool" in a or "add" in a or 8 * o + 4 > 4095):  # taps at immediate offsets up to 8 C (LDR: 4095)
        return False
    oh, ow = y.shape[1:]
    sh, sw = a["strides"]
    cols = (ow - 1) * sw + 3
    bias = fold_bias(a["bias"], w.reshape(o, -1), x.zp, s.graph.source)
    fields = {"w": s.array("weights", "int16_t", depthwise_weights(w)),
              "q": q_fields(s, bias, multipliers(s, x, a["w_scale"], y, o, node), y), "in_h": x.shape[1],
              "in_w": x.shape[2], "c": o, "out_h": oh, "out_w": ow, "sh": sh, "sw": sw, "pt": a["pads"][0],
              "pl": a["pads"][1], "cols": cols, "in_zp": x.zp}
    rows = s.scratch(i, 3 * cols * o, "rows", "int8_t", "padded input rows: int8")
    s.call(s.use("dwconv", f"ds_dwconv_c{o}", c=o), "ds_dw_t", fields, [(s.buf(node.inputs[0]), "const int8_t *"),
                                            (s.buf(node.output), "int8_t *"), (rows, "int8_t *")])
    s.prog.macs += o * 9 * oh * ow
    s.layout[node.output] = "hwc"
    return True
