"""The reference study's tables rebuilt from a run directory's result files, with the reference's
published number beside ours in each cell where it has one. A row whose variant is absent from the
run is left out; a table with no rows is skipped. Every cell compared with the reference is also kept
as a `Comparison`, from which the "where the reference looks better" section is built.
"""

from dataclasses import dataclass, field
from typing import Any

from deepshrink.measure.energy import DRAM_PJ_PER_32BIT, SRAM_PJ_PER_32BIT
from deepshrink.report.deep_compression import COLUMNS as DC_COLUMNS
from deepshrink.report.deep_compression import deep_compression_rows
from deepshrink.report.kd_gain import gain_note
from deepshrink.report.numbers import cell, count, fixed, kib, num, sig
from deepshrink.report.reference import BEST, ref
from deepshrink.report.rundata import LayerCount, Row, RunData, Timing, ok
from deepshrink.report.seeds import column, groups, mean_std, per_seed, pm
from deepshrink.report.shipped import SLOWER, shipped_table_rows
from deepshrink.report.specs import BEST_CHOICE, DS_NAME, FUTURE, LAYER_TABLES, MAIN_TABLES, MODEL_NAME, Spec

__all__ = ["READING", "Comparison", "RunData", "Table", "build_tables", "cell", "ok"]

SIZE_NOTE = ("Size: KiB (1,024 bytes) of the file that ships, the unit the reference's \"kB\" values are in "
             "(LeNet-300-100's 266,610 FP32 parameters are 1,041 KiB; it prints 1,043).")
NUMBERS_NOTE = ("Measurements show three significant digits (0.312 µs, 3.28 µs, 265 KiB); accuracies two decimals, "
                "as the reference prints them; counts in full.")
TIME_NOTE = ("Speedup = the baseline's µs / the variant's µs, both from one paired run (the two timed "
             "interleaved, same runtime, threads and batch), so the two µs columns divide to it. Reference: "
             "Config1 (Intel i7-8750H) seconds converted to µs; its speedup is its two published times divided.")

READING = [SIZE_NOTE, TIME_NOTE, NUMBERS_NOTE]


@dataclass
class Comparison:
    """One cell where our number stands beside the reference's."""

    table: str
    row_name: str
    quantity: str  # "size" (KiB), "accuracy" (%), "time" (µs), "speedup" (x)
    ours: float
    theirs: float
    row: Row
    ref_base: dict[str, Any] = field(default_factory=dict)  # the reference's baseline row of that table
    timing: Timing | None = None

    def worse(self) -> bool:
        """The reference's number beats ours: higher accuracy or speedup, smaller size or time."""
        return self.ours < self.theirs if self.quantity in ("accuracy", "speedup") else self.ours > self.theirs


@dataclass
class Table:
    id: str
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""
    comparisons: list[Comparison] = field(default_factory=list)


def _base_name(specs: list[Spec], ds: str, model: str) -> str | None:
    return next((n for n, d, m, lab in specs if (d, m, lab) == (ds, model, "baseline")), None)


def _speedup_ref(r: dict[str, Any], rb: dict[str, Any]) -> float | None:
    return rb["time"] / r["time"] if r.get("time") and rb.get("time") else None


def _compare(t: Table, name: str, row: Row, rb: dict[str, Any], tm: Timing | None,
             pairs: list[tuple[str, float | None, Any]]) -> None:
    for quantity, ours, theirs in pairs:
        if ours is not None and theirs is not None:
            t.comparisons.append(Comparison(t.id, name, quantity, ours, float(theirs), row, rb, tm))


def _original_us(data: RunData, specs: list[Spec], ds: str, model: str) -> tuple[str, str]:
    """(runtimes, µs) for a table's Original row: the baseline times the table's speedups divide by, one per
    paired run (a table's variants may come from several units, each timing the baseline anew)."""
    got: dict[tuple[str, float], None] = {}
    for _, d, m, label in specs:
        row = data.find(d, m, label)
        tm = data.timing(row["variant"]) if ok(row) and row and (d, m) == (ds, model) else None
        if tm and tm.base_us is not None:
            got[(tm.base_runtime(), tm.base_us)] = None
    if not got:
        return "–", "–"
    runtimes = " / ".join(dict.fromkeys(rt for rt, _ in got))
    return runtimes, " / ".join(sig(us) for _, us in sorted(got, key=lambda k: k[1]))


def speed_cells(data: RunData, variant: str, ref_us: float | None, ref_sp: float | None) -> list[str]:
    """Runtime, µs, the paired baseline µs, speedup (≈: within the measured noise of 1.00) as shipped, and
    ONNX Runtime's dense µs and speedup where the file ships on another runtime."""
    tm, dense, noise = data.timing(variant), data.dense_timing(variant), data.noise()
    speed = cell(tm.speedup if tm else None, ref_sp, None)
    if tm and noise and noise.within(tm.speedup):
        speed += " ≈"
    return [tm.runtime if tm else "–", cell(tm.us if tm else None, ref_us, None), sig(tm.base_us if tm else None),
            speed, sig(dense.us) if dense else "–", sig(dense.speedup) if dense else "–"]


SPEED_COLS = ["runtime shipped", "µs / image", "baseline µs, same run", "speedup", "ONNX Runtime µs (dense)",
              "ONNX Runtime speedup"]


def main_table(data: RunData, tid: str, title: str, specs: list[Spec], epochs: bool) -> Table:
    cols = ["", "size KiB", "× smaller", "accuracy %", "accuracy over seeds", *SPEED_COLS]
    # The distillation tables (the ones with epochs) show each seed's accuracy too.
    cols += ["epochs trained", "converged at epoch", "per seed accuracy %"] if epochs else []
    t = Table(tid, title, cols, note="Beyond the reference: ours only, it published no such table." if tid == "t1b"
              else "Ours, the reference's number in parentheses; sizes in KiB.")
    timings = []
    for name, ds, model, label in specs:
        row, base = data.find(ds, model, label), data.find(ds, model, "baseline")
        if not ok(row):
            continue
        assert row is not None
        base_name = _base_name(specs, ds, model)
        r, rb = ref(tid, name), ref(tid, base_name) if base_name else {}
        size = kib(num(row["size_bytes"]))
        base_size = kib(num(base["size_bytes"])) if base and ok(base) else None
        tm = data.timing(row["variant"])
        timings += [(name, tm)] if tm else []
        ref_us = r["time"] * 1e6 if r.get("time") else None
        seeds = [x for x in data.find_all(ds, model, label) if ok(x)]
        accs = column(seeds, "accuracy_pct")
        many = len([a for a in accs if a is not None]) > 1
        ref_sp = _speedup_ref(r, rb)
        line = [name, cell(size, r.get("size"), None), sig(base_size / size if base_size and size else None),
                cell(num(row.get("accuracy_pct")), r.get("acc")), pm(accs) if many else "–",
                *speed_cells(data, row["variant"], ref_us, ref_sp)]
        if label == "baseline":  # the time its table's speedups divide by, not its own run's
            line[5], line[7] = _original_us(data, specs, ds, model)
            line[6] = cell(line[7], ref_us, None) if line[7] != "–" else line[6]
        if epochs:
            baseline = label == "baseline"
            line += ["–" if baseline else cell(num(row.get("epochs")), r.get("epochs"), 0),
                     "–" if baseline else count(num(row.get("epochs_to_converge"))),
                     per_seed(seeds, "accuracy_pct", lambda v: f"{v:.2f}") or "–"]
        t.rows.append(line)
        _compare(t, name, row, rb, tm, [("size", size, r.get("size")),
                                        ("accuracy", num(row.get("accuracy_pct")), r.get("acc")),
                                        ("time", tm.us if tm else None, ref_us),
                                        ("speedup", tm.speedup if tm else None, ref_sp)])
    t.note += " " + data.timing_note(timings) + " " + noise_note(data)
    if epochs:
        t.note += (" Epochs trained: ours beside the reference's. Converged at epoch: ours only, the first "
                   "epoch whose validation accuracy is within 0.1 points of the last one (the reference "
                   "gives no such number, so its trained epochs are not a convergence point). "
                   "Accuracy: seed 0's; over seeds: mean ± sample std where there are several. ")
        t.note += gain_note(data, specs[0][1])
    return t


def noise_note(data: RunData) -> str:
    n = data.noise()
    if n is None:
        return "No file was timed in more than one run, so the timing noise is not measured here."
    return (f"Timing noise: one file timed in different runs of this study spans up to {n.spread:.2f}x "
            f"({n.file}, {n.runs} runs, {n.setting}); a speedup within that of 1.00 is marked ≈ (not a "
            f"measured difference).")


def layer_table(data: RunData, tid: str, title: str, specs: list[Spec], layers: list[str], biases: bool) -> Table:
    """Non-zeros per layer, counted as the reference counts them in that table (see specs)."""
    t = Table(tid, title, ["", *layers, "total"])

    def shown(c: LayerCount) -> int:
        return c.weights_nonzero + (c.biases_nonzero if biases else 0)

    bias_total = 0
    for name, ds, model, label in specs:
        row = data.find(ds, model, label)
        if not ok(row):
            continue
        assert row is not None
        got, r = data.layer_counts(row["variant"]), ref(tid, name)
        if not got:
            continue
        bias_total = max(bias_total, sum(c.biases_nonzero for c in got.values()))
        t.rows.append([name, *[cell(float(shown(got[la])) if la in got else 0.0, r.get(la), 0) for la in layers],
                       cell(float(sum(shown(c) for c in got.values())), r.get("total"), 0)])
    example = _count_example(tid, biases)
    if biases:
        t.note = (f"Non-zero weights and biases, as the reference counts in this table ({example}); the "
                  "reference's number in parentheses.")
    else:
        t.note = (f"Non-zero weights only, as the reference counts in this table ({example}); the biases, never "
                  f"pruned, add {bias_total:,} more to each row. The reference's number in parentheses.")
    return t


def _count_example(tid: str, biases: bool) -> str:
    """The table's own Original first-layer count, spelled out (its dataset's input size, not another's)."""
    r = ref(tid, "Original")
    if biases and r.get("conv1"):  # 6 filters of 5 x 5 over the input's channels, plus 6 biases
        channels = (r["conv1"] - 6) // (6 * 25)
        return f"its conv1 {r['conv1']:,} = 6 x {channels} x 5 x 5 weights + 6 biases"
    if r.get("fc1"):
        return f"its fc1 {r['fc1']:,} = {r['fc1'] // 300:,} x 300"
    return "its per-layer counts"


def best_tables(data: RunData) -> list[Table]:
    """Tables 19/20: per technique, the same kind of variant the reference's cell is (BEST_CHOICE)."""
    combos = [(d, m) for d in ("mnist", "cifar10") for m in ("lenet-300-100", "lenet-5")
              if data.find(d, m, "baseline")]
    heads = [f"{DS_NAME[d]} {MODEL_NAME[m]}" for d, m in combos]
    note = ("Each cell is the variant the reference's cell is (named in the first column, per model), not "
            "a pick of ours.")
    size = Table("t19", "Table 19. Size in KiB of the best models", ["technique: variant", *heads],
                 note=f"{note} Sizes in KiB, the reference's in parentheses.")
    time = Table("t20", "Table 20. Time per image (µs) of the best models", ["technique: variant", *heads],
                 note=f"{note} Reference: Config1 seconds converted to µs.")
    timings = []
    for fam, choice in BEST_CHOICE.items():
        names = sorted({n for _, n in choice.values()})
        what = names[0] if len(names) == 1 else ", ".join(f"{n} on {MODEL_NAME[m]}" for m, (_, n) in choice.items())
        s_cells, t_cells = [], []
        for d, m in combos:
            label, _ = choice[m]
            row, r = data.find(d, m, label), BEST.get((fam, d, m), {})
            if not ok(row):
                s_cells.append("–")
                t_cells.append("–")
                continue
            assert row is not None
            size_kib, tm = kib(num(row["size_bytes"])), data.timing(row["variant"])
            col = f"{DS_NAME[d]} {MODEL_NAME[m]}"
            timings += [(f"{fam} {col}", tm)] if tm else []
            ref_us = r["time"] * 1e6 if r.get("time") else None
            s_cells.append(cell(size_kib, r.get("size"), None))
            t_cells.append(cell(tm.us if tm else None, ref_us, None))
            _compare(size, f"{fam} {col}", row, {}, tm, [("size", size_kib, r.get("size"))])
            _compare(time, f"{fam} {col}", row, {}, tm, [("time", tm.us if tm else None, ref_us)])
        size.rows.append([f"{fam}: {what}", *s_cells])
        time.rows.append([f"{fam}: {what}", *t_cells])
    time.note += " " + data.timing_note(timings)
    return [size, time] if combos else []


def future_table(data: RunData) -> Table:
    t = Table("future", "Future-work pipelines of the reference (§9), done", ["dataset / model", "pipeline",
              "size KiB", "× smaller", "accuracy %", "baseline %", "runtime shipped", "µs / image",
              "baseline µs, same run", "speedup"], note="Ours only: the reference did not run these. Sizes in KiB.")
    timings = []
    for d in ("mnist", "cifar10"):
        for m in ("lenet-300-100", "lenet-5"):
            for name, label in FUTURE:
                row, base = data.find(d, m, label), data.find(d, m, "baseline")
                if not ok(row) or row is None:
                    continue
                size, bsize = kib(num(row["size_bytes"])), kib(num(base["size_bytes"])) if base else None
                tm = data.timing(row["variant"])
                timings += [(f"{DS_NAME.get(d, d)} {MODEL_NAME.get(m, m)} {name}", tm)] if tm else []
                t.rows.append([f"{DS_NAME.get(d, d)} {MODEL_NAME.get(m, m)}", name, sig(size),
                               sig(bsize / size if bsize and size else None), fixed(num(row["accuracy_pct"])),
                               fixed(num(row["baseline_accuracy_pct"])), tm.runtime if tm else "–",
                               sig(tm.us if tm else None),
                               sig(tm.base_us if tm else None), sig(tm.speedup if tm else None)])
    t.note += " " + data.timing_note(timings)
    return t


def all_variants(data: RunData, sram_budget_bytes: int) -> Table:
    t = Table("all", "All variants", ["variant", "pipeline", "precision", "sparsity", "size KiB", "accuracy %",
                                      "baseline %", "runtime shipped", "µs / image", "speedup", "nJ / image (est.)",
                                      "weights read from", "status"])
    timings = []
    for r in data.results:
        tm = data.timing(r["variant"])
        timings += [(r["variant"], tm)] if tm else []
        t.rows.append([r["variant"], r.get("recipe_steps") or r.get("pipeline", ""), r.get("precision", ""),
                       sig(num(r.get("sparsity"))), sig(kib(num(r.get("size_bytes")))),
                       fixed(num(r.get("accuracy_pct"))), fixed(num(r.get("baseline_accuracy_pct"))),
                       tm.runtime if tm else "–", sig(tm.us if tm else None), sig(tm.speedup if tm else None),
                       sig(num(r.get("energy_nj_est"))), (r.get("energy_memory") or "").upper(),
                       r.get("status", "")])
    ratio = DRAM_PJ_PER_32BIT / SRAM_PJ_PER_32BIT
    t.note = (f"Energy estimate (45 nm figures the reference cites): MACs at the variant's precision plus one read "
              f"per weight, from on-chip SRAM ({SRAM_PJ_PER_32BIT:g} pJ per 32 bits) when the shipped file fits the "
              f"{sram_budget_bytes / 1024:,.0f} KiB on-chip budget, else from DRAM ({DRAM_PJ_PER_32BIT:g} pJ, "
              f"{ratio:g} x more). So two variants either side of that budget differ up to {ratio:g} x in the "
              f"memory part of their nJ; \"weights read from\" says which side each is on. "
              + data.timing_note(timings))
    return t


def seed_summary(data: RunData) -> Table:
    """One line per (dataset, model, pipeline): mean ± std over its seeds, each seed's accuracy beside."""
    t = Table("seeds", "Every pipeline over its seeds (mean ± std)", ["dataset / model", "pipeline", "seeds",
              "size KiB", "accuracy %", "per seed accuracy %", "µs / image", "speedup"],
              note="Sample standard deviation over the seeds; size in KiB (1,024 bytes) of the shipped file.")
    named = []
    for (ds, model, label), rows in groups(data.results).items():
        timings = [tm for r in rows if (tm := data.timing(r["variant"]))]
        name = f"{DS_NAME.get(ds, ds)} {MODEL_NAME.get(model, model)}"
        named += [(f"{name} {label}", tm) for tm in timings]
        t.rows.append([name, label or rows[0].get("pipeline", ""), str(len(rows)),
                       pm_sig(column(rows, "size_bytes", 1 / 1024)), pm(column(rows, "accuracy_pct")),
                       per_seed(rows, "accuracy_pct", lambda v: f"{v:.2f}"), pm_sig([tm.us for tm in timings]),
                       pm_sig([tm.speedup for tm in timings])])
    t.note += " " + data.timing_note(named)
    return t


def pm_sig(values: list[float | None]) -> str:
    """Mean ± sample std over seeds at three significant digits (seeds.pm keeps fixed decimals)."""
    mean, std, _ = mean_std(values)
    return sig(mean) if std is None or mean is None else f"{sig(mean)} ± {sig(std)}"


ORDER = ["t1", "t1b", "t2", "t3", "t4", "t5", "t6", "t7", "t8", "t9", "t10", "t11", "t12", "t13", "t14", "t15",
         "t16", "t17", "t18", "t19", "t20", "future"]


def shipped_table(data: RunData) -> Table:
    """Every variant's fastest runtime against its baseline's fastest, per setting (report/shipped.py)."""
    rows, slow = shipped_table_rows(data)
    verdict = (f"Slower than {SLOWER:g}x its baseline: {'; '.join(slow)}." if slow else
               f"No variant is slower than {SLOWER:g}x its baseline as shipped.")
    return Table("shipped", "Speed as shipped: each file's fastest runtime against its baseline's fastest",
                 ["variant", "setting", "fastest runtime, µs / image", "baseline's fastest, µs / image",
                  "speedup as shipped", ""], rows,
                 note="A user runs each file in whichever runtime is fastest for it, so a variant is compared "
                      "with its baseline's best, at the same threads and batch: median µs per image in "
                      "latency.csv, the baseline's from the run it was timed in interleaved with the variant "
                      "(a dash where it was not: no ratio of two runs), each run while nothing else of the study "
                      "ran. " + noise_note(data) + " " + verdict)


def deep_compression_table(data: RunData) -> Table:
    """Han et al.'s per-layer Deep Compression tables, ours from the `.dsz` headers (report/deep_compression.py)."""
    return Table("deep_compression", "Deep Compression per layer, laid out as Han et al. 2016 (Tables 2 and 3)",
                 DC_COLUMNS, deep_compression_rows(data),
                 note="Each `.dsz` file's weight tensors as its header stores them: weights kept, bits per kept "
                      "weight for its codebook index (P+Q: the codebook's width; P+Q+H: the Huffman-coded index "
                      "stream with its code table, x 8 / kept weights) and for its position (P+Q: the "
                      "relative-index width; P+Q+H: the coded gap stream, filler entries included), and bytes "
                      "(positions + indices + codebook). Several seeds: mean ± sample std. Han's rows are his "
                      "published numbers (ipN = our fcN; his LeNet-5 is our lenet-5-caffe); his last column "
                      "is the P+Q+H compress rate.")


def build_tables(data: RunData, sram_budget_bytes: int = 256 * 1024) -> list[Table]:
    """The reference's tables with rows, then the seed summary (several seeds only) and all variants."""
    out = [main_table(data, *spec) for spec in MAIN_TABLES]
    out += [layer_table(data, *spec) for spec in LAYER_TABLES]
    out += best_tables(data)
    out.append(future_table(data))
    out.sort(key=lambda t: ORDER.index(t.id))
    multi = any(len(rows) > 1 for rows in groups(data.results).values())
    return ([t for t in [*out, shipped_table(data), deep_compression_table(data)] if t.rows]
            + ([seed_summary(data)] if multi else [])
            + [all_variants(data, sram_budget_bytes)])
