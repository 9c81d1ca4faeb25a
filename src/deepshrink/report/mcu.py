"""The report's "On a microcontroller" section (a study with `[measure] mcu`): per variant built for the
target, its flash, RAM, instructions, estimated milliseconds and the C's accuracy (mean ± std over seeds),
beside the same model stored all dense (for weights run in place) and TensorFlow Lite Micro's figures for
the dense model where benchmarks/bench_mcu.py wrote them into the run directory (`tflm.csv`); and a
flash-vs-accuracy plot."""

from pathlib import Path

import matplotlib.pyplot as plt

from deepshrink.models import display_name
from deepshrink.report.numbers import num
from deepshrink.report.plots import Figure, save
from deepshrink.report.rundata import RunData
from deepshrink.report.seeds import column, groups, mean_std, pm
from deepshrink.report.tables import Table
from deepshrink.results import read_rows

Row = dict[str, str]
COLUMNS = ["variant", "seeds", "target", "flash (B)", "RAM (B)", "instructions", "ms (est.)", "energy (µJ, est.)",
           "accuracy (C, %)", "dense INT8 flash (B)", "dense INT8 instructions", "weights"]


def _mcu_groups(data: RunData) -> dict[tuple[str, ...], list[Row]]:
    return {k: rows for k, rows in groups(data.results).items() if any(r.get("mcu_flash_bytes") for r in rows)}


def _ints(rows: list[Row], key: str) -> str:
    return pm(column(rows, key), 0)


# Steps that train a model further without compressing it: a pipeline of these (and quantize) is a dense control.
CONTROL_STEPS = frozenset({"finetune", "quantize"})


def _is_control(seeds: list[Row]) -> bool:
    names = {s.strip().partition(":")[0] for s in seeds[0].get("recipe_steps", "").split("|") if s.strip()}
    return "finetune" in names and names <= CONTROL_STEPS


def _accuracy(seeds: list[Row]) -> float | None:
    return mean_std(column(seeds, "mcu_accuracy_pct"))[0]


def _anchors(data: RunData) -> dict[tuple[str, str], float]:
    """(dataset, model) -> the C accuracy of its dense control (the model fine-tuned as long, uncompressed)."""
    return {(ds, model): acc for (ds, model, _), seeds in _mcu_groups(data).items()
            if _is_control(seeds) and (acc := _accuracy(seeds)) is not None}


def _tflm_accuracy(data: RunData) -> float | None:
    accs = [float(r["tflm_accuracy_pct"]) for r in _tflm(data) if r.get("tflm_accuracy_pct")]
    return accs[0] if len(accs) == 1 else None  # several TFLM models: no one reference to compare with


def _delta(acc: float | None, ref: float | None) -> str:
    return "-" if acc is None or ref is None else f"{acc - ref:+.2f}"


def mcu_table(data: RunData) -> Table:
    rows = []
    controls, tflm_acc = _anchors(data), _tflm_accuracy(data)
    compare = bool(controls) or tflm_acc is not None
    for (ds, model, label), seeds in _mcu_groups(data).items():
        in_place = any(r.get("mcu_dense_flash_bytes") for r in seeds)
        rows.append([f"{ds} {display_name(model)} {label}", str(len(seeds)), seeds[0].get("mcu_target", ""),
                     _ints(seeds, "mcu_flash_bytes"), _ints(seeds, "mcu_ram_bytes"), _ints(seeds, "mcu_instructions"),
                     pm(column(seeds, "mcu_ms_est"), 2), pm(column(seeds, "mcu_energy_uj_est"), 1),
                     pm(column(seeds, "mcu_accuracy_pct")),
                     _ints(seeds, "mcu_dense_flash_bytes") if in_place else "(itself)",
                     _ints(seeds, "mcu_dense_instructions") if in_place else "(itself)",
                     seeds[0].get("mcu_layouts") or "dense"]
                    + ([_delta(_accuracy(seeds), tflm_acc), _delta(_accuracy(seeds), controls.get((ds, model)))]
                       if compare else []))
    rows += [r + ([_delta(num(t.get("tflm_accuracy_pct")), tflm_acc), "-"] if compare else [])
             for r, t in zip(_tflm_rows(data), _tflm(data), strict=True)]  # "-" unless it is the one reference
    columns = COLUMNS + (["vs TFLM reference (pt)", "vs dense control (pt)"] if compare else [])
    note = ("Each INT8 or compressed variant as C99 for the target (deepshrink mcu, docs/mcu.md): flash and RAM of "
            "the linked image, instructions per inference counted in the emulator (exact), cycles and ms "
            "estimated from Arm's Cortex-M4 timings at zero wait states (at the recipe's clock, 80 MHz unless "
            "set). Energy per inference is an estimate too: estimated cycles x an operating point's energy per "
            f"cycle ({_energy_source(data)}). Weights of pruned and clustered "
            "layers run in place (their layout in the last column); the dense INT8 columns are the same model "
            "with every layer stored dense. " + ("TensorFlow Lite Micro rows come from bench_mcu.py's tflm.csv "
                                                  "(its linked image measured the same way; RAM: data + bss + "
                                                  "stack, the arena included)." if _tflm(data) else
                                                  "TensorFlow Lite Micro: run benchmarks/bench_mcu.py --run "
                                                  "RUN_DIR to add its figures for the dense models."))
    if compare:
        note += (" The last two columns: accuracy points against TensorFlow Lite Micro running the reference model "
                 "(its accuracy in tflm.csv), and against the dense control (a pipeline of `finetune` and "
                 "`quantize` only: the model trained as long, uncompressed), so what compression costs is not hidden "
                 "by what fine-tuning on this data gains.")
    return Table("mcu", "On a microcontroller", columns, rows, note)


def _energy_source(data: RunData) -> str:
    sources = {r["mcu_energy_source"] for r in data.results if r.get("mcu_energy_source")}
    return "; ".join(sorted(sources)) or "not measured in this run"


def _tflm(data: RunData) -> list[Row]:
    return read_rows(data.run_dir / "tflm.csv") if data.run_dir is not None else []


def _tflm_rows(data: RunData) -> list[list[str]]:
    rows = []
    for r in _tflm(data):
        acc = r.get("tflm_accuracy_pct")
        if "tflm_flash_bytes" in r:  # measured: the linked TFLM image in the emulator
            flash, ram = r["tflm_flash_bytes"], r["tflm_ram_bytes"]
            instr = r.get("tflm_instructions") or "-"
        else:  # an older tflm.csv: flatbuffer + the published runtime estimate, and the arena
            flash, ram, instr = r["tflm_flash_est_bytes"], f"{r['tflm_arena_bytes']} (arena)", "-"
        rows.append([f"{r['model']} (TensorFlow Lite Micro, dense INT8)", "1", r.get("target") or "-", flash, ram,
                     instr, "-", "-", f"{float(acc):.2f}" if acc else "-", "-", "-", "dense"])
    return rows


def mcu_figure(data: RunData, out: Path) -> Figure | None:
    """Flash of the image against the C's accuracy, one point per variant (mean over seeds, std as the bar),
    one marker per dataset and model."""
    points: dict[tuple[str, str], list[tuple[float, float, float, str]]] = {}
    for (ds, model, label), seeds in _mcu_groups(data).items():
        flash = mean_std(column(seeds, "mcu_flash_bytes", 1 / 1000))[0]
        acc, err, _ = mean_std(column(seeds, "mcu_accuracy_pct"))
        if flash is not None and acc is not None:
            points.setdefault((ds, model), []).append((flash, acc, err or 0.0, label))
    if not points:
        return None
    tflm = [(float(r["tflm_flash_bytes"]) / 1000, float(r["tflm_accuracy_pct"]), r["model"]) for r in _tflm(data)
            if r.get("tflm_flash_bytes") and r.get("tflm_accuracy_pct")]
    fig, axes = plt.subplots(1, len(points), figsize=(5.5 * len(points), 4.4), squeeze=False)
    for ax, ((ds, model), pts) in zip(axes[0], sorted(points.items()), strict=True):
        for x, y, e, label in pts:
            ax.errorbar([x], [y], yerr=[e], fmt="o", capsize=3, label=label)
        front = _frontier([(x, y) for x, y, _, _ in pts])
        ax.step([x for x, _ in front], [y for _, y in front], where="post", color="0.6", lw=1, label="frontier")
        for x, y, name in tflm:  # the anchor: TensorFlow Lite Micro running the reference model
            ax.plot([x], [y], marker="*", ms=14, color="black", ls="none", label=f"TFLM: {name}")
        ax.set_xscale("log")
        ax.set_xlabel("flash of the Cortex-M image (kB, log scale)")
        ax.set_ylabel("accuracy of the C on the test set (%)")
        ax.set_title(f"{ds} {display_name(model)}")
        ax.legend(fontsize=7)
    path = save(fig, out / "mcu_flash_accuracy.png")
    return Figure(path, "On a microcontroller: flash of the linked image against the accuracy of its C, per "
                        "variant (mean over seeds, error bar one standard deviation); the grey steps join the "
                        "variants no other beats on both; a star marks TensorFlow Lite Micro running the reference "
                        "model (bench_mcu.py's tflm.csv) where the run has one.")


def _frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other has both less flash and more accuracy than, by flash."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):  # of equal flash, the most accurate first
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front
