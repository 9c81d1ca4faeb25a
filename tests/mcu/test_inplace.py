"""Pruned, clustered and bit-packed weights run in place: the stored entries decode back to the rows (a
reference decoder written from the format's description), the generated C equals ONNX Runtime on the same
INT8 model, and the per-layer choice picks the smallest layout within its instruction bound."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from deepshrink.export.formats.onnx_int8 import build_qdq
from deepshrink.mcu import layouts
from deepshrink.mcu.layouts import WIDE, Layout, choose, coded, packed, sparse16
from deepshrink.mcu.source import channel_scales
from deepshrink.models import weight_of, weighted_layers
from deepshrink.quant.plan import observe_ranges

from mcu_helpers import generate, host_logits, write


def _decode(layout: Layout, shape: tuple[int, int]) -> np.ndarray:
    """The rows a layout stores, read as the kernels read them; fillers' products taken back."""
    out = np.zeros(shape, np.int64)
    if layout.kind == "sparse16":
        e = layout.entries[: 2 * int(layout.counts.sum())].reshape(-1, 2)
        values = [(int(g), int(np.int8(np.uint8(v)))) for g, v in e]
    else:
        width = int(layout.kind[6:])
        body = layout.entries[:-4]
        if width == 12:
            packed = body.reshape(-1, 3).astype(np.uint32)
            pairs = packed[:, 0] | (packed[:, 1] << 8) | (packed[:, 2] << 16)
            words = np.stack([pairs & 0xFFF, pairs >> 12], 1).reshape(-1)
        else:
            w32 = body.view("<u4").astype(np.uint32)
            words = np.stack([w32 & 0x3FF, (w32 >> 10) & 0x3FF, w32 >> 20], 1).reshape(-1)
        g = layout.gbits
        values = [(int(w) & ((1 << g) - 1), int(layout.codebook[int(w) >> g])) for w in words]
    k = 0
    for r, n in enumerate(layout.counts):
        pos = -1
        for gap, v in values[k : k + n]:
            pos += gap + 1
            out[r, pos] += v
        k += n
    for r, pos, code in layout.comp.reshape(-1, 3)[:-1]:
        out[r, pos] -= layout.codebook[code]
    return out


@settings(max_examples=60, deadline=None)
@given(arrays(np.int8, st.tuples(st.integers(1, 9), st.integers(1, 700)),
              elements=st.sampled_from([0, 0, 0, 0, 0, 0, 0, -3, 5, 17, -128, 127])))
def test_sparse_layouts_store_exactly_the_rows(rows: np.ndarray) -> None:
    for layout in (sparse16(rows), coded(rows, 12), coded(rows, 10)):
        assert layout is not None
        assert np.array_equal(_decode(layout, rows.shape), rows)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([2, 4]), st.booleans(), st.integers(1, 5), st.integers(1, 70), st.integers(0, 2**32 - 1))
def test_packed_layouts_store_exactly_the_rows(bits: int, wide: bool, n: int, k: int, seed: int) -> None:
    """Weight j = 4s + i of a word: byte i (WIDE[i] for int16 activations), bits BITS*s, stored + 2^(BITS-1)."""
    rows = np.random.default_rng(seed).integers(-(1 << (bits - 1)), 1 << (bits - 1), (n, k)).astype(np.int8)
    layout = packed(rows, bits, wide)
    assert layout is not None and packed(np.array([[1 << (bits - 1)]], np.int8), bits, wide) is None
    words = layout.entries.reshape(n, -1, 4)
    out = np.zeros((n, words.shape[1] * 32 // bits), np.int64)
    for j in range(out.shape[1]):
        s, i = (j % (32 // bits)) // 4, j % 4
        byte = words[:, j // (32 // bits), WIDE[i] if wide else i]
        out[:, j] = ((byte >> (bits * s)) & ((1 << bits) - 1)).astype(np.int64) - (1 << (bits - 1))
    assert np.array_equal(out[:, :k], rows)


def test_choice_is_the_smallest_layout_within_the_instruction_bound() -> None:
    rng = np.random.default_rng(0)
    dense = rng.integers(-127, 128, (8, 64)).astype(np.int8)
    assert choose(dense, dense.size).kind == "dense"  # no zeros: nothing to skip
    pruned = np.where(rng.random((8, 400)) < 0.1, rng.choice([-40, -7, 9, 66], (8, 400)), 0).astype(np.int8)
    chosen = choose(pruned, pruned.size)
    assert chosen.kind == "sparse10" and chosen.gbits == 8  # 4 shared values: 2-bit codes, 8-bit gaps
    assert chosen.nbytes < sparse16(pruned).nbytes < pruned.size
    varied = np.where(rng.random((8, 400)) < 0.1, rng.integers(-127, 128, (8, 400)), 0).astype(np.int8)
    assert choose(varied, varied.size).kind == "sparse16"  # ~200 distinct values: no 12-bit codebook
    half = np.where(rng.random((8, 400)) < 0.6, rng.integers(1, 128, (8, 400)), 0).astype(np.int8)
    assert choose(half, half.size).kind == "dense"  # 40 % zeros: entries cost more than they save


def test_channel_scales_keep_shared_values_and_packed_codes_exact() -> None:
    torch.manual_seed(0)
    shared = torch.tensor([-0.5, -0.1, 0.2, 0.7])[torch.randint(0, 4, (6, 30))]
    s = channel_scales(shared)
    assert torch.all(s == s[0])  # one scale for the layer: one codebook
    codes = torch.randint(-7, 8, (5, 40)).float()
    steps = torch.rand(5) * 0.1 + 0.01
    s = channel_scales(codes * steps[:, None])
    q = codes * steps[:, None] / s[:, None]
    assert torch.allclose(q, q.round(), atol=1e-3)  # each weight an integer code under its own step


class _Net(nn.Sequential):
    def __init__(self) -> None:
        # 14 x 14 in: both convolutions pooled (the second on H x W x C: four columns per pass in place)
        super().__init__(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 2 * 2, 40), nn.ReLU(), nn.Linear(40, 5))


@torch.no_grad()
def _compressed(keep: float, values: int, seed: int = 0) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A net pruned to `keep` of its weights, each layer's survivors clustered to `values` shared values."""
    torch.manual_seed(seed)
    net = _Net().eval()
    for name, _ in weighted_layers(net):
        w = weight_of(net, name)
        mask = torch.rand_like(w) < keep
        centroids = torch.randn(values) * w.abs().max()  # shared values, no common step (not bit-packed codes)
        w.copy_(centroids[(w[..., None] - centroids).abs().argmin(-1)] * mask)
    return net, {n: channel_scales(weight_of(net, n)) for n, _ in weighted_layers(net)}


@torch.no_grad()
def _coded(bits: int, seed: int = 0) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A net whose weights are `bits`-bit codes times a step per output channel (as quantize:bits stores)."""
    torch.manual_seed(seed)
    net = _Net().eval()
    qmax = 2 ** (bits - 1) - 1
    for name, _ in weighted_layers(net):
        w = weight_of(net, name)
        step = torch.rand(w.shape[0]) * 0.05 + 0.01
        w.copy_(torch.randint(-qmax, qmax + 1, w.shape).float() * step.reshape(-1, *[1] * (w.dim() - 1)))
    return net, {n: channel_scales(weight_of(net, n)) for n, _ in weighted_layers(net)}


@torch.no_grad()
def _bordered(seed: int = 0) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A pruned, clustered fully connected layer that never reads the image's border (as a pruned MNIST
    LeNet-300-100's fc1): its live inputs are gathered first."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(196, 30), nn.ReLU(), nn.Linear(30, 5)).eval()
    live = torch.zeros(14, 14, dtype=torch.bool)
    live[5:9, 4:10] = True
    for name, _ in weighted_layers(net):
        w = weight_of(net, name)
        mask = (torch.rand_like(w) < 0.3) & (live.reshape(1, -1) if w.shape[1] == 196 else True)
        centroids = torch.randn(16) * w.abs().max()
        w.copy_(centroids[(w[..., None] - centroids).abs().argmin(-1)] * mask)
    return net, {n: channel_scales(weight_of(net, n)) for n, _ in weighted_layers(net)}


CASES = {"clustered": lambda: _compressed(0.3, 16), "clustered-12bit": lambda: _compressed(0.3, 16),
         "bordered": lambda: _bordered(),
         "pruned": lambda: _compressed(0.3, 255),
         "dense": lambda: _compressed(1.0, 200), "4-bit": lambda: _coded(4), "2-bit": lambda: _coded(2)}


@pytest.mark.parametrize(("case", "kinds"), [("clustered", {"sparse10"}), ("clustered-12bit", {"sparse12"}),
                                            ("pruned", {"sparse16"}), ("bordered", {"gather"}),
                                            ("dense", set()), ("4-bit", {"packed4"}), ("2-bit", {"packed2"})])
def test_in_place_layers_equal_onnx_runtime(tmp_path: Path, case: str, kinds: set[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _only_12bit(case, monkeypatch)
    net, scales = CASES[case]()
    x = torch.randn(48, 1, 14, 14)
    model = build_qdq(net, observe_ranges(net, x), (1, 14, 14), set(scales), quantize_logits=True, scales=scales)
    gen = generate(model)
    used = {note.split()[0] for note in gen.prog.layouts} | (gen.prog.kernels & {"gather"})
    assert kinds <= used and (kinds or not used), gen.prog.layouts
    c, ort = host_logits(gen, tmp_path, x.numpy())
    assert np.array_equal(c, ort), f"{(c != ort).sum()} of {c.size} logits differ"


def _only_12bit(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 12-bit entries win over 10-bit ones on big layers of many shared values; small test layers never
    have those, so the 12-bit kernels are exercised with the 10-bit layout switched off."""
    if case == "clustered-12bit":
        real = layouts.coded
        monkeypatch.setattr(layouts, "coded", lambda rows, width: real(rows, width) if width == 12 else None)


@pytest.mark.parametrize("case", ["clustered", "clustered-12bit", "pruned", "bordered", "4-bit", "2-bit"])
def test_in_place_image_equals_host_and_holds_no_dense_copy(tmp_path: Path, case: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _only_12bit(case, monkeypatch)
    from elftools.elf.elffile import ELFFile

    from deepshrink.mcu import toolchain
    from deepshrink.mcu.emulate import Firmware
    from deepshrink.mcu.measure import HostLibrary, ort_quantize

    net, scales = {"clustered": lambda: _compressed(0.12, 16, seed=1),
                   "clustered-12bit": lambda: _compressed(0.12, 16, seed=1),
                   "pruned": lambda: _compressed(0.12, 255, seed=1), "bordered": lambda: _bordered(seed=1),
                   "4-bit": lambda: _coded(4, seed=1), "2-bit": lambda: _coded(2, seed=1)}[case]()
    x = torch.randn(48, 1, 14, 14)
    model = build_qdq(net, observe_ranges(net, x), (1, 14, 14), set(scales), quantize_logits=True, scales=scales)
    gen = generate(model)
    folder = write(gen, tmp_path)
    elf, warnings = toolchain.build_target(folder, folder / "fw", "cortex-m4")
    assert "warning" not in warnings, warnings
    lib, _ = toolchain.build_host(folder, folder)
    xq = ort_quantize(gen.graph, x[:3].numpy())
    expected = HostLibrary(lib, 5, gen.graph.input.size).quantized(xq)[0]
    fw = Firmware.load(elf)
    for i in range(3):
        assert np.array_equal(fw.infer(xq[i], 5)[0], expected[i])
    # No layer stored in place has its dense weight array (<layer>_weights) in the image: only entries, codes,
    # counts; and every kernel it uses is a plain function defined once under its full name (grep finds it).
    with elf.open("rb") as f:
        dense = {s["st_size"] for s in ELFFile(f).get_section_by_name(".symtab").iter_symbols()
                 if s.name.endswith("_weights")}
    defined = re.findall(r"^static void (ds_\w+)\(", gen.sources.body, re.M)
    assert gen.prog.specs and all(defined.count(name) == 1 for name in gen.prog.specs), (gen.prog.specs, defined)
    assert "##" not in gen.sources.body
    assert gen.prog.in_place and not dense & set(gen.prog.in_place), (gen.prog.layouts, dense)
