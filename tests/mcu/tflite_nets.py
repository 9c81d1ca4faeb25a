"""Random small full-integer TFLite networks of every operator SPEC §12.1 names, written without TensorFlow
(ingest/tflite_write.py): the C's bit-exactness with TensorFlow Lite Micro is checked on them, beyond the
three MLPerf Tiny models (max pooling, RELU6 clamps, VALID padding, depth multipliers, stride 2 with SAME
padding's uneven pads, additions of two branches)."""

from dataclasses import dataclass, field

import numpy as np

from deepshrink.ingest.tflite_file import TfModel, TfOperator, TfTensor

CONV_OPTS = {"dilation_w_factor": 1, "dilation_h_factor": 1}


@dataclass
class Net:
    """A network being drawn: its tensors, operators, and the current activation (index, C, H, W)."""

    rng: np.random.Generator
    tensors: list[TfTensor] = field(default_factory=list)
    ops: list[TfOperator] = field(default_factory=list)

    def tensor(self, shape: tuple[int, ...], dtype: str = "int8", scale: np.ndarray | None = None,
               zp: np.ndarray | None = None, data: np.ndarray | None = None, dim: int = 0) -> int:
        i = len(self.tensors)
        s = np.zeros(0, np.float32) if scale is None else np.asarray(scale, np.float32).reshape(-1)
        z = (np.zeros(s.size, np.int64) if zp is None else np.asarray(zp, np.int64).reshape(-1)) if s.size else \
            np.zeros(0, np.int64)
        self.tensors.append(TfTensor(i, f"t{i}", shape, dtype, s, z, dim, data))
        return i

    def act(self, shape: tuple[int, ...], relu: bool = False) -> int:
        """An activation: a random scale; a zero point of -128 after a ReLU-like range, else anywhere."""
        scale = np.float32(self.rng.uniform(0.02, 0.2))
        zp = -128 if relu else int(self.rng.integers(-20, 20))
        return self.tensor(shape, scale=np.array([scale]), zp=np.array([zp]))

    def op(self, name: str, inputs: tuple[int, ...], output: int, options: dict[str, object]) -> int:
        self.ops.append(TfOperator(len(self.ops), name, 1, inputs, (output,), options))
        return output

    def scale(self, i: int) -> float:
        return float(self.tensors[i].scale[0])


def _conv(n: Net, x: int, hwc: tuple[int, int, int], depthwise: bool) -> tuple[int, tuple[int, int, int]]:
    h, w, c = hwc
    rng = n.rng
    k = int(rng.choice([1, 3])) if not depthwise else 3
    stride = int(rng.choice([1, 2]))
    same = bool(rng.integers(2)) or k > h or k > w
    mult = int(rng.choice([1, 2])) if depthwise else 1
    out_c = c * mult if depthwise else int(rng.integers(2, 9))
    return conv(n, x, hwc, k, stride, same, out_c, depthwise=depthwise)


def conv(n: Net, x: int, hwc: tuple[int, int, int], k: int, stride: int, same: bool, out_c: int,
         depthwise: bool = False, act: str | None = None) -> tuple[int, tuple[int, int, int]]:
    """A k x k convolution (or depthwise, out_c a multiple of C) of random weights; `act` the fused
    activation (random when None)."""
    h, w, c = hwc
    rng = n.rng
    oh = -(-h // stride) if same else (h - k) // stride + 1
    ow = -(-w // stride) if same else (w - k) // stride + 1
    wshape = (1, k, k, out_c) if depthwise else (out_c, k, k, c)
    ws = rng.uniform(0.002, 0.02, out_c).astype(np.float32)
    wt = n.tensor(wshape, scale=ws, zp=np.zeros(out_c), data=rng.integers(-127, 128, wshape).astype(np.int8),
                  dim=3 if depthwise else 0)
    bias_scale = (np.float64(n.scale(x)) * ws).astype(np.float32)
    b = n.tensor((out_c,), "int32", scale=bias_scale, data=rng.integers(-3000, 3000, out_c).astype(np.int32))
    act = str(rng.choice(["NONE", "RELU", "RELU6"])) if act is None else act
    y = n.act((1, oh, ow, out_c), relu=act != "NONE" and bool(rng.integers(2)))
    opts = {**CONV_OPTS, "padding": "SAME" if same else "VALID", "stride_h": stride, "stride_w": stride,
            "fused_activation_function": act, **({"depth_multiplier": out_c // c} if depthwise else {})}
    return n.op("DEPTHWISE_CONV_2D" if depthwise else "CONV_2D", (x, wt, b), y, opts), (oh, ow, out_c)


def _pool(n: Net, x: int, hwc: tuple[int, int, int], kind: str) -> tuple[int, tuple[int, int, int]]:
    h, w, c = hwc
    k = int(n.rng.choice([2, 3]))
    same = bool(n.rng.integers(2)) or k > h or k > w
    s = int(n.rng.choice([1, 2]))
    oh, ow = (-(-h // s), -(-w // s)) if same else ((h - k) // s + 1, (w - k) // s + 1)
    t = n.tensors[x]
    y = n.tensor((1, oh, ow, c), scale=t.scale, zp=t.zero_point)
    opts = {"padding": "SAME" if same else "VALID", "stride_h": s, "stride_w": s, "filter_height": k,
            "filter_width": k, "fused_activation_function": "NONE"}
    return n.op(kind, (x,), y, opts), (oh, ow, c)


def residual(n: Net, x: int, hwc: tuple[int, int, int]) -> tuple[int, tuple[int, int, int]]:
    """x + conv(x) (a 3x3 stride-1 SAME convolution keeping the channels), as ResNet's blocks."""
    h, w, c = hwc
    ws = n.rng.uniform(0.002, 0.02, c).astype(np.float32)
    wt = n.tensor((c, 3, 3, c), scale=ws, zp=np.zeros(c), data=n.rng.integers(-127, 128, (c, 3, 3, c)).astype(np.int8))
    b = n.tensor((c,), "int32", scale=(np.float64(n.scale(x)) * ws).astype(np.float32),
                 data=n.rng.integers(-3000, 3000, c).astype(np.int32))
    branch = n.act((1, h, w, c))
    n.op("CONV_2D", (x, wt, b), branch, {**CONV_OPTS, "padding": "SAME", "stride_h": 1, "stride_w": 1,
                                          "fused_activation_function": "NONE"})
    y = n.act((1, h, w, c), relu=True)
    first, second = (x, branch) if n.rng.integers(2) else (branch, x)
    return n.op("ADD", (first, second), y, {"fused_activation_function": "RELU"}), hwc


def random_tflite(seed: int) -> TfModel:
    """A random network: 1 to 3 channels in, 2 to 5 layers, then flatten, a fully connected layer, softmax."""
    n = Net(np.random.default_rng(seed))
    h, w, c = int(n.rng.integers(5, 11)), int(n.rng.integers(5, 11)), int(n.rng.integers(1, 4))
    x = n.act((1, h, w, c))
    hwc = (h, w, c)
    for _ in range(int(n.rng.integers(2, 6))):
        pick = str(n.rng.choice(["conv", "dw", "max", "avg", "add"]))
        if pick in ("max", "avg") and min(hwc[:2]) >= 2:
            x, hwc = _pool(n, x, hwc, "MAX_POOL_2D" if pick == "max" else "AVERAGE_POOL_2D")
        elif pick == "add":
            x, hwc = residual(n, x, hwc)
        else:
            x, hwc = _conv(n, x, hwc, depthwise=pick == "dw")
    return head(n, x, hwc, seed)


def head(n: Net, x: int, hwc: tuple[int, int, int], seed: int) -> TfModel:
    size = hwc[0] * hwc[1] * hwc[2]
    t = n.tensors[x]
    shape = n.tensor((2,), "int32", data=np.array([1, size], np.int32))
    flat = n.op("RESHAPE", (x, shape), n.tensor((1, size), scale=t.scale, zp=t.zero_point), {})
    classes = int(n.rng.integers(2, 11))
    ws = np.float32(n.rng.uniform(0.002, 0.02))
    weights = n.rng.integers(-127, 128, (classes, size)).astype(np.int8)
    wt = n.tensor((classes, size), scale=np.array([ws]), data=weights)
    b = n.tensor((classes,), "int32", scale=np.array([np.float32(np.float64(n.scale(flat)) * ws)]),
                 data=n.rng.integers(-3000, 3000, classes).astype(np.int32))
    logits = n.op("FULLY_CONNECTED", (flat, wt, b), n.act((1, classes)), {"fused_activation_function": "NONE"})
    out = n.tensor((1, classes), scale=np.array([1 / 256]), zp=np.array([-128]))
    n.op("SOFTMAX", (logits,), out, {"beta": 1.0})
    return TfModel(f"random{seed}.tflite", 3, "deepshrink random test network", tuple(n.tensors), tuple(n.ops),
                   (0,), (out,))
