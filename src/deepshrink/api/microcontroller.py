"""`mcu`: an artifact as C99 for a microcontroller (model.h + model.c), built for this host and a Cortex-M
core, run in an emulator and measured (SPEC §12)."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepshrink.api.model import RUNS
from deepshrink.mcu import McuOptions, build_mcu
from deepshrink.mcu.run import HOST_TIMING
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
        prefix: str = "ds", quiet: bool = True) -> McuBuild:
    """Turn an INT8 or compressed artifact into C99 (model.h + model.c), build it for this host (accuracy on
    the test set, agreement with ONNX Runtime) and for `target` (flash, RAM), run `images` test images in
    the emulator (bit for bit against the host build) and count instructions. `prefix` names every exported C
    symbol and macro (`ds_infer`, `DS_ARENA_BYTES`), so models of other prefixes link into one image. The
    folder defaults to runs/mcu-VARIANT."""
    path = Path(artifact)
    opts = McuOptions(target=target, images=images, clock_mhz=clock_mhz, latency=HOST_TIMING if time_host else None,
                      prefix=prefix)
    run_dir = Path(out) if out else RUNS / slug(f"mcu-{path.parent.name or path.stem}")
    with Progress(enabled=not quiet) as progress:
        row = build_mcu(path, run_dir, dataset, Path(data_dir) if data_dir else None, opts, progress)
    return McuBuild(row, run_dir)
