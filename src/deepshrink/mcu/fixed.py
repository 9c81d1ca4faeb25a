"""TensorFlow Lite's integer arithmetic, computed here once per layer: the fixed-point multipliers and shifts
its kernels take (tensorflow/lite/kernels/internal/quantization_util.cc), the fused activations' clamps, and
the int8 ADD and SOFTMAX parameters TensorFlow Lite Micro prepares (add_common.cc, softmax_common.cc).

The C (kernels.c.j2 rendered with `fixed`) applies them exactly as CMSIS-NN does, so a model read from a
.tflite file computes what TensorFlow Lite Micro computes, bit for bit; deepshrink's own models can use the
same integer-only requantization (`--arith fixed`), which needs no FPU.
"""

import math

import numpy as np

INT8 = (-128, 127)
ADD_LEFT_SHIFT = 20  # add_common.cc: int8 inputs are shifted left by 20 bits before scaling
SOFTMAX_INTEGER_BITS = 5  # softmax_common.cc: kScaledDiffIntegerBits


def quantize_multiplier(real: float) -> tuple[int, int]:
    """QuantizeMultiplier: real = m * 2^(shift - 31) with m a Q31 fraction in [2^30, 2^31); (0, 0) for 0."""
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    m = _round_away(q * (1 << 31))
    if m == 1 << 31:
        m //= 2
        shift += 1
    if shift < -31:  # too small to represent: TFLite flushes to zero
        return 0, 0
    return m, shift


def _round_away(v: float) -> int:
    """std::round: halves away from zero (Python's round() goes to even)."""
    return math.floor(abs(v) + 0.5) * (1 if v >= 0 else -1)


def activation_range(fused: str, scale: float, zp: int) -> tuple[int, int]:
    """CalculateActivationRangeQuantized for int8: the clamp a fused RELU/RELU6/RELU_N1_TO_1 applies."""
    def q(v: float) -> int:
        return zp + _round_away(v / scale)

    lo, hi = INT8
    if fused == "RELU":
        lo = max(lo, q(0.0))
    elif fused == "RELU6":
        lo, hi = max(lo, q(0.0)), min(hi, q(6.0))
    elif fused == "RELU_N1_TO_1":
        lo, hi = max(lo, q(-1.0)), min(hi, q(1.0))
    return lo, hi


MULT_FIELDS = ("m", "shift", "rs", "lo", "hi", "k")  # ds_mult_t's, in order


def requant_table(real: np.ndarray, clamp: tuple[int, int] = INT8) -> np.ndarray:
    """ds_mult_t values (m, shift, rs, lo, hi, k) per channel, from real multipliers (float64): rs and k are
    what the C's one-rounding path (ds_fixmul_r) takes for a right shift, rs = -1 sends it to ds_fixmul."""
    rows = []
    for r in np.asarray(real, np.float64).reshape(-1):
        m, shift = quantize_multiplier(float(r))
        if m == 0:
            shift = -1  # a zero multiplier gives 0 under any shift: let it take the fast path
        rs, k = (-shift - 1, (1 << 30) + (1 << (30 - shift))) if shift < 0 else (-1, 0)
        rows.append((m, shift, rs, *clamp, k))
    return np.array(rows, np.int64).reshape(-1, len(MULT_FIELDS))


def add_params(a: tuple[float, int], b: tuple[float, int], y: tuple[float, int],
               clamp: tuple[int, int] = INT8) -> dict[str, int]:
    """ds_add_t's fields for int8 ADD of (scale, zero point) a + b -> y, as add_common.cc prepares them."""
    sa_, sb_, sy_ = (float(np.float32(t[0])) for t in (a, b, y))  # TFLite's scales are float32
    twice_max = 2.0 * max(sa_, sb_)
    ma, sa = quantize_multiplier(sa_ / twice_max)
    mb, sb = quantize_multiplier(sb_ / twice_max)
    my, sy = quantize_multiplier(twice_max / ((1 << ADD_LEFT_SHIFT) * sy_))
    return {"ma": ma, "mb": mb, "my": my, "sa": sa, "sb": sb, "sy": sy, "za": a[1], "zb": b[1], "zy": y[1],
            "lo": clamp[0], "hi": clamp[1]}


def fixmul(x: int, m: int, shift: int) -> int:
    """MultiplyByQuantizedMultiplier on an int32, exactly as the C's ds_fixmul computes it."""
    left, right = max(shift, 0), max(-shift, 0)
    x = ((x << left) + 2**31) % 2**32 - 2**31  # the C shifts as uint32: wraps
    high = (x * m + (1 << 30)) >> 31
    mask = (1 << right) - 1
    return (high >> right) + int((high & mask) > (mask >> 1) + int(high < 0))


def add_tables(p: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """ds_add_t's input terms by int8 value + 128: ((v - z) << 20) times each input's multiplier."""
    def table(m: int, shift: int, z: int) -> np.ndarray:
        return np.array([fixmul((v - z) << ADD_LEFT_SHIFT, m, shift) for v in range(-128, 128)], np.int32)

    return table(p["ma"], p["sa"], p["za"]), table(p["mb"], p["sb"], p["zb"])


def softmax_params(beta: float, input_scale: float) -> dict[str, int]:
    """ds_softmax_t's fields: PreprocessSoftmaxScaling and CalculateInputRadius for 5 integer bits."""
    real = min(beta * float(input_scale) * (1 << (31 - SOFTMAX_INTEGER_BITS)), float((1 << 31) - 1))
    mult, shift = quantize_multiplier(real)  # QuantizeMultiplierGreaterThanOne: shift >= 0
    radius = ((1 << SOFTMAX_INTEGER_BITS) - 1) * (1 << (31 - SOFTMAX_INTEGER_BITS)) / (1 << shift)
    return {"mult": mult, "shift": shift, "diff_min": -math.floor(radius)}
