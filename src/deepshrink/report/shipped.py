"""Speed as shipped: each variant's fastest measured runtime against its baseline's fastest, per thread count
and batch, from latency.csv alone. A user deploys whichever runtime is fastest for each file, so this —
not one runtime's speedup — says whether a compression made the model faster or slower.

The baseline's times are those of the paired run (`reference_us_per_image_median`: the baseline timed
interleaved with the variant): two timings of one file in different runs differ by more than the 0.95x line
this table draws (the report states the spread it measured), so a ratio whose two times were not taken in one
run is no speedup: such a variant gets a dash, never the baseline's own (unpaired) row."""

from dataclasses import dataclass

from deepshrink.report.numbers import num, sig
from deepshrink.report.rundata import Row, RunData, ok, paired_base_us

SLOWER = 0.95  # below this a variant is called slower than its baseline (the never-slower goal)


@dataclass(frozen=True)
class Fastest:
    runtime: str
    us: float


def _at(latency: list[Row], variant: str, threads: str, batch: str) -> list[Row]:
    return [r for r in latency if r["variant"] == variant and r.get("device", "cpu") == "cpu"
            and r["threads"] == threads and r["batch"] == batch]


def _min(got: list[tuple[float, str]]) -> Fastest | None:
    if not got:
        return None
    us, runtime = min(got)
    return Fastest(runtime, us)


def fastest(latency: list[Row], variant: str, threads: str, batch: str) -> Fastest | None:
    """The variant's fastest runtime on the CPU at one (threads, batch)."""
    return _min([(us, r["runtime"]) for r in _at(latency, variant, threads, batch)
                 if (us := num(r.get("us_per_image_median")))])


def paired_fastest(latency: list[Row], variant: str, threads: str, batch: str) -> Fastest | None:
    """The baseline's fastest runtime as timed interleaved with `variant` (a runtime the baseline lacks, e.g.
    `sparse`, was compared with its ONNX Runtime model: `reference` says `<baseline> (onnxruntime)`)."""
    def runtime(r: Row) -> str:
        ref = r.get("reference", "")
        return ref[ref.index("(") + 1 : -1] if ref.endswith(")") else r["runtime"]

    return _min([(us, runtime(r)) for r in _at(latency, variant, threads, batch) if (us := paired_base_us(r))])


def settings(latency: list[Row]) -> list[tuple[str, str]]:
    """(threads, batch) pairs on the CPU at the fewest threads timed, largest batch first: the setting the
    deployment is chosen at. All-core times stay in latency.csv; on a 2-core shared machine a batch-1 call
    split over 2 threads ranges 20 µs to 4 ms, too wide to call a file slower or faster by."""
    pairs = {(r["threads"], r["batch"]) for r in latency if r.get("device", "cpu") == "cpu"}
    fewest = min((int(num(t) or 0) for t, _ in pairs), default=0)
    return sorted((p for p in pairs if int(num(p[0]) or 0) == fewest), key=lambda p: -int(num(p[1]) or 0))


def shipped_ratios(data: RunData) -> list[tuple[Row, str, str, Fastest, Fastest | None]]:
    """(row, threads, batch, the variant's fastest, its baseline's fastest in the same run or None) for every
    compressed variant."""
    out = []
    where = settings(data.latency)
    for r in data.results:
        base = r.get("baseline_variant", "")
        if not ok(r) or not base or base == r["variant"]:
            continue
        for threads, batch in where:
            mine = fastest(data.latency, r["variant"], threads, batch)
            # the baseline's fastest among the runtimes it was timed in beside this variant, in its unit's run
            theirs = paired_fastest(data.latency, r["variant"], threads, batch)
            if mine:
                out.append((r, threads, batch, mine, theirs))
    return out


def shipped_table_rows(data: RunData) -> tuple[list[list[str]], list[str]]:
    """Table rows (variant, setting, runtimes and times, ratio) and the variants slower than SLOWER; a ratio
    within the measured noise of 1.00 is marked ≈ and not called slower."""
    rows, slow = [], []
    noise = data.noise()
    for r, threads, batch, mine, theirs in shipped_ratios(data):
        if theirs is None:
            rows.append([r["variant"], f"{threads}t, batch {batch}", f"{mine.runtime} {sig(mine.us)}", "–", "–",
                         "baseline not timed in the same run"])
            continue
        ratio = theirs.us / mine.us
        flag = "≈" if noise and noise.within(ratio) else ("slower" if ratio < SLOWER else "")
        if flag == "slower":
            slow.append(f"{r['variant']} ({threads} thread{'s' if threads != '1' else ''}, batch {batch}: "
                        f"{ratio:.2f}x)")
        rows.append([r["variant"], f"{threads}t, batch {batch}", f"{mine.runtime} {sig(mine.us)}",
                     f"{theirs.runtime} {sig(theirs.us)}", f"{ratio:.2f}x", flag])
    return rows, slow
