"""Instructions and estimated Cortex-M4 cycles per inference of `deepshrink mcu` on MLPerf Tiny's three int8
TFLite models (ResNet-8, DS-CNN keyword spotting, MobileNetV1 0.25 visual wake words), issue #38's yardstick:
each is converted with TensorFlow Lite's arithmetic, checked against TensorFlow Lite Micro's interpreter on
the host, and run in the emulator on 3 inputs. Prints a table and writes tflite_kernels_bench.csv to --out.

    PYTHONPATH=src python benchmarks/bench_tflite_kernels.py --models /work/shared/mlperf-tiny --out /tmp/bench-tfl
"""

import argparse
from pathlib import Path

from deepshrink.api import mcu
from deepshrink.results import write_rows

MODELS = {"resnet8": "pretrainedResnet_quant.tflite", "kws": "kws_ref_model.tflite", "vww": "vww_96_int8.tflite"}
COLUMNS = ("mcu_instructions", "mcu_instructions_per_mac", "mcu_cycles_per_mac", "mcu_tflm_identical_pct",
           "mcu_emulated_identical", "mcu_flash_bytes", "mcu_ram_bytes")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, default=Path("/work/shared/mlperf-tiny"), help="folder of the .tflite files")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-tflite-kernels"))
    ap.add_argument("--target", default="cortex-m4")
    ap.add_argument("--images", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for name, file in MODELS.items():
        row = mcu(args.models / file, target=args.target, out=args.out / name, images=args.images,
                  time_host=False).row
        rows.append({"model": name, **{k: row.get(k, "") for k in COLUMNS}})
        print(name, *(f"{k}={rows[-1][k]}" for k in COLUMNS[:5]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_rows(args.out / "tflite_kernels_bench.csv", rows, ["model", *COLUMNS])
    print(f"-> {args.out / 'tflite_kernels_bench.csv'}")


if __name__ == "__main__":
    main()
