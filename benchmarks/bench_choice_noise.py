"""Do the timing-based choices flip on noise? Two fresh `deepshrink study quick` runs, each beside a process
spinning on one core, must ship every variant on the same runtime (batch 256 and 1), the same ONNX Runtime
graph and the same INT8 mode; the pair is repeated (`--pairs`, 3 by default: "three times in a row").

    python benchmarks/bench_choice_noise.py [--out runs/bench-choice] [--pairs 3] [--data-dir ../shared/data]

Writes OUT/choices.csv (one row per run and variant: the choices and the notes saying why), OUT/summary.md
(per pair: the variants whose choices differed) and prints the summary; exits 1 when any pair disagrees.
The spinner is a bounded busy loop (it stops by itself after `--spin-limit` seconds, and is killed when its
study ends).
"""

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

CHOICES = ("deployed_runtime", "deployed_runtime_b1", "int8_mode", "ort_conv_pool_fused", "ort_conv_pool_fused_b1")
SPIN = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"


def _study(out: Path, data_dir: Path | None, spin_limit: float) -> tuple[float, list[dict[str, str]]]:
    """One fresh quick study beside a spinning process: (wall seconds, its results rows)."""
    spinner = subprocess.Popen([sys.executable, "-c", SPIN, str(spin_limit)])
    try:
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "deepshrink", "study", "quick", "--out", str(out), "--fresh", "-q"]
        subprocess.run(cmd + (["--data-dir", str(data_dir)] if data_dir else []), check=True, timeout=3600)
        seconds = time.perf_counter() - t0
    finally:
        spinner.kill()
        spinner.wait()
    with (out / "results.csv").open(newline="") as f:
        return seconds, list(csv.DictReader(f))


def _differences(a: list[dict[str, str]], b: list[dict[str, str]]) -> list[str]:
    """`variant: choice a vs b` for every choice the two runs made differently."""
    rows_b = {r["variant"]: r for r in b}
    out = []
    for r in a:
        other = rows_b.get(r["variant"], {})
        out += [f"{r['variant']}: {c} {r.get(c, '')} vs {other.get(c, '')}" for c in CHOICES
                if r.get(c, "") != other.get(c, "")]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench-choice"))
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--spin-limit", type=float, default=1800.0, help="seconds a spinner runs at most")
    args = ap.parse_args()
    table, lines, flips = [], ["| pair | run seconds | variants | choices that differ |", "|---|---|---|---|"], 0
    for pair in range(args.pairs):
        runs = [_study(args.out / f"pair{pair}-{side}", args.data_dir, args.spin_limit) for side in "ab"]
        for side, (_, rows) in zip("ab", runs, strict=True):
            table += [{"pair": pair, "run": side, "variant": r["variant"], **{c: r.get(c, "") for c in CHOICES},
                       "notes": r.get("notes", "")} for r in rows]
        diff = _differences(runs[0][1], runs[1][1])
        flips += len(diff)
        lines.append(f"| {pair} | {runs[0][0]:.0f}, {runs[1][0]:.0f} | {len(runs[0][1])} | "
                     f"{'; '.join(diff) or 'none'} |")
    with (args.out / "choices.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["pair", "run", "variant", *CHOICES, "notes"])
        w.writeheader()
        w.writerows(table)
    summary = "\n".join([f"# Choices beside a spinning process: {args.pairs} pairs of fresh quick studies", "",
                         *lines, "", f"choices that differ within a pair: {flips}"])
    (args.out / "summary.md").write_text(summary + "\n")
    print(summary)
    return 1 if flips else 0


if __name__ == "__main__":
    sys.exit(main())
