"""Quantization on real baselines: accuracy in ONNX Runtime, artifact bytes and side-by-side speed
(1 thread, batch 256) against each FP32 baseline, checked against issue #3's "done when" targets.

    DEEPSHRINK_DATA=../shared/data nice .venv/bin/python benchmarks/bench_quantize.py \
        runs/base-mnist-lenet-300-100/artifacts/mnist-lenet-300-100/model.safetensors ... --out /tmp/bq

Each checkpoint gets every step of --steps through `deepshrink compress`'s own code path, so the
numbers are the rows results.csv/latency.csv hold. Writes summary.csv and accuracy_vs_bits.png.
"""

import argparse
import csv
from pathlib import Path
from typing import Any

import deepshrink as ds
from deepshrink.measure.latency import LatencyConfig
from deepshrink.report.plots import plot_accuracy_vs_bits

STEPS = {
    "ptq": "quantize:precision=int8,method=ptq",
    "qat": "quantize:precision=int8,method=qat",
    "auto": "quantize:precision=int8,method=ptq,deploy=auto",
    "fp16": "quantize:precision=fp16",
    "fp64": "quantize:precision=fp64",
    "w4": "quantize:precision=int8,method=qat,bits=4,epochs=2,lr=0.01",
    "w2": "quantize:precision=int8,method=qat,bits=2,epochs=2,lr=0.01",
}


def _latency(out: Path, variant: str) -> dict[str, float]:
    """(variant, baseline) µs/image and speedup at 1 thread, batch 256, ONNX Runtime."""
    with (out / "latency.csv").open() as f:
        for r in csv.DictReader(f):
            if (r["variant"], r["runtime"], r["threads"], r["batch"]) == (variant, "onnxruntime", "1", "256"):
                return {"us": float(r["us_per_image_median"]), "speedup": float(r["speedup"])}
    return {"us": float("nan"), "speedup": float("nan")}


def _base_row(out: Path, variant: str) -> dict[str, str]:
    with (out / "results.csv").open() as f:
        return next(r for r in csv.DictReader(f) if r["variant"] == variant)


def _targets(tag: str, model: str, row: dict[str, Any]) -> str:
    """The issue's targets for this row ("" where none applies)."""
    checks: list[tuple[str, bool]] = []
    if tag == "qat":
        checks.append(("acc within 0.3", row["delta_pct"] >= -0.3))
    if tag == "ptq":
        checks.append(("acc within 1", row["delta_pct"] >= -1.0))
    if tag in ("ptq", "qat"):
        checks.append(("<=27% bytes", row["size_ratio"] <= 0.27))
        if model == "lenet-300-100":
            checks.append((">=1.3x", row["speedup"] >= 1.3))
    if tag == "auto":
        checks.append((">=0.95x", row["speedup"] >= 0.95))
    if tag == "w4" and model == "lenet-300-100":
        checks += [("acc within 0.5", row["delta_pct"] >= -0.5), ("<=1/7 bytes", row["size_ratio"] <= 1 / 7)]
    return "; ".join(f"{name}: {'PASS' if ok else 'FAIL'}" for name, ok in checks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-quantize"))
    ap.add_argument("--steps", default=",".join(STEPS), help=f"comma list of {', '.join(STEPS)}")
    ap.add_argument("--data-dir", type=Path, default=None)
    args = ap.parse_args()
    latency = LatencyConfig(runtimes=("onnxruntime",), threads=(1,), batch=256, repeats=10, single_calls=200)
    rows: list[dict[str, Any]] = []
    for ckpt in args.checkpoints:
        for tag in args.steps.split(","):
            out = args.out / f"{ckpt.parent.name}-{tag}"
            row = ds.compress(ckpt, [STEPS[tag]], out=out, data_dir=args.data_dir, device="cpu",
                              latency=latency).row
            base = _base_row(out, row["baseline_variant"])
            lat, base_lat = _latency(out, row["variant"]), _latency(out, row["baseline_variant"])
            r = {"baseline": row["baseline_variant"], "model": row["model"], "step": tag,
                 "fp32_acc": float(base["accuracy_pct"]), "acc": float(row["accuracy_pct"]),
                 "delta_pct": round(float(row["accuracy_pct"]) - float(base["accuracy_pct"]), 2),
                 "fp32_bytes": int(base["size_bytes"]), "bytes": int(row["size_bytes"]),
                 "size_ratio": round(int(row["size_bytes"]) / int(base["size_bytes"]), 4),
                 "fp32_us": base_lat["us"], "us": lat["us"], "speedup": lat["speedup"],
                 "deployment": row.get("deployment", ""), "int8_mode": row.get("int8_mode", "")}
            r["targets"] = _targets(tag, r["model"], r)
            rows.append(r)
            print(" | ".join(f"{k}={v}" for k, v in r.items()), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "summary.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    bits = {"qat": 8, "w4": 4, "w2": 2}
    points = [{"series": r["baseline"], "bits": bits[r["step"]], "accuracy_pct": r["acc"]} for r in rows
              if r["step"] in bits]
    fp32 = {r["baseline"]: r["fp32_acc"] for r in rows if r["step"] in bits}
    points += [{"series": b, "bits": 32, "accuracy_pct": acc} for b, acc in fp32.items()]
    if points:
        print(plot_accuracy_vs_bits(points, args.out / "accuracy_vs_bits.png"))


if __name__ == "__main__":
    main()
