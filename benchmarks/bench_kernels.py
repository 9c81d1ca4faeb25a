"""Instructions and estimated Cortex-M4 cycles per multiply-accumulate of `deepshrink mcu`'s kernels on the
layer mixes MLPerf Tiny's models are made of: a DS-CNN-like keyword spotter (first convolution 10x4 stride 2
on a 1x49x10 input, then depthwise 3x3 + pointwise 1x1 blocks), a MobileNetV1-ish block stack on a 3x96x96
image, and examples/models.py's ResNet-8 (3x32x32). Weights are random (the dense kernels' cost does not
depend on their values); each model is quantized by ONNX Runtime, lowered with every layer dense, built for
the Cortex-M4, run in the emulator on one image, and its logits checked against ONNX Runtime's.
Prints a table and writes kernels_bench.csv to --out.

    PYTHONPATH=src python benchmarks/bench_kernels.py --out /tmp/bench-kernels
"""

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deepshrink.export.formats.onnx_int8_ort import quantize_graph
from deepshrink.mcu import toolchain
from deepshrink.mcu.arena import plan
from deepshrink.mcu.emit import emit
from deepshrink.mcu.emulate import Firmware
from deepshrink.mcu.graph import read_graph
from deepshrink.mcu.lower import lower
from deepshrink.mcu.measure import integer_logits, ort_quantize
from deepshrink.results import write_rows

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from examples.models import resnet8

COLUMNS = ["model", "instructions", "cycles_est", "macs", "instructions_per_mac", "cycles_per_mac", "exact"]


def _dw_pw(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin), nn.BatchNorm2d(cin), nn.ReLU(),
            nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout), nn.ReLU()]


def dscnn() -> nn.Module:
    """DS-CNN (small) as MLPerf Tiny's keyword spotting: conv 10x4 stride 2 to 64, 4 x (dw 3x3, pw 64)."""
    layers: list[nn.Module] = [nn.Conv2d(1, 64, (10, 4), 2, (5, 1)), nn.BatchNorm2d(64), nn.ReLU()]
    for _ in range(4):
        layers += _dw_pw(64, 64, 1)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 12))


def mobilenet() -> nn.Module:
    """The first blocks of MobileNetV1 0.25 at 96x96 (visual wake words), then a small head."""
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU()]
    for cin, cout, stride in ((8, 16, 1), (16, 32, 2), (32, 32, 1), (32, 64, 2), (64, 64, 1)):
        layers += _dw_pw(cin, cout, stride)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 2))


MODELS = {"dscnn": (dscnn, (1, 49, 10)), "mobilenet_96": (mobilenet, (3, 96, 96)),
          "resnet8": (lambda: resnet8(10, (3, 32, 32)), (3, 32, 32))}


def measure(name: str, work: Path) -> dict[str, object]:
    make, shape = MODELS[name]
    return measure_net(name, make, shape, work)


def measure_net(name: str, make: Callable[[], nn.Module], shape: tuple[int, ...], work: Path) -> dict[str, object]:
    """One model built for the Cortex-M4 and counted on one image (its logits checked against ONNX Runtime)."""
    torch.manual_seed(0)
    net = make().eval()
    x = torch.randn(16, *shape)
    model = quantize_graph(net, x[:1], x)
    graph = read_graph(model, f"{name}.onnx")
    prog = lower(graph, in_place=False)
    arena = plan(prog.buffers)
    src = emit(prog, arena, np.zeros((shape[0], 256), np.int8), name, "ds")
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.h").write_text(src.header)
    (folder / "model.c").write_text(src.body)
    elf, _ = toolchain.build_target(folder, folder / "firmware", "cortex-m4")
    fw = Firmware.load(elf)
    xs = x.numpy()[:1]
    logits, instructions, cycles = fw.count(ort_quantize(graph, xs)[0], graph.tensors[graph.output].size)
    want = integer_logits(model, xs, graph.offset)[0]
    return {"model": name, "instructions": instructions, "cycles_est": cycles, "macs": prog.macs,
            "instructions_per_mac": round(instructions / prog.macs, 3), "cycles_per_mac": round(cycles / prog.macs, 3),
            "exact": bool(np.array_equal(logits, want))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows.append(measure(name, Path(tmp)))
            print("  ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_rows(args.out / "kernels_bench.csv", rows, COLUMNS)


if __name__ == "__main__":
    main()
