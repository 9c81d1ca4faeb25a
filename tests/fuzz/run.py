"""`make fuzz`: every registered reader fuzzed with FUZZ_N inputs, each reader in its own process (a
native crash or runaway memory in one cannot take the others down); prints the table and exits 1 on any
crash or hang. Crashing inputs are kept in OUT/crashes/ for reproduction.

    FUZZ_N=5000 FUZZ_JOBS=2 python tests/fuzz/run.py [--targets dsparse dsq] [--out runs/fuzz]
"""

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from fuzz_harness import Stats, fuzz, table, targets


def _child(name: str, n: int, out: Path) -> None:
    stats = fuzz(targets([name])[0], n, out / "crashes")
    (out / f"{name}.json").write_text(json.dumps(asdict(stats)))


def _run(name: str, n: int, out: Path) -> Stats:
    """One reader in a child process; dying (a signal) or running far past its budget counts as a crash."""
    (out / f"{name}.json").unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--child", name, "--n", str(n), "--out", str(out)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, timeout=300 + 2.0 * n, capture_output=True, text=True)
        rc, tail = proc.returncode, (proc.stderr.strip().splitlines() or [""])[-1]
    except subprocess.TimeoutExpired:
        rc, tail = -9, "whole run timed out"
    result = out / f"{name}.json"
    if rc == 0 and result.exists():
        return Stats(**json.loads(result.read_text()))
    return Stats(name, crashes=1, seconds=time.perf_counter() - t0, samples=[f"process died ({rc}): {tail[:200]}"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=int(os.environ.get("FUZZ_N", "1000")), help="inputs per reader")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("FUZZ_JOBS", "1")),
                    help="readers fuzzed at once (each in its own process)")
    ap.add_argument("--targets", nargs="*", default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/fuzz"))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.child:
        _child(args.child, args.n, args.out)
        return
    t0 = time.perf_counter()

    def one(name: str) -> Stats:
        stats = _run(name, args.n, args.out)
        print(f"{name}: {stats.tried} inputs, {stats.crashes} crashes, {stats.hangs} hangs", flush=True)
        return stats

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:  # threads only wait on child processes
        rows = list(pool.map(one, [t.name for t in targets(args.targets)]))
    print(table(rows))
    print(f"total {time.perf_counter() - t0:.0f} s")
    bad = [s for s in rows if s.crashes or s.hangs]
    for s in bad:
        for sample in s.samples:
            print(f"  {s.name}: {sample}")
    if bad:
        print(f"crashing inputs kept in {args.out / 'crashes'}")
        sys.exit(1)


if __name__ == "__main__":
    main()
