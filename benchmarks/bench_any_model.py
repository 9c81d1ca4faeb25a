"""Any model through every technique, on real data: train a user model (a `PATH.py:CALLABLE` reference)
with the tuned defaults, then apply each step to its checkpoint, each measured from what ships.

    DEEPSHRINK_DATA=../shared/data python benchmarks/bench_any_model.py \
        --model examples/models.py:resnet8 --student examples/models.py:dwnet --out runs/any-resnet8

Writes OUT/summary.csv and OUT/summary.md (accuracy, bytes and share of the FP32 file, ONNX Runtime
speedup at 1 thread and batch 256 from the same paired run, int8 weight elements, wall seconds);
the run directories of `deepshrink train` / `deepshrink compress` stay under OUT/ for inspection.
"""

import argparse
import csv
import time
from pathlib import Path
from typing import Any

import deepshrink as ds
from deepshrink.export.formats.onnx_int8 import int8_weight_elements
from deepshrink.measure.latency import LatencyConfig
from deepshrink.results import read_rows
from deepshrink.variant import slug

STEPS = ("prune.structured:ratio=0.5", "quantize:precision=int8,method=ptq", "quantize:precision=int8,method=qat",
         "prune.unstructured:sparsity=0.8", "distill:student={student}")


def _speedup(run: Path, variant: str) -> str:
    rows = [r for r in read_rows(run / "latency.csv") if r["variant"] == variant and r["runtime"] == "onnxruntime"
            and r["threads"] == "1" and r["batch"] == "256"]
    return f"{float(rows[0]['speedup']):.2f}" if rows else ""


def _row(step: str, r: dict[str, Any], run: Path, fp32_bytes: int, seconds: float) -> dict[str, Any]:
    art = run / r["artifact"]
    onnx = art if art.suffix == ".onnx" else art.with_suffix(".onnx")
    return {"step": step, "variant": r["variant"], "accuracy_pct": round(float(r["accuracy_pct"]), 2),
            "delta_pt": round(float(r["accuracy_pct"]) - float(r["baseline_accuracy_pct"]), 2),
            "size_bytes": int(r["size_bytes"]), "of_fp32_pct": round(100 * int(r["size_bytes"]) / fp32_bytes, 1),
            "speedup_ort_1t_b256": _speedup(run, r["variant"]), "deployment": r["deployment"],
            "int8_weight_elements": int8_weight_elements(str(onnx)) if "int8" in r["deployment"] else "",
            "params_total": r["params_total"], "params_nonzero": r["params_nonzero"], "notes": r.get("notes", ""),
            "seconds": round(seconds, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--student", default="examples/models.py:dwnet")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--epochs", type=int, default=None, help="baseline epochs (default: the tuned default)")
    p.add_argument("--steps", nargs="*", default=list(STEPS))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--quick", action="store_true", help="time ONNX Runtime at 1 thread only, 200 batch-1 calls "
                   "(`make bench`); the default times both runtimes at 1 and all threads")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    latency = LatencyConfig(runtimes=("onnxruntime",), threads=(1,), repeats=3, single_calls=200) \
        if args.quick else None
    base = ds.train(args.model, args.dataset, epochs=args.epochs, out=args.out / "train", latency=latency).row
    rows = [_row("train", base, args.out / "train", int(base["size_bytes"]), time.perf_counter() - t0)]
    ckpt = args.out / "train" / base["checkpoint"]
    for step in args.steps:
        step = step.format(student=args.student)
        run = args.out / slug(step)
        t0 = time.perf_counter()
        result = ds.compress(ckpt, [step], out=run, latency=latency)
        seconds = time.perf_counter() - t0
        rows += [_row(f"{step} (no-teacher control)", result.control.row, run, int(base["size_bytes"]), seconds)] \
            if result.control else []
        rows.append(_row(step, result.row, run, int(base["size_bytes"]), seconds))
        _write(args.out, rows)
        print(rows[-1], flush=True)


def _write(out: Path, rows: list[dict[str, Any]]) -> None:
    with (out / "summary.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
