"""The report's "On a microcontroller" section (a study with `[measure] mcu`): per variant built for the
target, its flash, RAM, instructions, estimated milliseconds and the C's accuracy (mean ± std over seeds),
beside the same model stored all dense (for weights run in place) and TensorFlow Lite Micro's figures for
the dense model where benchmarks/bench_mcu.py wrote them into the run directory (`tflm.csv`); and a
flash-vs-accuracy plot."""

from pathlib import Path

import matplotlib.pyplot as plt

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


def mcu_table(data: RunData) -> Table:
    rows = []
    for (ds, model, label), seeds in _mcu_groups(data).items():
        in_place = any(r.get("mcu_dense_flash_bytes") for r in seeds)
        rows.append([f"{ds} {model} {label}", str(len(seeds)), seeds[0].get("mcu_target", ""),
                     _ints(seeds, "mcu_flash_bytes"), _ints(seeds, "mcu_ram_bytes"), _ints(seeds, "mcu_instructions"),
                     pm(column(seeds, "mcu_ms_est"), 2), pm(column(seeds, "mcu_energy_uj_est"), 1),
                     pm(column(seeds, "mcu_accuracy_pct")),
                     _ints(seeds, "mcu_dense_flash_bytes") if in_place else "(itself)",
                     _ints(seeds, "mcu_dense_instructions") if in_place else "(itself)",
                     seeds[0].get("mcu_layouts") or "dense"])
    rows += _tflm_rows(data)
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
    return Table("mcu", "On a microcontroller", COLUMNS, rows, note)


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
    fig, axes = plt.subplots(1, len(points), figsize=(5.5 * len(points), 4.4), squeeze=False)
    for ax, ((ds, model), pts) in zip(axes[0], sorted(points.items()), strict=True):
        for x, y, e, label in pts:
            ax.errorbar([x], [y], yerr=[e], fmt="o", capsize=3, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("flash of the Cortex-M image (kB, log scale)")
        ax.set_ylabel("accuracy of the C on the test set (%)")
        ax.set_title(f"{ds} {model}")
        ax.legend(fontsize=7)
    path = save(fig, out / "mcu_flash_accuracy.png")
    return Figure(path, "On a microcontroller: flash of the linked image against the accuracy of its C, per "
                        "variant (mean over seeds, error bar one standard deviation).")
