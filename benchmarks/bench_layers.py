"""Single layers, deepshrink's kernels beside CMSIS-NN's (the kernels TensorFlow Lite Micro runs on a
Cortex-M4), in instructions and estimated cycles per multiply-accumulate in the same emulator.

deepshrink: a layer's cost is the difference between two models, one with it and one without (a 1x1
convolution on the network input first, so the layer reads an H x W x C map, then the same head).
CMSIS-NN: benchmarks/cmsis/layers.c calls its wrappers (arm_convolve_wrapper_s8, arm_depthwise_conv_wrapper_s8)
on the same geometries, built from ../shared/tflm/third_party/cmsis_nn with -Os (our kernels' flags) and
-O2. Writes layers_bench.csv to --out.

    PYTHONPATH=src python benchmarks/bench_layers.py --out /tmp/bench-layers
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from torch import nn

from deepshrink.mcu import toolchain
from deepshrink.mcu.emulate import Firmware
from deepshrink.results import write_rows

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_kernels import measure_net

CMSIS = Path(__file__).resolve().parents[2] / "shared" / "tflm" / "third_party"
# name: (channels in, height, width, the layer, its multiply-accumulates); each keeps its input's shape, so both
# models' heads cost the same
LAYERS = {
    "dw64": (64, 25, 5, lambda: nn.Conv2d(64, 64, 3, 1, 1, groups=64), 25 * 5 * 64 * 9),
    "pw64": (64, 25, 5, lambda: nn.Conv2d(64, 64, 1), 25 * 5 * 64 * 64),
    "c3x16": (16, 32, 32, lambda: nn.Conv2d(16, 16, 3, 1, 1), 32 * 32 * 16 * 16 * 9),
    "c3x64": (64, 8, 8, lambda: nn.Conv2d(64, 64, 3, 1, 1), 8 * 8 * 64 * 64 * 9),
    "dw32": (32, 24, 24, lambda: nn.Conv2d(32, 32, 3, 1, 1, groups=32), 24 * 24 * 32 * 9),
}
COLUMNS = ["layer", "macs", "ours_instructions_per_mac", "ours_cycles_per_mac", "cmsis_os_instructions_per_mac",
           "cmsis_os_cycles_per_mac", "cmsis_o2_instructions_per_mac", "cmsis_o2_cycles_per_mac"]


def _ours(name: str, work: Path) -> tuple[int, int]:
    c, h, w, layer, _ = LAYERS[name]

    def net(with_layer: bool) -> nn.Module:
        body = [nn.Conv2d(3, c, 1), nn.ReLU(), *([layer(), nn.ReLU()] if with_layer else [])]
        return nn.Sequential(*body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 4))

    a = measure_net(f"{name}_without", lambda: net(False), (3, h, w), work)
    b = measure_net(f"{name}_with", lambda: net(True), (3, h, w), work)
    assert a["exact"] and b["exact"]
    return int(b["instructions"]) - int(a["instructions"]), int(b["cycles_est"]) - int(a["cycles_est"])


def _cmsis(work: Path, opt: str) -> Path:
    cm = CMSIS / "cmsis_nn"
    for name in ("startup.c", "link.ld"):
        (work / name).write_text(toolchain.support_file(name))
    elf = work / f"cmsis_{opt}.elf"
    sources = sorted((cm / "Source" / "ConvolutionFunctions").glob("*.c")) + sorted(
        (cm / "Source" / "NNSupportFunctions").glob("*.c"))
    cmd = [toolchain.CROSS, *toolchain.TARGETS["cortex-m4"].cpu_flags, f"-{opt}", "-ffunction-sections",
           "-fdata-sections", "-nostartfiles", "-Wl,--gc-sections", f"-I{cm / 'Include'}",
           f"-I{CMSIS / 'cmsis' / 'CMSIS' / 'Core' / 'Include'}", "-T", str(work / "link.ld"), "-o", str(elf),
           str(work / "startup.c"), str(Path(__file__).resolve().parent / "cmsis" / "layers.c"), *map(str, sources),
           "-lc", "-lgcc"]
    subprocess.run(cmd, check=True, capture_output=True)
    return elf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("."))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        elves = {opt: _cmsis(work, opt) for opt in ("Os", "O2")}
        for name, (*_, macs) in LAYERS.items():
            n, c = _ours(name, work)
            row: dict[str, object] = {"layer": name, "macs": macs, "ours_instructions_per_mac": round(n / macs, 3),
                                      "ours_cycles_per_mac": round(c / macs, 3)}
            for opt, elf in elves.items():
                _, n, c = Firmware.load(elf, name).count(np.zeros(32 * 32 * 16, np.int8), 4)
                row[f"cmsis_{opt.lower()}_instructions_per_mac"] = round(n / macs, 3)
                row[f"cmsis_{opt.lower()}_cycles_per_mac"] = round(c / macs, 3)
            rows.append(row)
            print("  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_rows(args.out / "layers_bench.csv", rows, COLUMNS)


if __name__ == "__main__":
    main()
