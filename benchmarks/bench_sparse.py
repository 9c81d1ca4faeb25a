"""Dense vs sparse-kernel time per image against density, LeNet-300-100, 1 thread, batch 256 and 1.

Weights: a fresh (or `--checkpoint`) model magnitude-pruned globally to each density; inputs: the
dataset's real test images (at batch 1 the input's background pixels are skipped, so real images
matter). Runners: the dense model in ONNX Runtime (the baseline deployment) and in torch, and the
sparse runtime (export/sparse_runtime.py), timed interleaved through the one timing loop; speedups
are ratios within one run. Writes `sparse_bench.csv` and `sparse_bench.png` to --out.

    DEEPSHRINK_DATA=../shared/data python benchmarks/bench_sparse.py --out /tmp/bench-sparse
"""

import argparse
import csv
import os
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from deepshrink.checkpoint import load_checkpoint
from deepshrink.data import load_dataset
from deepshrink.export.formats.onnx_float import export_onnx
from deepshrink.export.runtimes import ort_runner, torch_runner
from deepshrink.export.runtimes.sparse import SparseNet, build, sparse_runner
from deepshrink.measure.latency import time_passes, time_singles
from deepshrink.models import create_model, weight_of, weighted_layers

SPARSITIES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)
COLUMNS = ["dataset", "sparsity", "batch", "runtime", "us_per_image", "speedup_vs_onnxruntime", "us_per_image_min",
           "speedup_vs_onnxruntime_min", "nonzeros", "kept_inputs", "load_avg"]


@torch.no_grad()
def pruned(model: nn.Module, sparsity: float) -> nn.Module:
    """Global magnitude pruning of every weight matrix (the prune step's default scope)."""
    weights = [weight_of(model, n) for n, _ in weighted_layers(model)]
    flat = torch.cat([w.abs().flatten() for w in weights])
    threshold = flat.kthvalue(max(1, int(sparsity * flat.numel()))).values
    for w in weights:
        w[w.abs() <= threshold] = 0.0
    return model


def time_one(model: nn.Module, x: np.ndarray, calib: np.ndarray, work: Path, repeats: int,
             singles: int) -> tuple[dict[int, dict[str, tuple[float, float]]], SparseNet]:
    """(batch -> runtime -> (median, min) µs per image, the sparse runtime's network). The min is
    kept beside the median: on a shared machine a pass preempted by other jobs inflates the median."""
    net = build(model, calib)
    assert net is not None
    onnx_path = export_onnx(model, work / "dense.onnx", torch.from_numpy(x[:1]))
    runners = {"onnxruntime": ort_runner(onnx_path)(1, "cpu"), "torch": torch_runner(model)(1, "cpu"),
               "sparse": sparse_runner(net)(1, "cpu")}
    xs = dict.fromkeys(runners, x)
    out = {}
    for batch, table in ((256, time_passes(runners, xs, 256, repeats)), (1, time_singles(runners, xs, singles))):
        out[batch] = {k: (statistics.median(v), min(v)) for k, v in table.items()}
    return out, net


def bench(dataset: str, checkpoint: Path | None, work: Path, images: int, repeats: int,
          singles: int) -> list[dict[str, Any]]:
    data = load_dataset(dataset)
    x, calib = data.test_x[:images].numpy(), data.train_x[:512].numpy()
    rows = []
    for s in SPARSITIES:
        torch.manual_seed(0)
        base = load_checkpoint(checkpoint)[0] if checkpoint else create_model("lenet-300-100", data)
        t, net = time_one(pruned(base.eval(), s), x, calib, work, repeats, singles)
        for batch in (256, 1):
            ref, ref_min = t[batch]["onnxruntime"]
            rows += [{"dataset": dataset, "sparsity": s, "batch": batch, "runtime": runtime,
                      "us_per_image": round(us, 3), "speedup_vs_onnxruntime": round(ref / us, 3),
                      "us_per_image_min": round(lo, 3), "speedup_vs_onnxruntime_min": round(ref_min / lo, 3),
                      "nonzeros": net.nnz, "kept_inputs": len(net.keep), "load_avg": round(os.getloadavg()[0], 2)}
                     for runtime, (us, lo) in t[batch].items()]
        print(dataset, s, {b: {k: (round(m, 2), round(lo, 2)) for k, (m, lo) in t[b].items()} for b in (256, 1)},
              flush=True)
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    datasets = sorted({r["dataset"] for r in rows})
    fig, axes = plt.subplots(len(datasets), 2, figsize=(10, 3.6 * len(datasets)), squeeze=False)
    for i, ds in enumerate(datasets):
        for j, batch in enumerate((256, 1)):
            ax = axes[i][j]
            for runtime in ("onnxruntime", "torch", "sparse"):
                pts = [(r["sparsity"], r["us_per_image_min"]) for r in rows
                       if r["dataset"] == ds and r["batch"] == batch and r["runtime"] == runtime]
                ax.plot(*zip(*pts, strict=True), marker="o", label=runtime)
            ax.set(title=f"{ds} LeNet-300-100, batch {batch}, 1 thread", xlabel="sparsity (fraction of weights 0)",
                   ylabel="µs per image (min of the passes)", yscale="log")
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench-sparse"))
    ap.add_argument("--datasets", nargs="+", default=["mnist", "cifar10"])
    ap.add_argument("--checkpoint", type=Path, action="append", default=[],
                    help="trained LeNet-300-100 checkpoint per dataset, in --datasets order (default: fresh)")
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--singles", type=int, default=1000)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    rows = []
    for i, ds in enumerate(args.datasets):
        ckpt = args.checkpoint[i] if i < len(args.checkpoint) else None
        rows += bench(ds, ckpt, args.out, args.images, args.repeats, args.singles)
    with (args.out / "sparse_bench.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    plot(rows, args.out / "sparse_bench.png")
    print(f"wrote {args.out / 'sparse_bench.csv'} and {args.out / 'sparse_bench.png'}")


if __name__ == "__main__":
    main()
