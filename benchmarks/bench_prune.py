"""Pruning benchmarks: the issue's "done when" checks and the reference study's sweeps (§7.2).

Each experiment runs `ds.compress` on a trained baseline checkpoint (so every number comes
from the exported artifact: sparse file decoded, smaller dense ONNX run in onnxruntime) and prints
accuracy, bytes, parameters and the batched 1-thread speedup against the baseline in the same run.

    DEEPSHRINK_DATA=../shared/data python benchmarks/bench_prune.py \
        --mlp runs/base300/artifacts/mnist-lenet-300-100/model.safetensors \
        --cnn runs/base5/artifacts/mnist-lenet-5/model.safetensors --out /tmp/bench-prune sparse92 neurons80
"""

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import deepshrink as ds
import deepshrink.compress
from deepshrink.checkpoint import load_checkpoint
from deepshrink.compress.prune.sensitivity import pick_layer_sparsities, plot_sensitivity, sensitivity
from deepshrink.data import load_dataset
from deepshrink.measure.latency import LatencyConfig

SWEEP = (0.5, 0.6, 0.7, 0.8, 0.9)
LENET5_DENSE = "fc1=0.9+fc2=0.9"
LENET5_DENSE_CONV = "conv1=0.5+conv2=0.5+fc1=0.867+fc2=0.857"  # 3-8-16-12-10: 3,084 params

EXPERIMENTS: dict[str, tuple[str, list[str]]] = {
    "sparse92": ("mlp", ["prune.unstructured:sparsity=0.92,saliency=magnitude,scope=global,schedule=iterative,"
                         "rounds=3,epochs=9"]),
    "sparse92-obd": ("mlp", ["prune.unstructured:sparsity=0.92,saliency=obd,scope=global,schedule=iterative,"
                             "rounds=3,epochs=9"]),
    "sparse92-obdf": ("mlp", ["prune.unstructured:sparsity=0.92,saliency=obd-fisher,scope=global,"
                              "schedule=iterative,rounds=3,epochs=9"]),
    "neurons80": ("mlp", ["prune.structured:ratio=0.8,layers=fc,importance=l1,epochs=8"]),
    "lenet5-dense": ("cnn", [f"prune.structured:layers={LENET5_DENSE},importance=l1,epochs=10"]),
    "lenet5-dense-conv": ("cnn", [f"prune.structured:layers={LENET5_DENSE_CONV},importance=l1,epochs=10"]),
    **{f"weights{int(s * 100)}": ("mlp", [f"prune.unstructured:sparsity={s},schedule=iterative,rounds=2,epochs=6"])
       for s in SWEEP},
    **{f"units{int(s * 100)}": ("mlp", [f"prune.structured:ratio={s},layers=fc,epochs=6"]) for s in SWEEP},
    # `make bench`'s quick mode: the 90% point with one round of two epochs instead of 2 x 6.
    "weights90-quick": ("mlp", ["prune.unstructured:sparsity=0.9,schedule=iterative,rounds=1,epochs=2"]),
}

LATENCY = LatencyConfig(runtimes=("torch", "onnxruntime", "sparse"), threads=(1,), batch=256, repeats=5,
                        single_calls=200)


def speedups(out: Path, variant: str) -> dict[str, float]:
    """Batched 1-thread speedup per runtime, read back from latency.csv."""
    with (out / "latency.csv").open() as f:
        return {f"speedup_{r['runtime']}": float(r["speedup"]) for r in csv.DictReader(f)
                if r["variant"] == variant and r["batch"] == str(LATENCY.batch) and r["threads"] == "1"}


def run(name: str, ckpts: dict[str, Path], out: Path) -> dict[str, Any]:
    base, steps = EXPERIMENTS[name]
    row = ds.compress(ckpts[base], steps, out=out / name, device="cpu", latency=LATENCY).row
    keep = ("variant", "accuracy_pct", "baseline_accuracy_pct", "size_bytes", "params_total", "params_nonzero",
            "sparsity", "deployment", "pruned_widths", "deployed_runtime", "deployed_runtime_b1", "notes",
            "macs", "macs_nonzero", "energy_nj_est", "train_seconds")
    return {"experiment": name, **{k: row[k] for k in keep if k in row}, **speedups(out / name, row["variant"])}


def saliency_table(ckpt: Path, out: Path, sparsities: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.92, 0.95),
                   ) -> list[dict[str, Any]]:
    """OBD vs magnitude at equal sparsity, one-shot without retraining; accuracy from the decoded
    sparse artifact run in onnxruntime."""
    import copy

    from deepshrink.compress.prune.masks import apply_masks, compute_masks
    from deepshrink.export import ExportContext, export
    from deepshrink.measure.accuracy import artifact_accuracy
    from deepshrink.variant import Deployment

    model, manifest = load_checkpoint(ckpt)
    data = load_dataset(manifest.dataset)
    rows = []
    for scope in ("layer", "global"):
        for s in sparsities:
            row: dict[str, Any] = {"scope": scope, "sparsity": s}
            for saliency in ("magnitude", "obd", "obd-fisher"):
                m = copy.deepcopy(model)
                apply_masks(m, compute_masks(m, saliency, s, scope, data=data))
                art = export(m, Deployment("sparse"), out / "saliency" / f"{scope}-{int(s * 100)}-{saliency}",
                             ExportContext(data.test_x[:1], data.train_x[:256]))
                row[f"{saliency}_acc"] = artifact_accuracy(art, data, "onnxruntime")
            rows.append(row)
            print(row, flush=True)
    return rows


def run_sensitivity(ckpt: Path, out: Path) -> list[dict[str, Any]]:
    model, manifest = load_checkpoint(ckpt)
    data = load_dataset(manifest.dataset)
    rows = []
    for saliency in ("magnitude", "obd"):
        r = sensitivity(model, data, saliency=saliency)
        plot_sensitivity(r, out / f"sensitivity-{manifest.model}-{saliency}.png", f"{manifest.model} ({saliency})")
        print(saliency, "picked:", pick_layer_sparsities(r))
        rows += r
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mlp", type=Path, help="trained lenet-300-100 checkpoint")
    ap.add_argument("--cnn", type=Path, help="trained lenet-5 checkpoint")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-prune"))
    ap.add_argument("experiments", nargs="*", help=f"any of: sensitivity, saliency, {', '.join(EXPERIMENTS)}")
    args = ap.parse_args()
    ckpts = {k: v for k, v in (("mlp", args.mlp), ("cnn", args.cnn)) if v}
    for name in args.experiments or list(EXPERIMENTS):
        if name == "sensitivity":
            rows: Any = run_sensitivity(ckpts["mlp"], args.out)
        elif name == "saliency":
            rows = saliency_table(ckpts["mlp"], args.out)
        else:
            rows = run(name, ckpts, args.out)
        print(json.dumps(rows, default=str), flush=True)
        with (args.out / "bench_prune.jsonl").open("a") as f:
            f.write(json.dumps(rows, default=str) + "\n")


if __name__ == "__main__":
    main()
