"""Temperature-sweep timing: 6 temperatures for one teacher and dataset, target <= 180 s on 2 cores.

    DEEPSHRINK_DATA=../shared/data .venv/bin/python benchmarks/bench_distill.py \
        --teacher runs/train-mnist-lenet-5/artifacts/mnist-lenet-5/model.safetensors --out runs/bench-distill

Writes OUT/bench_distill.json (total and per-temperature seconds, teacher-logit seconds, pass/fail
against the target), OUT/sweep.csv and OUT/distill_temperature.png. The clock covers everything a
sweep costs after the data is loaded: teacher logits (computed once, then cached) and every student.
On a shared machine compare `cpu_seconds` (process CPU time) too; `load_average_1min` shows the contention.
"""

import argparse
import csv
import io
import json
import os
import time
from pathlib import Path

import torch

from deepshrink.checkpoint import atomic_write_bytes, load_checkpoint
from deepshrink.compress.distill import DistillConfig
from deepshrink.compress.distill.sweep import DEFAULT_TEMPERATURES, plot_sweep, temperature_sweep
from deepshrink.data import load_dataset
from deepshrink.variant import StepContext, Variant

TARGET_SECONDS = 180.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", type=Path, required=True, help="trained teacher checkpoint (.safetensors)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-distill"))
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--student", default="mlp-50")
    ap.add_argument("--alpha", type=float, default=DistillConfig.alpha)
    ap.add_argument("--epochs", type=int, default=0, help="0 = the student's tuned default")
    ap.add_argument("--temperatures", default=",".join(f"{t:g}" for t in DEFAULT_TEMPERATURES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    model, manifest = load_checkpoint(args.teacher)
    data = load_dataset(manifest.dataset, args.data_dir)
    temps = [float(t) for t in args.temperatures.split(",")]
    teacher = Variant(f"{manifest.dataset}-{manifest.model}", model, manifest)
    cfg = DistillConfig(student=args.student, alpha=args.alpha, epochs=args.epochs)
    ctx = StepContext(data=data, seed=args.seed, cache_dir=args.out / "cache")

    start, cpu_start = time.perf_counter(), time.process_time()
    rows = temperature_sweep(teacher, cfg, ctx, temps)
    total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    for r in rows:
        r["teacher"] = f"{manifest.model} ({manifest.dataset})"
    plot_sweep(rows, args.out / "distill_temperature.png")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(args.out / "sweep.csv", buf.getvalue().encode())
    result = {
        "teacher": str(args.teacher), "dataset": manifest.dataset, "student": args.student,
        "temperatures": temps, "epochs_per_student": rows[0]["epochs"], "threads": args.threads,
        "total_seconds": round(total, 2), "cpu_seconds": round(cpu, 2),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "per_temperature_seconds": [round(r["seconds"], 2) for r in rows],
        "target_seconds": TARGET_SECONDS, "within_target": total <= TARGET_SECONDS,
        "chosen_temperature": next(r["temperature"] for r in rows if r["chosen"]),
        "val_acc_pct": [round(r["val_acc_pct"], 2) for r in rows],
        "test_acc_torch_pct": [round(r["test_acc_torch_pct"], 2) for r in rows],
    }
    atomic_write_bytes(args.out / "bench_distill.json", json.dumps(result, indent=2).encode())
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
