"""The reference study's tables rebuilt from a run directory's result files, with the reference's
published number beside ours in each cell where it has one.

A table row names (dataset, model, recipe pipeline label); the `paper` and `quick` recipes use these
labels. A row whose variant is absent from the run is left out; a table with no rows is skipped.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from deepshrink.report.reference import BEST, ref
from deepshrink.report.seeds import column, groups, per_seed, pm

Row = dict[str, str]
DS_NAME = {"mnist": "MNIST", "cifar10": "CIFAR-10"}
MODEL_NAME = {"lenet-300-100": "LeNet-300-100", "lenet-5": "LeNet-5"}


@dataclass
class Table:
    id: str
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""


@dataclass
class RunData:
    """results.csv / latency.csv / layers.csv, indexed the way the tables look them up."""

    results: list[Row]
    latency: list[Row]
    layers: list[Row]

    def find(self, dataset: str, model: str, label: str) -> Row | None:
        hits = self.find_all(dataset, model, label)
        return hits[0] if hits else None

    def find_all(self, dataset: str, model: str, label: str) -> list[Row]:
        """Every seed's row of one recipe variant, lowest seed first."""
        hits = [r for r in self.results if r.get("dataset") == dataset and
                (r.get("base_model") or r.get("model")) == model and r.get("label") == label]
        return sorted(hits, key=lambda r: _num(r.get("seed")) or 0.0)

    def time_us(self, variant: str) -> tuple[float | None, float | None]:
        """(µs per image, speedup) by the study's method: batched, onnxruntime if measured, fewest threads."""
        rows = [r for r in self.latency if r["variant"] == variant and r["batch"] != "1" and r["device"] == "cpu"]
        if not rows:
            return None, None
        best = min(rows, key=lambda r: (r["runtime"] != "onnxruntime", int(r["threads"] or 0)))
        return _num(best["us_per_image_median"]), _num(best.get("speedup"))

    def layer_params(self, variant: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.layers:
            if r["variant"] == variant:
                name = r["layer"].split(".")[0]
                out[name] = out.get(name, 0) + int(float(r["params_nonzero"] or 0))
        return out


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def fmt(v: float | None, digits: int = 2) -> str:
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def cell(ours: float | list[float | None] | None, theirs: Any, digits: int = 2) -> str:
    """`ours (ref theirs)`; only ours where the reference has no number. Several seeds' values show
    as `mean ± std`."""
    text = pm(ours, digits) if isinstance(ours, list) else fmt(ours, digits)
    return text if theirs is None else f"{text} ({fmt(float(theirs), digits)})"


def ok(row: Row | None) -> bool:
    return row is not None and row.get("status") == "ok"


# ---- row specs: (row label, dataset, model, pipeline label) ----

Spec = tuple[str, str, str, str]


def _sweep(ds: str, model: str, sparsities: list[int], int8: bool = False) -> list[Spec]:
    rows: list[Spec] = [("Original FP32" if int8 else "Original", ds, model, "baseline")]
    rows += [("Original INT8", ds, model, "int8")] if int8 else []
    for s in sparsities:
        rows.append((f"{s}% FP32" if int8 else f"{s}%", ds, model, f"prune{s}"))
        rows += [(f"{s}% INT8", ds, model, f"prune{s}+int8")] if int8 else []
    return rows


def _structured(ds: str, int8: bool = False) -> list[Spec]:
    rows: list[Spec] = []
    for name, label in (("Original", "baseline"), ("Dense", "prune-dense"), ("Dense + Conv", "prune-dense-conv")):
        if not int8:
            rows.append((name, ds, "lenet-5", label))
            continue
        rows.append((f"{name} FP32", ds, "lenet-5", label))
        rows.append((f"{name} INT8", ds, "lenet-5", "int8" if label == "baseline" else f"{label}+int8"))
    return rows


def _kd(ds: str) -> list[Spec]:
    return [("Student (no teacher)", ds, "lenet-5", "student"), ("LeNet-300-100", ds, "lenet-300-100", "baseline"),
            ("LeNet-5", ds, "lenet-5", "baseline"), ("LeNet-300-100 distilled", ds, "lenet-300-100", "distill"),
            ("LeNet-5 distilled", ds, "lenet-5", "distill")]


def _kdq(ds: str) -> list[Spec]:
    rows: list[Spec] = []
    for m in ("lenet-300-100", "lenet-5"):
        rows += [(f"{MODEL_NAME[m]} FP32", ds, m, "baseline"), (f"{MODEL_NAME[m]} INT8", ds, m, "int8")]
    for m in ("lenet-300-100", "lenet-5"):
        rows += [(f"{MODEL_NAME[m]} distilled FP32", ds, m, "distill"),
                 (f"{MODEL_NAME[m]} distilled INT8", ds, m, "distill+int8")]
    return rows


_T2: list[Spec] = [(f"{DS_NAME[d]} {MODEL_NAME[m]} {p.upper()}", d, m, "baseline" if p == "fp32" else "int8")
                   for d, m in (("mnist", "lenet-300-100"), ("mnist", "lenet-5"), ("cifar10", "lenet-300-100"),
                                ("cifar10", "lenet-5")) for p in ("fp32", "int8")]
_T1B: list[Spec] = [(f"{DS_NAME[d]} {MODEL_NAME[m]} {name}", d, m, lab)
                    for d, m in (("mnist", "lenet-300-100"), ("mnist", "lenet-5"), ("cifar10", "lenet-300-100"),
                                 ("cifar10", "lenet-5"))
                    for name, lab in (("FLOAT64", "fp64"), ("FLOAT32", "baseline"), ("FLOAT16", "fp16"),
                                      ("INT8 QAT", "int8"), ("INT8 PTQ", "int8-ptq"),
                                      ("INT8 never-slower", "int8-auto"), ("4-bit weights", "w4"),
                                      ("2-bit weights", "w2"))]
MAIN_TABLES: list[tuple[str, str, list[Spec], bool]] = [  # (id, title, rows, with epochs column)
    ("t1", "Table 1. Effect of precision on LeNet-300-100 on MNIST",
     [(n, "mnist", "lenet-300-100", lab) for n, lab in (("FLOAT64", "fp64"), ("FLOAT32", "baseline"),
                                                        ("FLOAT16", "fp16"), ("INT8", "int8"))], False),
    ("t1b", "Table 1b. Precision and weight bits for every baseline (beyond the reference)", _T1B, False),
    ("t2", "Table 2. Quantization (FP32 reference, INT8 compressed)", _T2, False),
    ("t3", "Table 3. Pruning LeNet-300-100 on MNIST", _sweep("mnist", "lenet-300-100", [50, 60, 70, 80, 90]), False),
    ("t5", "Table 5. Pruning LeNet-5 on MNIST", _structured("mnist"), False),
    ("t7", "Table 7. Pruning LeNet-300-100 on CIFAR-10", _sweep("cifar10", "lenet-300-100", [50, 70, 80]), False),
    ("t9", "Table 9. Pruning LeNet-5 on CIFAR-10", _structured("cifar10"), False),
    ("t11", "Table 11. Knowledge distillation on MNIST (student mlp-50)", _kd("mnist"), True),
    ("t12", "Table 12. Knowledge distillation on CIFAR-10 (student mlp-50)", _kd("cifar10"), True),
    ("t13", "Table 13. Pruning & quantization on LeNet-300-100 on MNIST",
     _sweep("mnist", "lenet-300-100", [50, 60, 70, 80, 90], int8=True), False),
    ("t14", "Table 14. Pruning & quantization on LeNet-5 on MNIST", _structured("mnist", int8=True), False),
    ("t15", "Table 15. Pruning & quantization on LeNet-300-100 on CIFAR-10",
     _sweep("cifar10", "lenet-300-100", [50, 70, 80], int8=True), False),
    ("t16", "Table 16. Pruning & quantization on LeNet-5 on CIFAR-10", _structured("cifar10", int8=True), False),
    ("t17", "Table 17. KD + quantization on MNIST", _kdq("mnist"), False),
    ("t18", "Table 18. KD + quantization on CIFAR-10", _kdq("cifar10"), False),
]
LAYER_TABLES: list[tuple[str, str, list[Spec], list[str]]] = [
    ("t4", "Table 4. Non-zero parameters per layer, LeNet-300-100 on MNIST",
     _sweep("mnist", "lenet-300-100", [50, 60, 70, 80, 90]), ["fc1", "fc2", "fc3"]),
    ("t6", "Table 6. Non-zero parameters per layer, LeNet-5 on MNIST",
     [("Original", "mnist", "lenet-5", "baseline"), ("Dense", "mnist", "lenet-5", "prune-dense"),
      ("Dense + Conv", "mnist", "lenet-5", "prune-dense-conv")], ["conv1", "conv2", "fc1", "fc2", "fc3"]),
    ("t8", "Table 8. Non-zero parameters per layer, LeNet-300-100 on CIFAR-10",
     _sweep("cifar10", "lenet-300-100", [50, 70, 80]), ["fc1", "fc2", "fc3"]),
    ("t10", "Table 10. Non-zero parameters per layer, LeNet-5 on CIFAR-10",
     [("Original", "cifar10", "lenet-5", "baseline"), ("Dense", "cifar10", "lenet-5", "prune-dense"),
      ("Dense + Conv", "cifar10", "lenet-5", "prune-dense-conv")], ["conv1", "conv2", "fc1", "fc2", "fc3"]),
]
FUTURE = [("Distill into a pruned student, then INT8", "fw-distill-pruned+int8"),
          ("Prune a distilled model, then INT8", "fw-prune-distilled+int8")]
FAMILIES: dict[str, Callable[[str], bool]] = {
    "Original": lambda lab: lab == "baseline",
    "Quantization": lambda lab: lab in ("int8", "int8-ptq", "int8-auto"),
    "Pruning": lambda lab: lab.startswith("prune") and "+" not in lab,
    "Knowledge Distillation": lambda lab: lab == "distill" or (lab.startswith("distill-T") and "+" not in lab),
    "Pruning + Quantization": lambda lab: lab.startswith("prune") and lab.endswith("+int8"),
    "KD + Quantization": lambda lab: lab == "distill+int8",
}


def main_table(data: RunData, tid: str, title: str, specs: list[Spec], epochs: bool) -> Table:
    cols = ["", "size kB", "× smaller", "accuracy %", "µs / image", "speedup"] + (["epochs"] if epochs else [])
    t = Table(tid, title, cols, note="Ours (reference in parentheses). Time: ours µs/image batched on this machine; "
              "reference Config1 converted to µs. Speedup: baseline time / variant time, the two timed "
              "interleaved in one run (same runtime, threads and batch).")
    for name, ds, model, label in specs:
        row, base = data.find(ds, model, label), data.find(ds, model, "baseline")
        if not ok(row):
            continue
        assert row is not None
        r = ref(tid, name)
        size, us = _num(row["size_kb"]), data.time_us(row["variant"])
        base_size = _num(base["size_kb"]) if ok(base) and base else None
        ratio = base_size / size if base_size and size else None
        ref_us = r["time"] * 1e6 if r.get("time") else None
        accs = column([x for x in data.find_all(ds, model, label) if ok(x)], "accuracy_pct")
        line = [name, cell(size, r.get("size"), 1), fmt(ratio, 1), cell(accs, r.get("acc")),
                cell(us[0], ref_us, 1), fmt(us[1], 2)]
        if epochs:
            conv = _num(row.get("epochs_to_converge")) or _num(row.get("epochs"))
            line.append(cell(conv, r.get("epochs"), 0) if label != "baseline" else "–")
        t.rows.append(line)
    return t


def layer_table(data: RunData, tid: str, title: str, specs: list[Spec], layers: list[str]) -> Table:
    t = Table(tid, title, ["", *layers, "total"], note="Non-zero parameters (weights and biases) of our model; "
              "reference in parentheses.")
    for name, ds, model, label in specs:
        row = data.find(ds, model, label)
        if not ok(row):
            continue
        assert row is not None
        got, r = data.layer_params(row["variant"]), ref(tid, name)
        if not got:
            continue
        t.rows.append([name, *[cell(float(got.get(la, 0)), r.get(la), 0) for la in layers],
                       cell(float(sum(got.values())), r.get("total"), 0)])
    return t


def best_of(data: RunData, ds: str, model: str, family: Callable[[str], bool]) -> Row | None:
    """The smallest variant of a family within 1 point of its baseline's accuracy, else the most accurate."""
    rows = [r for r in data.results if ok(r) and r.get("dataset") == ds and
            (r.get("base_model") or r.get("model")) == model and family(r.get("label", ""))]
    if not rows:
        return None
    good = [r for r in rows if (_num(r["accuracy_pct"]) or 0) >= (_num(r["baseline_accuracy_pct"]) or 0) - 1.0]
    if good:
        return min(good, key=lambda r: _num(r["size_kb"]) or math.inf)
    return max(rows, key=lambda r: _num(r["accuracy_pct"]) or -math.inf)


def best_tables(data: RunData) -> list[Table]:
    combos = [(d, m) for d in ("mnist", "cifar10") for m in ("lenet-300-100", "lenet-5")
              if data.find(d, m, "baseline")]
    heads = [f"{DS_NAME[d]} {MODEL_NAME[m]}" for d, m in combos]
    size = Table("t19", "Table 19. Size in kB of the best models", ["technique", *heads],
                 note="Best = smallest variant within 1 point of its baseline's accuracy (else the most accurate).")
    time = Table("t20", "Table 20. Time per image (µs) of the best models", ["technique", *heads],
                 note="Ours batched on this machine; reference Config1 in parentheses (converted to µs).")
    for fam, pred in FAMILIES.items():
        s_cells, t_cells = [], []
        for d, m in combos:
            row, r = best_of(data, d, m, pred), BEST.get((fam, d, m), {})
            if row is None:
                s_cells.append("–")
                t_cells.append("–")
                continue
            s_cells.append(cell(_num(row["size_kb"]), r.get("size"), 1) + f" {row.get('label', '')}")
            t_cells.append(cell(data.time_us(row["variant"])[0], r["time"] * 1e6 if r.get("time") else None, 1))
        size.rows.append([fam, *s_cells])
        time.rows.append([fam, *t_cells])
    return [size, time] if combos else []


def future_table(data: RunData) -> Table:
    t = Table("future", "Future-work pipelines of the reference (§9), done", ["dataset / model", "pipeline",
              "size kB", "× smaller", "accuracy %", "baseline %", "µs / image", "speedup"])
    for d in ("mnist", "cifar10"):
        for m in ("lenet-300-100", "lenet-5"):
            for name, label in FUTURE:
                row, base = data.find(d, m, label), data.find(d, m, "baseline")
                if not ok(row) or row is None:
                    continue
                size, bsize = _num(row["size_kb"]), _num(base["size_kb"]) if base else None
                us, sp = data.time_us(row["variant"])
                t.rows.append([f"{DS_NAME.get(d, d)} {MODEL_NAME.get(m, m)}", name, fmt(size, 1),
                               fmt(bsize / size if bsize and size else None, 1), fmt(_num(row["accuracy_pct"])),
                               fmt(_num(row["baseline_accuracy_pct"])), fmt(us, 1), fmt(sp, 2)])
    return t


def all_variants(data: RunData) -> Table:
    t = Table("all", "All variants", ["variant", "pipeline", "precision", "sparsity", "size kB", "accuracy %",
                                      "baseline %", "µs / image", "speedup", "nJ / image (est.)", "status"])
    for r in data.results:
        us, sp = data.time_us(r["variant"])
        t.rows.append([r["variant"], r.get("recipe_steps") or r.get("pipeline", ""), r.get("precision", ""),
                       fmt(_num(r.get("sparsity")), 3), fmt(_num(r.get("size_kb")), 1),
                       fmt(_num(r.get("accuracy_pct"))),
                       fmt(_num(r.get("baseline_accuracy_pct"))), fmt(us, 1), fmt(sp, 2),
                       fmt(_num(r.get("energy_nj_est")), 0), r.get("status", "")])
    return t


def seed_summary(data: RunData) -> Table:
    """One line per (dataset, model, pipeline): mean ± std over its seeds, each seed's accuracy beside."""
    t = Table("seeds", "Every pipeline over its seeds (mean ± std)", ["dataset / model", "pipeline", "seeds",
              "size KiB", "accuracy %", "per seed accuracy %", "µs / image", "speedup"],
              note="Sample standard deviation over the seeds; size in KiB (1,024 bytes) of the shipped file.")
    for (ds, model, label), rows in groups(data.results).items():
        times = [data.time_us(r["variant"]) for r in rows]
        t.rows.append([f"{DS_NAME.get(ds, ds)} {MODEL_NAME.get(model, model)}", label or rows[0].get("pipeline", ""),
                       str(len(rows)), pm(column(rows, "size_bytes", 1 / 1024), 2), pm(column(rows, "accuracy_pct")),
                       per_seed(rows, "accuracy_pct", lambda v: f"{v:.2f}"), pm([u for u, _ in times], 1),
                       pm([sp for _, sp in times], 2)])
    return t


def build_tables(data: RunData) -> list[Table]:
    out = [main_table(data, *spec) for spec in MAIN_TABLES]
    out += [layer_table(data, *spec) for spec in LAYER_TABLES]
    out += best_tables(data)
    out.append(future_table(data))
    order = {t: i for i, t in enumerate(["t1", "t1b", "t2", "t3", "t4", "t5", "t6", "t7", "t8", "t9", "t10", "t11",
                                         "t12", "t13", "t14", "t15", "t16", "t17", "t18", "t19", "t20", "future"])}
    out.sort(key=lambda t: order[t.id])
    multi = any(len(rows) > 1 for rows in groups(data.results).values())
    return [t for t in out if t.rows] + ([seed_summary(data)] if multi else []) + [all_variants(data)]
