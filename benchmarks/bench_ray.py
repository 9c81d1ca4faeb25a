"""The Ray executor against the local one, issue #16's done-when checks (SPEC §11):

    DEEPSHRINK_DATA=../shared/data .venv/bin/python benchmarks/bench_ray.py quick --kill
    DEEPSHRINK_DATA=../shared/data .venv/bin/python benchmarks/bench_ray.py quick --local runs/quick

Starts a two-node `ray.cluster_utils.Cluster` on this machine (a head without CPUs, which holds the
driver's objects, and one worker node), runs the recipe with `--executor ray --address ADDR` from a
separate driver process into OUT/ray, runs it with the local executor into OUT/local (or compares with
an existing local run, --local DIR), and compares every variant's status, accuracy_pct and size_bytes.
With --kill it runs the Ray study once more (OUT/ray-killed) and SIGKILLs the worker node's processes
(`remove_node`, not graceful) --kill-delay seconds after the first results row lands, with a
replacement node added just before, and checks that run too. Writes OUT/bench_ray.json.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# Every Ray node of this benchmark listens on 127.0.0.1 only (read when ray is first imported).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from ray.cluster_utils import Cluster

from deepshrink.results import read_rows

KEYS = ("status", "accuracy_pct", "size_bytes")
OBJECT_STORE = 1 << 30  # the float MNIST splits are ~220 MB; cluster_utils' default store is 150 MB


def _rows(out: Path) -> dict[str, dict[str, str]]:
    return {r["variant"]: r for r in read_rows(out / "results.csv")}


def _study(recipe: str, out: Path, extra: list[str]) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "deepshrink", "study", recipe, "--out", str(out), "--quiet", "--fresh", *extra]
    return subprocess.Popen(cmd)


def _wait(proc: subprocess.Popen[bytes], t0: float) -> float:
    if proc.wait() != 0:
        raise SystemExit(f"study exited with {proc.returncode}")
    return round(time.monotonic() - t0, 1)


def _ray_run(cluster: Cluster, recipe: str, out: Path, kill_delay: float | None, cpus: int) -> dict[str, Any]:
    """One Ray study from its own driver process; with kill_delay, its worker node is killed mid-study."""
    t0 = time.monotonic()
    proc = _study(recipe, out, ["--executor", "ray", "--address", cluster.address])
    info: dict[str, Any] = {}
    if kill_delay is not None:
        while not _rows(out) and proc.poll() is None:
            time.sleep(0.5)
        time.sleep(kill_delay)
        victim = next(iter(cluster.worker_nodes))
        cluster.add_node(num_cpus=cpus, object_store_memory=OBJECT_STORE)
        info = {"killed_at_s": round(time.monotonic() - t0, 1), "rows_at_kill": len(_rows(out))}
        cluster.remove_node(victim, allow_graceful=False)
    info["seconds"] = _wait(proc, t0)
    return info


def _compare(reference: dict[str, dict[str, str]], got: dict[str, dict[str, str]]) -> dict[str, Any]:
    diff = {v: {k: (reference.get(v, {}).get(k), got.get(v, {}).get(k)) for k in KEYS}
            for v in sorted(set(reference) | set(got))
            if any(reference.get(v, {}).get(k) != got.get(v, {}).get(k) for k in KEYS)}
    ok = sum(r["status"] == "ok" for r in got.values())
    return {"variants": len(got), "ok": ok, "identical": not diff and ok == len(reference), "differences": diff}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", nargs="?", default="quick")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_ray"))
    ap.add_argument("--local", type=Path, default=None, help="an existing local run to compare with")
    ap.add_argument("--worker-cpus", type=int, default=2)
    ap.add_argument("--kill", action="store_true", help="also a run whose worker node is killed mid-study")
    ap.add_argument("--kill-delay", type=float, default=20.0, help="seconds after the first results row")
    args = ap.parse_args()
    report: dict[str, Any] = {"recipe": args.recipe}
    local = args.local
    if local is None:
        local = args.out / "local"
        t0 = time.monotonic()
        report["local_seconds"] = _wait(_study(args.recipe, local, []), t0)
    reference = _rows(local)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                            "object_store_memory": OBJECT_STORE})
    try:
        cluster.add_node(num_cpus=args.worker_cpus, object_store_memory=OBJECT_STORE)
        cluster.wait_for_nodes()
        report["address"] = cluster.address
        runs = {"ray": None, **({"ray-killed": args.kill_delay} if args.kill else {})}
        for name, delay in runs.items():
            report[name] = _ray_run(cluster, args.recipe, args.out / name, delay, args.worker_cpus)
            report[name].update(_compare(reference, _rows(args.out / name)))
    finally:
        cluster.shutdown()
    (args.out / "bench_ray.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    if not all(report[name]["identical"] for name in runs):
        raise SystemExit("the Ray executor's results differ from the local executor's")


if __name__ == "__main__":
    main()
