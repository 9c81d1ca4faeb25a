"""The generated "Where the reference looks better, and why" section: every compared cell (size,
accuracy, time, speedup) where the reference's number beats ours, with a cause computed from this
run's files: the shipped artifact's container header (index vs value bytes), non-zeros kept against
the reference's own count, the paired timing and the deployment that was timed. Sentences are
templates; every number in them is measured here, none is typed in.
"""

from dataclasses import dataclass
from pathlib import Path

from deepshrink.errors import UserError
from deepshrink.export.formats.container import read_container
from deepshrink.export.formats.dsonnx import MAGIC as DSONNX_MAGIC
from deepshrink.export.formats.dsparse import MAGIC as SPARSE_MAGIC
from deepshrink.export.formats.dsq import MAGIC as PACKED_MAGIC
from deepshrink.report.numbers import count, fixed, kib, num, sig
from deepshrink.report.reference import ref
from deepshrink.report.rundata import Row, RunData
from deepshrink.report.specs import LAYER_TABLES
from deepshrink.report.tables import Comparison, Table

CONTAINERS = {".dsparse": SPARSE_MAGIC, ".dsonnx": DSONNX_MAGIC, ".dsq": PACKED_MAGIC}
QUANTITY = {"size": "size KiB", "accuracy": "accuracy %", "time": "µs / image", "speedup": "speedup"}
SPARSE_FILES = (".dsparse", ".dsonnx")


@dataclass(frozen=True)
class StreamBytes:
    """Where a container file's bytes go, from its header alone (no stream is decompressed)."""

    index: int  # relative-position (gap) streams of sparse tensors
    values: int  # value streams of sparse tensors, and bit-packed weight codes
    other: int  # dense tensors, the ONNX graph, per-channel steps
    header: int  # magic, length word and JSON header
    codec: str


def artifact_streams(path: Path) -> StreamBytes | None:
    """Byte accounting of a `.dsparse` / `.dsonnx` / `.dsq` file; None for other formats or a file
    that is missing or unreadable (the report then falls back to the parameter counts)."""
    magic = CONTAINERS.get(path.suffix)
    if magic is None or not path.is_file():
        return None
    data = path.read_bytes()
    try:
        header, _ = read_container(data, magic, str(path), "container file")
    except (UserError, ValueError, KeyError):
        return None
    index = values = other = 0
    for t in header.get("tensors", []):
        if "gaps" in t:
            index += t["gaps"][1]
            values += t["values"][1]
        elif t.get("kind") == "codes":
            values += t["data"][1]
        else:
            other += t["data"][1]
    other += header["graph"][1] if "graph" in header else 0
    return StreamBytes(index, values, other, len(data) - index - values - other, str(header.get("codec", "")))


def _bytes_per_value(precision: str) -> float:
    """Storage of one parameter at a results.csv precision (fp32, int8, int4-weights, ...)."""
    bits = {"fp64": 64, "fp32": 32, "fp16": 16}.get(precision)
    if bits is None:
        digits = "".join(ch for ch in precision.split("-")[0] if ch.isdigit())
        bits = int(digits) if digits else 32
    return bits / 8


def _nonzero_vs_reference(c: Comparison, data: RunData) -> tuple[int | None, int | None]:
    """(ours, the reference's) non-zeros of this row's variant, counted as the reference's layer table
    (Tables 4/6/8/10) counts them; a pruned-then-INT8 variant keeps its pruned model's non-zeros."""
    ds, model = c.row.get("dataset", ""), c.row.get("base_model") or c.row.get("model", "")
    label = (c.row.get("label") or "").removesuffix("+int8")
    hit = next(((tid, name, biases) for tid, _, specs, _, biases in LAYER_TABLES for name, d, m, lab in specs
                if (d, m, lab) == (ds, model, label) and ref(tid, name).get("total")), None)
    counts = data.layer_counts(c.row["variant"])
    if hit is None or not counts:
        return (sum(x.weights_nonzero for x in counts.values()) if counts else None), None
    tid, name, biases = hit
    ours = sum(x.weights_nonzero + (x.biases_nonzero if biases else 0) for x in counts.values())
    return ours, ref(tid, name)["total"]


def size_cause(c: Comparison, data: RunData) -> str:
    row, parts = c.row, []
    size_b = num(row.get("size_bytes")) or 0.0
    art = Path(row.get("artifact") or "")
    streams = artifact_streams(data.run_dir / art) if data.run_dir and art.name else None
    if streams:
        rest = streams.other + streams.header
        parts.append(f"our {art.suffix} file ({streams.codec}) holds {sig(kib(streams.index))} KiB of position "
                     f"indices, {sig(kib(streams.values))} KiB of values and {sig(kib(rest))} KiB of graph, dense "
                     f"tensors and header")
    ours_nz, theirs_nz = _nonzero_vs_reference(c, data)
    if streams and ours_nz and not theirs_nz:
        parts.append(f"it keeps {ours_nz:,} non-zero weights, {sig(size_b / ours_nz)} bytes per kept weight")
    if ours_nz and theirs_nz:
        parts.append(f"it keeps {ours_nz:,} non-zeros where the reference kept {theirs_nz:,} "
                     f"({sig(ours_nz / theirs_nz)} x) at the same nominal setting; {sig(size_b / ours_nz)} bytes per "
                     f"kept non-zero vs the reference's {sig(c.theirs * 1024 / theirs_nz)}")
    if not streams and not theirs_nz:
        per = _bytes_per_value(row.get("precision", "fp32"))
        params = num(row.get("params_total")) or 0.0
        payload = params * per
        parts.append(f"{count(params)} parameters at {row.get('precision', '?')} are {sig(kib(payload))} KiB, plus "
                     f"{sig(kib(size_b - payload))} KiB of format (graph, scales, header); the reference's "
                     f"{sig(c.theirs)} KiB holds at most {count(c.theirs * 1024 / per)} values at that precision")
    return "; ".join(parts) + "."


def accuracy_cause(c: Comparison) -> str:
    ours_base, ref_base = num(c.row.get("baseline_accuracy_pct")), c.ref_base.get("acc")
    gap = c.theirs - c.ours
    if ours_base is None:
        return f"{fixed(gap)} points below the reference; our baseline accuracy is not recorded."
    drop = c.ours - ours_base
    text = f"{fixed(gap)} points below the reference: ours is {drop:+.2f} from our baseline ({fixed(ours_base)})"
    if ref_base is not None:
        ref_drop = c.theirs - ref_base
        text += (f", the reference's {ref_drop:+.2f} from its own ({fixed(ref_base)}); so {ref_base - ours_base:+.2f} "
                 f"of the gap is the baselines and {ref_drop - drop:+.2f} the compression step")
    if c.row.get("dataset") == "cifar10":
        text += "; our CIFAR-10 images are a JPEG quality-75 copy (see the note at the top)"
    return text + "."


def time_cause(c: Comparison) -> str:
    tm = c.timing
    how = tm.setting() if tm else "no timing recorded"
    return f"ours timed with {how}; the reference's time is its Config1 machine's (Intel i7-8750H)."


MODE_MEANS = {"full": "every layer computes in integers", "mixed": "fully connected layers in integers, "
              "convolutions in float", "weights": "INT8 weights dequantized once, every layer computes in float"}


def _measured(row: Row, prefix: str) -> dict[str, float]:
    """The export's own timings of the alternatives it chose among (calibration images, 1 thread): info
    columns `<prefix><name>`, e.g. `int8_us_b256_full_onnxruntime`, keyed by the name."""
    return {k.removeprefix(prefix): v for k in row if k.startswith(prefix) and (v := num(row.get(k))) is not None}


def _alt(name: str, b256: dict[str, float], b1: dict[str, float]) -> str:
    at1 = f" / {sig(b1[name])} µs at batch 1" if name in b1 else ""
    what = "FP32" if name == "fp32" else name.replace("_", " on ", 1)
    return f"{what} {sig(b256[name])} µs{at1}"


def int8_cause(row: Row, runtime: str) -> str:
    """What ships and, from the export's measurements, each alternative it rejected with its times."""
    mode = row.get("int8_mode") or ""
    text = f"ships INT8 mode {mode or '?'} ({MODE_MEANS.get(mode, 'mode not recorded')}) on {runtime}"
    b256, b1 = _measured(row, "int8_us_b256_"), _measured(row, "int8_us_b1_")
    chosen = [k for k in b256 if k.startswith(f"{mode}_")]
    if not chosen:
        return text
    rejected = [_alt(k, b256, b1) for k in sorted(b256) if k not in chosen and k != "fp32"]
    text += "; the export measured " + ", ".join(_alt(k, b256, b1) for k in chosen)
    text += f" against {_alt('fp32', b256, b1)}" if "fp32" in b256 else ""
    text += (f" and rejected {', '.join(rejected)} (the mode whose slower batch is fastest ships)" if rejected
             else "")
    full = [v for k, v in b256.items() if k.startswith("full_")]
    if mode != "weights" and full and "fp32" in b256 and min(full) > b256["fp32"]:
        text += "; integer kernels ran slower than float ones here"
    return text


def sparse_cause(row: Row, runtime: str, macs: float | None, macs_nz: float | None) -> str:
    """A pruned file: on the sparse runtime, or why it ships dense (the deploy measurement's times)."""
    work = f"{count(macs_nz)} of {count(macs)} MACs per image touch a non-zero weight"
    if runtime == "sparse":
        return f"ships on the sparse runtime ({work}), timed against the baseline's ONNX Runtime model"
    us = _measured(row, "deploy_us_b256_")
    text = f"ships the decoded dense model on {runtime} ({work}; dense kernels run them all)"
    if "sparse" in us and runtime in us:
        text += f"; the sparse runtime measured {sig(us['sparse'])} µs against {runtime}'s {sig(us[runtime])} µs"
    return text


def _work_cause(row: Row, data: RunData, speedup: float | None) -> str:
    base = data.row(row.get("baseline_variant", ""))
    base_macs, macs_nz = num(base.get("macs_nonzero")) if base else None, num(row.get("macs_nonzero"))
    if not macs_nz or not base_macs or speedup is None:
        return "no MAC counts recorded for this variant"
    work = base_macs / macs_nz
    text = f"the work per image fell {sig(work)} x ({count(macs_nz)} MACs vs the baseline's {count(base_macs)})"
    if speedup < work:
        return text + f" but the time only {sig(speedup)} x"
    return text + f" and the time {sig(speedup)} x"


def speedup_cause(c: Comparison, data: RunData) -> str:
    row, tm = c.row, c.timing
    if tm is None or tm.speedup is None:
        return "the baseline was not timed in the same run as this variant, so there is no speedup to compare."
    paired = (f"paired run: baseline {sig(tm.base_us)} µs ({tm.base_runtime()}), this variant {sig(tm.us)} µs "
              f"({tm.setting()})")
    runtime = row.get("deployed_runtime") or tm.runtime
    macs, macs_nz = num(row.get("macs")), num(row.get("macs_nonzero"))
    noise = data.noise()
    lead = (f"within the measured timing noise ({noise.spread:.2f}x) of the reference's {sig(c.theirs)} x; "
            if noise and noise.within(c.ours / c.theirs) else "")
    if row.get("int8_mode") or "int8" in (row.get("deployment") or ""):
        text = int8_cause(row, runtime)
    elif Path(row.get("artifact") or "").suffix in SPARSE_FILES or row.get("sparse") == "True":
        text = sparse_cause(row, runtime, macs, macs_nz)
        text += f"; the reference's time falls with sparsity ({sig(c.theirs)} x)"
    else:
        text = _work_cause(row, data, tm.speedup)
    return f"{lead}{text}; {paired}."


def gaps_table(tables: list[Table], data: RunData) -> Table:
    """Every compared cell of `tables` where the reference's number beats ours, with its cause."""
    t = Table("gaps", "Where the reference looks better, and why",
              ["table", "row", "quantity", "ours", "reference", "why (measured from this run)"],
              note="Every cell above where the reference's number beats ours: a smaller size, higher accuracy, "
                   "shorter time or larger speedup. Sizes in KiB. Each cause is computed from this run's files "
                   "(results.csv, latency.csv, layers.csv and the artifacts' container headers).")
    for table in tables:
        for c in table.comparisons:
            if not c.worse():
                continue
            show = fixed if c.quantity == "accuracy" else sig
            cause = {"size": lambda c=c: size_cause(c, data), "accuracy": lambda c=c: accuracy_cause(c),
                     "time": lambda c=c: time_cause(c), "speedup": lambda c=c: speedup_cause(c, data)}[c.quantity]()
            t.rows.append([table.title.split(".")[0], c.row_name, QUANTITY[c.quantity], show(c.ours),
                           show(c.theirs), cause])
    if not t.rows:
        t.note = "No compared cell of this run is worse than the reference's."
    return t
