"""Compare two run directories variant by variant: identical accuracy_pct and size_bytes, and for every
artifact whose bytes differ, whether both files decode to the same weights, bit for bit.

    python benchmarks/compare_runs.py RUN_A RUN_B [--src-a PATH] [--src-b PATH] [--out FILE]

RUN_A may come from an older commit whose decoders live elsewhere: `--src-a` is that commit's `src/`
folder, used (as PYTHONPATH of a subprocess) to decode RUN_A's files.
"""

import argparse
import csv
import importlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

# Where each compact format's decoder lives, newest layout first (a run of an older commit decodes
# with that commit's code).
DECODERS = {
    ".dsq": [("deepshrink.export.formats.dsq", "decode"), ("deepshrink.export.packed", "decode"),
             ("deepshrink.compress.quant_pack", "decode")],
    ".dsparse": [("deepshrink.export.formats.dsparse", "decode"), ("deepshrink.export.sparse", "decode_state"),
                 ("deepshrink.compress.sparse_format", "decode_state")],
}


def _rows(run: Path) -> dict[str, dict[str, str]]:
    with (run / "results.csv").open(newline="") as f:
        return {r["variant"]: r for r in csv.DictReader(f)}


def decode_to(path: Path, npz: Path) -> None:
    for module, name in DECODERS[path.suffix]:
        try:
            fn = getattr(importlib.import_module(module), name)
        except ImportError:
            continue
        state = fn(path.read_bytes())
        np.savez(npz, **{k: v.numpy() for k, v in state.items()})
        return
    raise SystemExit(f"no decoder for {path}")


def decoded(path: Path, src: str | None) -> dict[str, np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "state.npz"
        env = {**os.environ, **({"PYTHONPATH": src} if src else {})}
        subprocess.run([sys.executable, __file__, "--decode", str(path), str(npz)], check=True, env=env)
        with np.load(npz) as z:
            return {k: z[k] for k in z.files}


def same_weights(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes() for k in a)


def compare(run_a: Path, run_b: Path, src_a: str | None, src_b: str | None) -> list[str]:
    a, b = _rows(run_a), _rows(run_b)
    lines = [f"{run_a}: {len(a)} variants, {run_b}: {len(b)} variants, in both: {len(a.keys() & b.keys())}"]
    both = sorted(a.keys() & b.keys())
    acc = [v for v in both if a[v]["accuracy_pct"] != b[v]["accuracy_pct"]]
    size = [v for v in both if a[v]["size_bytes"] != b[v]["size_bytes"]]
    lines.append(f"identical accuracy_pct: {len(both) - len(acc)}/{len(both)}; "
                 f"identical size_bytes: {len(both) - len(size)}/{len(both)}")
    for v in acc:
        lines.append(f"  accuracy differs: {v}: {a[v]['accuracy_pct']} vs {b[v]['accuracy_pct']} "
                     f"(int8_mode {a[v].get('int8_mode', '')!r} vs {b[v].get('int8_mode', '')!r})")
    for v in size:
        fa, fb = run_a / a[v]["artifact"], run_b / b[v]["artifact"]
        diff = int(b[v]["size_bytes"]) - int(a[v]["size_bytes"])
        same = "n/a"
        if fa.suffix in DECODERS and fb.suffix in DECODERS:
            same = str(same_weights(decoded(fa, src_a), decoded(fb, src_b)))
        ckpt = (run_a / a[v]["checkpoint"]).read_bytes() == (run_b / b[v]["checkpoint"]).read_bytes()
        lines.append(f"  size differs: {v} ({b[v]['deployment']}): {a[v]['size_bytes']} -> {b[v]['size_bytes']} "
                     f"bytes ({diff:+d}); decodes to the same weights: {same}; checkpoints identical: {ckpt}")
    for v in sorted(a.keys() ^ b.keys()):
        lines.append(f"  only in {'A' if v in a else 'B'}: {v}")
    return lines


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--decode":
        decode_to(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_a", type=Path)
    p.add_argument("run_b", type=Path)
    p.add_argument("--src-a", help="src/ folder of the code that wrote RUN_A (default: the installed one)")
    p.add_argument("--src-b", help="src/ folder of the code that wrote RUN_B (default: the installed one)")
    p.add_argument("--out", type=Path, help="also write the comparison to this file")
    args = p.parse_args()
    lines = compare(args.run_a, args.run_b, args.src_a, args.src_b)
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
