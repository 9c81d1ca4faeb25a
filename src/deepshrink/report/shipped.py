"""Speed as shipped: each variant's fastest measured runtime against its baseline's fastest, per thread count
and batch, from latency.csv alone. A user deploys whichever runtime is fastest for each file, so this —
not one runtime's speedup — says whether a compression made the model faster or slower."""

from dataclasses import dataclass

from deepshrink.report.numbers import DASH, num, sig
from deepshrink.report.rundata import Row, RunData, ok

SLOWER = 0.95  # below this a variant is called slower than its baseline (the never-slower goal)


@dataclass(frozen=True)
class Fastest:
    runtime: str
    us: float


def fastest(latency: list[Row], variant: str, threads: str, batch: str) -> Fastest | None:
    """The variant's fastest runtime on the CPU at one (threads, batch)."""
    got = [(us, r["runtime"]) for r in latency if r["variant"] == variant and r.get("device", "cpu") == "cpu"
           and r["threads"] == threads and r["batch"] == batch and (us := num(r.get("us_per_image_median")))]
    if not got:
        return None
    us, runtime = min(got)
    return Fastest(runtime, us)


def settings(latency: list[Row]) -> list[tuple[str, str]]:
    """(threads, batch) pairs present on the CPU, fewest threads and largest batch first."""
    pairs = {(r["threads"], r["batch"]) for r in latency if r.get("device", "cpu") == "cpu"}
    return sorted(pairs, key=lambda p: (int(num(p[0]) or 0), -int(num(p[1]) or 0)))


def shipped_ratios(data: RunData) -> list[tuple[Row, str, str, Fastest, Fastest]]:
    """(row, threads, batch, the variant's fastest, its baseline's fastest) for every compressed variant."""
    out = []
    for r in data.results:
        base = r.get("baseline_variant", "")
        if not ok(r) or not base or base == r["variant"]:
            continue
        for threads, batch in settings(data.latency):
            mine, theirs = fastest(data.latency, r["variant"], threads, batch), fastest(data.latency, base,
                                                                                       threads, batch)
            if mine and theirs:
                out.append((r, threads, batch, mine, theirs))
    return out


def shipped_table_rows(data: RunData) -> tuple[list[list[str]], list[str]]:
    """Table rows (variant, setting, runtimes and times, ratio) and the variants slower than SLOWER."""
    rows, slow = [], []
    for r, threads, batch, mine, theirs in shipped_ratios(data):
        ratio = theirs.us / mine.us
        flag = "slower" if ratio < SLOWER else ""
        if flag:
            slow.append(f"{r['variant']} ({threads} thread{'s' if threads != '1' else ''}, batch {batch}: "
                        f"{ratio:.2f}x)")
        rows.append([r["variant"], f"{threads}t, batch {batch}", f"{mine.runtime} {sig(mine.us)}",
                     f"{theirs.runtime} {sig(theirs.us)}", f"{ratio:.2f}x" if ratio else DASH, flag])
    return rows, slow
