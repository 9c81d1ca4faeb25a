"""`mcu`: an artifact as C99 for a microcontroller (model.h + model.c), built for this host and a Cortex-M
core, run in an emulator and measured (SPEC §12)."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepshrink.api.model import RUNS
from deepshrink.mcu import McuOptions, build_mcu
from deepshrink.mcu.run import ENERGY_NJ_PER_CYCLE, HOST_TIMING
from deepshrink.mcu.run_tflite import build_tflite
from deepshrink.progress import Progress
from deepshrink.variant import slug


@dataclass
class McuBuild:
    """The measured C library: its results.csv row and the folder holding model.h, model.c, firmware.elf."""

    row: dict[str, Any]
    out: Path

    @property
    def model_c(self) -> Path:
        return self.out / "model.c"


def mcu(artifact: str | Path, target: str = "cortex-m4", out: str | Path | None = None, dataset: str | None = None,
        data_dir: str | Path | None = None, images: int = 100, clock_mhz: float = 80.0, time_host: bool = True,
        prefix: str = "ds", quiet: bool = True, arith: str = "",
        energy_nj_per_cycle: float = ENERGY_NJ_PER_CYCLE, optimize: str = "speed") -> McuBuild:
    """Turn an INT8 or compressed artifact into C99 (model.h + model.c), build it for this host (accuracy on
    the test set, agreement with ONNX Runtime) and for `target` (flash, RAM), run `images` test images in
    the emulator (bit for bit against the host build) and count instructions. `prefix` names every exported C
    symbol and macro (`ds_infer`, `DS_ARENA_BYTES`), so models of other prefixes link into one image. The
    folder defaults to runs/mcu-VARIANT. A full-integer `.tflite` model is read with TensorFlow Lite's
    arithmetic and checked against TensorFlow Lite Micro's interpreter (SPEC §12.1). `arith`: "float" or
    "fixed" requantization ("": fixed on a core without an FPU); `energy_nj_per_cycle` prices the estimated
    cycles (default: MLPerf Tiny's NUCLEO-L4R5ZI). `optimize`: "speed" (convolution kernels specialized per
    layer shape) or "size" (one generic kernel: the smallest image)."""
    path = Path(artifact)
    opts = McuOptions(target=target, images=images, clock_mhz=clock_mhz, latency=HOST_TIMING if time_host else None,
                      prefix=prefix, arith=arith, energy_nj_per_cycle=energy_nj_per_cycle, optimize=optimize)
    run_dir = Path(out) if out else RUNS / slug(f"mcu-{path.parent.name or path.stem}")
    with Progress(enabled=not quiet) as progress:
        build = build_tflite if path.suffix.lower() == ".tflite" else build_mcu
        row = build(path, run_dir, dataset, Path(data_dir) if data_dir else None, opts, progress)
    return McuBuild(row, run_dir)
