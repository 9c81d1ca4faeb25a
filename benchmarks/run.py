"""`make bench`: every benchmark of this folder in a quick mode (minutes on 2 cores, not hours), on the real
MNIST, from two short baselines trained first. Writes OUT/summary.csv (bench, goal, measured, pass) and
prints the table; each benchmark's own files stay under OUT/<bench>/.

    DEEPSHRINK_DATA=../shared/data python benchmarks/run.py [--out runs/bench] [--only quantize distill]

Quick mode keeps each benchmark's code path and shrinks its work: fewer steps, epochs, temperatures and
a tiny study recipe. The goals of the full runs are scaled to match (e.g. the 6-temperature sweep's 180 s
becomes 30 s per temperature). A goal missed is a row with pass=False; the run exits 1 only when a
benchmark itself fails to run.
"""

import argparse
import csv
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
Row = tuple[str, str, bool]  # (goal, measured, pass)

TINY_RECIPE = """name = "bench-tiny"
description = "make bench: one baseline, INT8 and pruning, 1 epoch"
expected_minutes = 3
[study]
datasets = ["mnist"]
models = ["lenet-300-100"]
jobs = 2
[train]
epochs = 1
[measure]
runtimes = ["onnxruntime"]
threads = [1]
repeats = 3
single_calls = 200
images = 2000
[[pipeline]]
name = "int8"
steps = ["quantize:precision=int8,method=ptq"]
[[pipeline]]
name = "prune80"
steps = ["prune.unstructured:sparsity=0.8,epochs=1"]
"""


def _run(args: list[str], timeout: float) -> float:
    """Run one benchmark script (or the CLI) to completion; its wall seconds."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], timeout=timeout, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or [""])[-1]
        raise RuntimeError(f"{Path(args[0]).name} exited {proc.returncode}: {tail[:200]}")
    return time.perf_counter() - t0


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


class Bench:
    """Shared state: the output folder and the baseline checkpoints every benchmark starts from."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.ckpt: dict[str, Path] = {}
        self.recipe = out / "bench-tiny.toml"

    def baselines(self) -> list[Row]:
        """Through the API rather than `deepshrink train`: the same training and export, timed lightly
        (the CLI's full latency table of both runtimes at 1 and all threads would take minutes here)."""
        import deepshrink as ds
        from deepshrink.measure.latency import LatencyConfig

        light = LatencyConfig(runtimes=("onnxruntime",), threads=(1,), repeats=3, single_calls=200)
        rows = []
        for model, epochs in (("lenet-300-100", 2), ("lenet-5", 1)):
            run = self.out / f"base-{model}"
            t0 = time.perf_counter()
            r = ds.train(model, "mnist", epochs=epochs, out=run, device="cpu", latency=light).row
            self.ckpt[model] = run / r["checkpoint"]
            acc = float(r["accuracy_pct"])
            rows.append((f"{model} baseline ({epochs} ep) >= 97% test accuracy",
                         f"{acc:.2f}% in {time.perf_counter() - t0:.0f} s", acc >= 97.0))
        return rows

    def quantize(self) -> list[Row]:
        out = self.out / "quantize"
        _run([str(HERE / "bench_quantize.py"), str(self.ckpt["lenet-300-100"]), "--out", str(out),
              "--steps", "ptq,fp16"], 600)
        rows = []
        for r in _csv(out / "summary.csv"):
            for check in filter(None, r["targets"].split("; ")):
                goal, verdict = check.rsplit(": ", 1)
                rows.append((f"{r['model']} {r['step']}: {goal}", f"acc {float(r['delta_pct']):+.2f} pt, "
                             f"{float(r['size_ratio']):.3f}x bytes, {float(r['speedup']):.2f}x speed",
                             verdict == "PASS"))
        return rows

    def prune(self) -> list[Row]:
        out = self.out / "prune"
        _run([str(HERE / "bench_prune.py"), "--mlp", str(self.ckpt["lenet-300-100"]), "--out", str(out),
              "weights90-quick"], 600)
        r = json.loads((out / "bench_prune.jsonl").read_text().splitlines()[-1])
        base = _csv(self.ckpt["lenet-300-100"].parents[2] / "results.csv")[0]
        drop = float(r["baseline_accuracy_pct"]) - float(r["accuracy_pct"])
        ratio = int(r["size_bytes"]) / int(base["size_bytes"])
        return [("90% weights pruned: accuracy within 1 pt", f"{-drop:+.2f} pt", drop <= 1.0),
                ("90% weights pruned: sparse file <= 25% of the dense ONNX", f"{ratio:.3f}x", ratio <= 0.25)]

    def distill(self) -> list[Row]:
        out = self.out / "distill"
        _run([str(HERE / "bench_distill.py"), "--teacher", str(self.ckpt["lenet-5"]), "--out", str(out),
              "--temperatures", "2,4", "--epochs", "2"], 600)
        r = json.loads((out / "bench_distill.json").read_text())
        per = r["total_seconds"] / len(r["temperatures"])
        return [("temperature sweep <= 30 s per temperature (180 s for 6)", f"{per:.1f} s", per <= 30.0)]

    def study(self) -> list[Row]:
        out = self.out / "study"
        _run([str(HERE / "bench_study.py"), str(self.recipe), "--out", str(out)], 900)
        r = json.loads((out / "bench_study.json").read_text())
        return [(f"tiny study (--jobs 2) <= {r['target_seconds'] / 60:g} min", f"{r['wall_seconds']:.0f} s",
                 bool(r["time_ok"]))]

    def ray(self) -> list[Row]:
        out = self.out / "ray"
        _run([str(HERE / "bench_ray.py"), str(self.recipe), "--out", str(out), "--local",
              str(self.out / "study" / "clean")], 900)
        r = json.loads((out / "bench_ray.json").read_text())
        return [("Ray executor gives the local executor's rows", f"identical: {r['ray']['identical']}",
                 bool(r["ray"]["identical"]))]

    def compare(self) -> list[Row]:
        lines = subprocess.run([sys.executable, str(HERE / "compare_runs.py"), str(self.out / "study" / "clean"),
                                str(self.out / "ray" / "ray")], capture_output=True, text=True, check=True,
                               timeout=300).stdout.splitlines()
        same = next(line for line in lines if line.startswith("identical accuracy_pct"))
        fractions = [part.split(": ")[1].split("/") for part in same.split("; ")]  # "5/5"
        return [("compare_runs: local and Ray runs identical", same,
                 all(a == b and int(b) > 0 for a, b in fractions))]

    def any_model(self) -> list[Row]:
        out = self.out / "any-model"
        secs = _run([str(HERE / "bench_any_model.py"), "--model", "examples/models.py:dwnet", "--dataset", "mnist",
                     "--epochs", "1", "--steps", "quantize:precision=int8,method=ptq", "--out", str(out), "--quick"],
                    900)
        rows = _csv(out / "summary.csv")
        return [("a user model (dwnet) trains and goes through INT8 PTQ", f"{len(rows)} rows in {secs:.0f} s",
                 len(rows) == 2)]


    def mcu(self) -> list[Row]:
        """The microcontroller target beside TensorFlow Lite Micro on the LeNet-5 baseline (the TensorFlow
        environment is created on first use, a few minutes)."""
        out = self.out / "mcu"
        # TFLM's library is built once per machine (14-18 min on two cores), not once per bench run.
        cache = Path.home() / ".cache" / "deepshrink-tflm"
        _run([str(HERE / "bench_mcu.py"), str(self.ckpt["lenet-5"]), "--out", str(out), "--images", "2000",
              "--cache", str(cache)], 3600)
        r = _csv(out / "details.csv")[0]
        ram = float(r["ds_ram_bytes"]) / float(r["tflm_ram_bytes"])
        flash = float(r["ds_flash_bytes"]) / float(r["tflm_flash_bytes"])
        delta = float(r["ds_accuracy_pct"]) - float(r["tflm_accuracy_pct"])
        return [("LeNet-5 on a Cortex-M4: RAM <= 0.7x TFLM's (both measured)", f"{ram:.3f}x", ram <= 0.7),
                ("LeNet-5 on a Cortex-M4: flash <= 0.7x TFLM's (both linked images)", f"{flash:.3f}x", flash <= 0.7),
                # TFLM runs TensorFlow's converter's quantization of the same weights, ours deepshrink's: a goal
                # that ours loses no more than 0.2 pt (being more accurate is no failure).
                ("LeNet-5: accuracy no more than 0.2 pt below TFLM's", f"{delta:+.2f} pt", delta >= -0.2)]


BENCHES: dict[str, Callable[[Bench], list[Row]]] = {
    "baselines": Bench.baselines, "quantize": Bench.quantize, "prune": Bench.prune, "distill": Bench.distill,
    "study": Bench.study, "ray": Bench.ray, "compare_runs": Bench.compare, "any_model": Bench.any_model,
    "mcu": Bench.mcu,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    ap.add_argument("--only", nargs="*", default=None, help=f"a subset of {', '.join(BENCHES)}")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    bench = Bench(args.out.resolve())
    bench.recipe.write_text(TINY_RECIPE)
    chosen = [n for n in (args.only or BENCHES) if n != "baselines"]
    # Only these start from the baseline checkpoints; the others train what they need themselves.
    names = ["baselines", *chosen] if {"quantize", "prune", "distill", "mcu"} & set(chosen) else chosen
    summary: list[dict[str, object]] = []
    broken = []
    t_all = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        try:
            rows = BENCHES[name](bench)
        except Exception as e:  # one broken benchmark is reported; the others still run
            rows = [("runs to completion", f"{type(e).__name__}: {str(e)[:160]}", False)]
            broken.append(name)
        for goal, measured, ok in rows:
            summary.append({"bench": name, "goal": goal, "measured": measured, "pass": ok,
                            "seconds": round(time.perf_counter() - t0)})
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    with (args.out / "summary.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["bench", "goal", "measured", "pass", "seconds"])
        w.writeheader()
        w.writerows(summary)
    width = max(len(str(r["goal"])) for r in summary)
    print(f"\n{'bench':<13} {'goal':<{width}}  {'measured':<46} pass")
    for r in summary:
        print(f"{r['bench']:<13} {r['goal']!s:<{width}}  {r['measured']!s:<46} {'yes' if r['pass'] else 'NO'}")
    print(f"\n{sum(bool(r['pass']) for r in summary)}/{len(summary)} goals met in {time.perf_counter() - t_all:.0f} s "
          f"-> {args.out / 'summary.csv'}")
    if broken:
        sys.exit(f"benchmarks that did not run: {', '.join(broken)}")


if __name__ == "__main__":
    main()
