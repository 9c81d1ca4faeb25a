"""The compact file formats on the container codec: `.dsparse` (sparse state dicts), `.dsonnx` (packed
ONNX) and `.dsq` (bit-packed sub-8-bit weights). Each decodes to exactly what was encoded."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from deepshrink.errors import UserError
from deepshrink.export.exporters.dsparse import sparse_weight_keys
from deepshrink.export.formats import dsonnx, dsparse
from deepshrink.export.formats.dsonnx import zero_fraction
from deepshrink.export.formats.dsq import decode, encode, pack_bits, unpack_bits
from deepshrink.export.formats.onnx_float import export_onnx
from deepshrink.export.formats.onnx_int8 import build_qdq
from deepshrink.models import create_model
from deepshrink.quant.plan import observe_ranges
from deepshrink.quant.scales import quantize_weight, weight_scales

# What escapes a decoder that does not translate a corrupt file's errors (json's is a ValueError).


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes (so -0.0 != 0.0 and NaN payloads count)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.numpy().tobytes() == b.numpy().tobytes()


def _mostly_zero_mlp(seed: int = 0, zero: float = 0.8) -> nn.Sequential:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    with torch.no_grad():
        for layer in (m[1], m[3]):
            w = layer.weight
            w[torch.rand(w.shape) < zero] = 0.0
    return m


# --- .dsparse -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["none", "zlib", "lzma"])
def test_sparse_file_round_trips_bit_exact(codec: str) -> None:
    torch.manual_seed(1)
    m = create_model("lenet-5", (1, 28, 28))
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() > 1:
                p[torch.rand(p.shape) < 0.9] = 0.0
        m.fc1.weight[0].zero_()  # an all-zero row
        m.fc1.weight[1, :] = 0.0
        m.fc1.weight[1, 255] = -0.0  # a -0.0 is a different bit pattern: it must come back as -0.0
        m.fc1.weight[2, :] = 0.0
        m.fc1.weight[2, -1] = 1.5  # long runs of zeros before both need filler entries
    state = dict(m.state_dict())
    state["steps_taken"] = torch.tensor([3, -1, 2**40], dtype=torch.int64)  # dense, not float
    state["fc1.weight64"] = m.fc1.weight.detach().double()  # listed as sparse but float64: stored dense
    keys = sparse_weight_keys(m) | {"fc1.weight64"}
    assert "fc1.weight" in keys and "fc1.bias" not in keys
    back = dsparse.decode(dsparse.encode(state, keys, codec))
    assert list(back) == list(state)
    for k, t in state.items():
        assert _bits_equal(back[k], t.contiguous()), k
    assert torch.signbit(back["fc1.weight"][1, 255]) and back["fc1.weight"][1, 255] == 0


def test_sparse_file_stores_only_the_nonzeros() -> None:
    w = torch.zeros(100, 100)
    w[::10, ::10] = torch.arange(1, 101, dtype=torch.float32).reshape(10, 10)
    blob = dsparse.encode({"w": w}, {"w"}, "none")
    assert len(blob) < 100 * 100 * 4 / 20  # 100 values + 100 gaps (+ fillers) + header
    assert torch.equal(dsparse.decode(blob)["w"], w)
    dense = dsparse.encode({"w": w}, set(), "none")
    assert len(dense) > 100 * 100 * 4


def test_sparse_file_wrong_magic_names_the_source() -> None:
    with pytest.raises(UserError, match=r"m\.dsparse: not a deepshrink sparse file"):
        dsparse.decode(b"DSONNX01" + bytes(16), "m.dsparse")


def test_truncated_sparse_file_is_a_user_error() -> None:
    blob = dsparse.encode({"w": torch.ones(64, 64)}, {"w"})
    with pytest.raises(UserError, match="m.dsparse"):
        dsparse.decode(blob[:-3], "m.dsparse")


# --- .dsonnx ------------------------------------------------------------------------------------------


def _onnx_bytes(kind: str, tmp_path: Path) -> bytes:
    m = _mostly_zero_mlp()
    if kind == "qdq-int8":
        x = torch.randn(32, 1, 8, 8)
        return build_qdq(m, observe_ranges(m, x), (1, 8, 8), {"1", "3"}).SerializeToString()
    dtype = torch.float16 if kind == "fp16" else torch.float32
    return export_onnx(m, tmp_path / "m.onnx", torch.zeros(1, 1, 8, 8), dtype).read_bytes()


@pytest.mark.parametrize("kind", ["fp32", "fp16", "qdq-int8"])
def test_dsonnx_decodes_to_identical_bytes(kind: str, tmp_path: Path) -> None:
    raw = _onnx_bytes(kind, tmp_path)
    packed = dsonnx.encode(raw)
    assert dsonnx.decode(packed) == raw  # bit-exact: what ONNX Runtime loads is what was exported
    assert dsonnx.encode(raw) == packed  # deterministic
    assert len(packed) < 0.6 * len(raw)  # ~80 % of the big weight matrix is zeros and not stored
    assert 0.7 < zero_fraction(raw) < 0.9


def test_dsonnx_keeps_small_initializers_in_the_graph(tmp_path: Path) -> None:
    raw = _onnx_bytes("fp32", tmp_path)
    for codec in ("none", "zlib"):
        assert dsonnx.decode(dsonnx.encode(raw, codec)) == raw
    inits = {i.name: i for i in onnx.load_from_string(raw).graph.initializer}
    assert inits["1.weight"].dims == [32, 64]  # the one initializer at or over MIN_ELEMENTS (1024)


def test_corrupt_or_foreign_dsonnx_is_a_user_error(tmp_path: Path) -> None:
    packed = dsonnx.encode(_onnx_bytes("fp32", tmp_path))
    with pytest.raises(UserError, match=r"x\.dsonnx: corrupt sparse ONNX"):
        dsonnx.decode(packed[:-200], "x.dsonnx")
    with pytest.raises(UserError, match=r"x\.dsonnx: corrupt sparse ONNX"):
        dsonnx.decode(packed[:30], "x.dsonnx")
    with pytest.raises(UserError, match="not a deepshrink sparse ONNX"):
        dsonnx.decode(b"garbage", "x.dsonnx")


# --- .dsq ---------------------------------------------------------------------------------------------


def test_bit_packing_round_trips() -> None:
    rng = np.random.default_rng(0)
    for bits in range(2, 9):
        v = rng.integers(0, 2**bits, 1001).astype(np.uint8)
        blob = pack_bits(v, bits)
        assert len(blob) == (1001 * bits + 7) // 8
        assert np.array_equal(unpack_bits(blob, bits, 1001), v)


def test_bit_packing_is_lsb_first() -> None:
    assert pack_bits(np.array([1, 2, 3, 0], np.uint8), 2) == bytes([0b00111001])


def _weight_keys(steps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{name}.weight": s for name, s in steps.items()}


def _steps(m: nn.Sequential, qmax: int) -> dict[str, torch.Tensor]:
    return {"1": weight_scales(m[1].weight, qmax), "3": weight_scales(m[3].weight, qmax)}


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_packed_weights_decode_to_code_times_step(bits: int) -> None:
    m = _mostly_zero_mlp(zero=0.3)
    qmax = 2 ** (bits - 1) - 1
    steps = _steps(m, qmax)
    blob = encode(m.state_dict(), bits, _weight_keys(steps))
    state = decode(blob, "m.dsq")
    assert list(state) == list(m.state_dict())
    for name, layer in (("1", m[1]), ("3", m[3])):
        w, step = layer.weight.detach(), steps[name]
        codes = quantize_weight(w, step, qmax)
        assert codes.abs().max() <= qmax
        assert torch.equal(state[f"{name}.weight"], codes * step.reshape(-1, 1))  # exactly, in float32
        assert state[f"{name}.weight"].dtype == torch.float32
        assert torch.equal(state[f"{name}.bias"], layer.bias.detach())  # everything else stored as is
    weights = m[1].weight.numel() + m[3].weight.numel()
    assert len(blob) < weights * bits / 8 + (32 + 10) * 4 * 2 + 600  # codes + biases + steps + header


def test_packed_file_wrong_magic_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"m\.dsq: not a deepshrink bit-packed weight file"):
        decode(b"DSQP0001" + bytes(64), "m.dsq")
    with pytest.raises(UserError, match=r"m\.dsq"):
        decode(b"", "m.dsq")


@pytest.mark.parametrize("keep", [10, 40, -5])
def test_truncated_packed_file_is_a_user_error(keep: int) -> None:
    m = _mostly_zero_mlp()
    blob = encode(m.state_dict(), 4, _weight_keys(_steps(m, 7)))
    with pytest.raises(UserError, match=r"m\.dsq"):
        decode(blob[:keep], "m.dsq")
