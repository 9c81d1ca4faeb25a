"""Study wall time and kill/resume, issue #6's done-when checks (run on an otherwise idle machine):

    DEEPSHRINK_DATA=../shared/data .venv/bin/python benchmarks/bench_study.py quick   # target <= 5 min
    DEEPSHRINK_DATA=../shared/data .venv/bin/python benchmarks/bench_study.py paper   # target <= 45 min
    DEEPSHRINK_DATA=../shared/data .venv/bin/python benchmarks/bench_study.py quick --kill-after 120
    DEEPSHRINK_DATA=../shared/data .venv/bin/python benchmarks/bench_study.py paper --kill-between 60,1100 \
        --clean runs/paper        # kill at a uniformly random moment; compare with an existing clean run

The first form runs the recipe from scratch (`--fresh`) in OUT and checks the wall time against the
recipe's `expected_minutes`. With --kill-after S it also SIGKILLs a second, fresh run of the same recipe
after S seconds (or at a random moment in --kill-between LO,HI), reruns it, and checks that no variant
already in results.csv was recomputed (its artifact's mtime is unchanged) and that accuracies and sizes
equal the uninterrupted run's (OUT/clean, or --clean DIR).
Writes OUT/bench_study.json.
"""

import argparse
import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from deepshrink.study.recipe import load_recipe

KEYS = ("accuracy_pct", "size_bytes", "status")


def _study(recipe: str, out: Path, extra: list[str]) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "deepshrink", "study", recipe, "--out", str(out), "--quiet", *extra]
    return subprocess.Popen(cmd)


def _rows(out: Path) -> dict[str, dict[str, str]]:
    path = out / "results.csv"
    if not path.exists():
        return {}
    with path.open() as f:
        return {r["variant"]: r for r in csv.DictReader(f)}


def _mtimes(out: Path, rows: dict[str, dict[str, str]]) -> dict[str, float]:
    return {v: (out / r["artifact"]).stat().st_mtime for v, r in rows.items() if r["status"] == "ok"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", nargs="?", default="quick")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--jobs", type=int, default=0, help="0 = the recipe's")
    ap.add_argument("--kill-after", type=float, default=0.0)
    ap.add_argument("--kill-between", default="", help="LO,HI seconds: kill at a uniformly random moment")
    ap.add_argument("--clean", type=Path, default=None, help="an existing uninterrupted run to compare with "
                    "(skips the timed clean run)")
    args = ap.parse_args()
    if args.kill_between:
        lo, hi = (float(v) for v in args.kill_between.split(","))
        args.kill_after = random.Random().uniform(lo, hi)
    out = args.out or Path("runs") / f"bench-study-{args.recipe}"
    target = load_recipe(args.recipe).expected_minutes * 60
    jobs = ["--jobs", str(args.jobs)] if args.jobs else []
    clean_dir = args.clean or out / "clean"
    report: dict[str, object] = {"recipe": args.recipe, "jobs": args.jobs, "clean_run": str(clean_dir)}
    if args.clean is None:
        t0 = time.perf_counter()
        rc = _study(args.recipe, clean_dir, ["--fresh", *jobs]).wait()
        wall = time.perf_counter() - t0
        report.update({"wall_seconds": round(wall, 1), "target_seconds": target,
                       "time_ok": rc == 0 and wall <= target, "rc": rc})
    if args.kill_after:
        proc = _study(args.recipe, out / "killed", ["--fresh", *jobs])
        time.sleep(args.kill_after)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        before = _rows(out / "killed")
        stamps = _mtimes(out / "killed", before)
        rc2 = _study(args.recipe, out / "killed", jobs).wait()
        after, clean = _rows(out / "killed"), _rows(clean_dir)
        recomputed = [v for v, t in stamps.items() if _mtimes(out / "killed", after).get(v) != t]
        differ = [v for v in clean if tuple(clean[v][k] for k in KEYS) != tuple(after.get(v, {}).get(k) for k in KEYS)]
        report.update({"killed_after_seconds": round(args.kill_after), "killed_with_rows": len(before),
                       "recomputed_after_kill": recomputed,
                       "differ_from_clean": differ, "resume_ok": rc2 == 0 and not recomputed and not differ})
    (out / "bench_study.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
