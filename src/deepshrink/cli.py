"""Command line: each command parses its arguments and calls the API verb of the same name (api/); defaults
are the verb's own (`default`), and what a command prints is what the verb returned."""

import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from deepshrink import api, cli_search
from deepshrink.cli_options import (
    AllowEmpty,
    ChoiceMargin,
    DataDir,
    Device,
    ModelArg,
    Quiet,
    Seed,
    check_device,
    console,
    default,
    model_args,
)
from deepshrink.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compress neural networks for embedded deployment and measure what each compression buys.")
data_app = typer.Typer(no_args_is_help=True, help="Find, verify and download datasets.")
app.add_typer(data_app, name="data")

app.command("search")(cli_search.search)
app.command("sensitivity")(cli_search.sensitivity)


@app.command()
def train(
    dataset: Annotated[str, typer.Option("--dataset", help="mnist, cifar10, idx:PATH, folder:PATH or npz:PATH.")],
    model: Annotated[str, typer.Option("--model", help="lenet-300-100, lenet-5, lenet-5-caffe, mlp-50, or your "
                                       "own: PATH.py:CALLABLE or package.module:CALLABLE.")],
    model_arg: ModelArg = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Override the tuned default.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Run directory (default runs/train-DATASET-MODEL).")] = None,
    choice_margin: ChoiceMargin = default(api.train, "choice_margin"),
    data_dir: DataDir = None, device: Device = "auto", seed: Seed = 0, quiet: Quiet = False,
    allow_empty_classes: AllowEmpty = False,
) -> None:
    """Train one baseline, export it, measure it, and write results.csv / latency.csv / layers.csv."""
    r = api.train(model, dataset, epochs=epochs, out=out, seed=seed, device=check_device(device), quiet=quiet,
                  model_args=model_args(model_arg), data_dir=data_dir, allow_empty_classes=allow_empty_classes,
                  choice_margin=choice_margin)
    console().print(f"{r.row['variant']}: test accuracy {r.row['accuracy_pct']:.2f}% ({r.row['runtime']}), "
                    f"{r.row['size_bytes']} bytes -> {r.out}")


@app.command()
def compress(
    checkpoint: Annotated[Path | None, typer.Argument(help="A .safetensors checkpoint (its .json manifest beside it), "
                                                      "or an FP32 .onnx or float .tflite classifier (with "
                                                      "--dataset).")] = None,
    step: Annotated[list[str] | None, typer.Option("--step", help="NAME:key=value,... ; repeat to chain "
                                                   "steps.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Your trained model's architecture: PATH.py:CALLABLE "
                                              "or package.module:CALLABLE (with --weights and --dataset).")] = None,
    model_arg: ModelArg = None,
    weights: Annotated[Path | None, typer.Option("--weights", help="A state dict: .safetensors, or .pt/.pth (read "
                                                 "with torch.load(weights_only=True) only).")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="Data to measure on (with --model, an "
                                                ".onnx or a .tflite; default a checkpoint's own).")] = None,
    normalize: Annotated[str | None, typer.Option("--normalize", help="The model's preprocessing: mean=M,std=S (per "
                                                  "channel M1+M2+M3), none for pixels/255, raw for 0-255 "
                                                  "pixel values; default the data's own statistics (a .tflite: "
                                                  "its metadata's, else required).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Run directory (default runs/compress-BASELINE).")] = None,
    choice_margin: ChoiceMargin = default(api.compress, "choice_margin"),
    data_dir: DataDir = None, device: Device = "auto", seed: Seed = 0, quiet: Quiet = False,
) -> None:
    """Apply a chain of compression steps to a trained model and measure it beside the original."""
    if model is not None and checkpoint is not None:
        raise UserError(f"{checkpoint}: give either a checkpoint/.onnx/.tflite file or --model with --weights, not "
                        "both")
    if model is None and checkpoint is None:
        raise UserError("compress: give a checkpoint, an .onnx or .tflite file, or --model with --weights")
    if model is not None and weights is None:
        raise UserError(f"--model {model}: pass --weights FILE (.safetensors, .pt or .pth state dict)")
    if model is None and weights is not None:
        raise UserError(f"--weights {weights}: needs --model (the architecture the weights fit)")
    base: str | Path = model if model is not None else checkpoint  # type: ignore[assignment]
    r = api.compress(base, step or [], dataset, out=out, seed=seed, device=check_device(device), quiet=quiet,
                     normalize=normalize, weights=weights, model_args=model_args(model_arg), data_dir=data_dir,
                     choice_margin=choice_margin)
    for m in (r.control, r) if r.control else (r,):
        console().print(f"{m.row['variant']}: accuracy {m.row['accuracy_pct']:.2f}% (baseline "
                        f"{float(m.row['baseline_accuracy_pct']):.2f}%), {m.row['size_bytes']} bytes -> "
                        f"{m.out / m.row['artifact']}")


@app.command("load-model")
def load_model(
    ref: Annotated[str, typer.Argument(help="PATH.py:CALLABLE, package.module:CALLABLE, torchvision.models:NAME "
                                       "or timm:NAME.")],
    weights: Annotated[Path | None, typer.Option("--weights", help="Its trained state dict (.safetensors, .pt, "
                                                 ".pth).")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="The data it is for (its input shape and "
                                                "classes).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Save it as a deepshrink checkpoint here "
                                             "(model.safetensors + model.json; needs --dataset).")] = None,
    model_arg: ModelArg = None, data_dir: DataDir = None,
) -> None:
    """Build your model, load its weights, and (with --out) save it as a checkpoint compress and search take."""
    m = api.load_model(ref, weights, dataset, out, data_dir, **model_args(model_arg))
    n = sum(p.numel() for p in m.parameters())
    saved = f" -> {out / 'model.safetensors'}" if out else ""
    console().print(f"{ref}: {type(m).__name__}, {n} parameters{' (weights loaded)' if weights else ''}{saved}")


@app.command()
def show(path: Annotated[Path, typer.Argument(help="A run directory holding results.csv, or a .dsz file.")]) -> None:
    """Print a run's results table, or what a .dsz file stores, tensor by tensor."""
    rows = api.show(path)
    if path.suffix == ".dsz":
        _show_dsz(path, rows)
        return
    cols = [("variant", "variant"), ("pipeline", "pipeline"), ("precision", "prec"), ("sparsity", "sparsity"),
            ("params_nonzero", "params≠0"), ("size_kb", "kB"), ("accuracy_pct", "acc %"),
            ("baseline_accuracy_pct", "base %"), ("energy_nj_est", "nJ/img"), ("status", "status")]
    _table(str(path / "results.csv"), cols, rows)
    if any(r.get("mcu_flash_bytes") for r in rows):
        _table("On the microcontroller (instructions exact; cycles, ms and µJ estimated: zero wait states, energy per "
               "cycle as mcu_energy_source says)", MCU_COLUMNS,
               [r for r in rows if r.get("mcu_flash_bytes")])


# The microcontroller columns (SPEC §12), for rows measured through `deepshrink mcu` or a study's [measure] mcu.
MCU_COLUMNS = [("variant", "variant"), ("mcu_target", "target"), ("mcu_flash_bytes", "flash B"),
               ("mcu_ram_bytes", "RAM B"), ("mcu_instructions", "instructions"),
               ("mcu_instructions_per_mac", "instr/MAC"), ("mcu_cycles_est", "cycles (est)"),
               ("mcu_ms_est", "ms (est)"), ("mcu_energy_uj_est", "µJ (est)"), ("accuracy_pct", "acc %"),
               ("mcu_match_ort_pct", "= ORT %"), ("mcu_tflm_identical_pct", "= TFLM %"),
               ("mcu_emulated_identical", "emulated = host")]


def _table(title: str, cols: list[tuple[str, str]], rows: list[dict[str, Any]]) -> None:
    table = Table(title=title)
    for _, heading in cols:
        table.add_column(heading, overflow="fold")
    for r in rows:
        table.add_row(*[_fmt_cell(str(r.get(k, ""))) for k, _ in cols])
    console().print(table)


# What a .dsz stores per tensor (export/formats/dsz.py `describe`).
DSZ_COLUMNS = [("tensor", "tensor"), ("shape", "shape"), ("kind", "kind"), ("nonzero", "non-zero"),
               ("codebook", "codebook"), ("gap_bits", "gap bits"), ("position_bytes", "position B"),
               ("value_bytes", "value B"), ("index_bytes", "of which index B"), ("codebook_bytes", "codebook B")]


def _show_dsz(path: Path, rows: list[dict[str, Any]]) -> None:
    _table(str(path), DSZ_COLUMNS, rows)
    streams = sum(r["position_bytes"] + r["value_bytes"] for r in rows)
    size = path.stat().st_size
    console().print(f"{size} bytes: {streams} in streams, {size - streams} header, magic and checksum")


def _fmt_cell(v: str) -> str:
    try:
        f = float(v)
    except ValueError:
        return v
    return str(int(f)) if f.is_integer() and abs(f) > 1 else f"{f:.3f}".rstrip("0").rstrip(".")


@app.command()
def bench(
    artifact: Annotated[Path, typer.Argument(help="A file deepshrink wrote (.onnx, .dsonnx, .dsparse, .dsq, .dsz, "
                                             ".safetensors) or any ONNX classifier (then give --dataset).")],
    dataset: Annotated[str | None, typer.Option("--dataset", help="Test set to time on (default: the "
                                                "manifest beside the file).")] = None,
    runtime: Annotated[str, typer.Option(
        "--runtime", help="torch, onnxruntime, openvino (when installed) or sparse (.dsparse files).")
    ] = default(api.bench, "runtime"),
    threads: Annotated[int, typer.Option("--threads", help="0 = all cores.")] = default(api.bench, "threads"),
    batch: Annotated[int, typer.Option("--batch", help="Batch size for the batched timing.")] = default(api.bench,
                                                                                                        "batch"),
    normalize: Annotated[str | None, typer.Option("--normalize", help="The model's preprocessing (mean=M,std=S or "
                                                  "none); default its manifest's, else the data's.")] = None,
    data_dir: DataDir = None, device: Device = default(api.bench, "device"), quiet: Quiet = False,
) -> None:
    """Time one artifact on its dataset's test set (batched and batch-1)."""
    rows = api.bench(artifact, dataset, runtime, threads, batch, check_device(device), quiet, data_dir, normalize)
    table = Table(title=str(artifact))
    for c in ("runtime", "device", "threads", "batch", "us/img median", "min", "max"):
        table.add_column(c)
    for r in rows:
        table.add_row(str(r["runtime"]), str(r["device"]), str(r["threads"]), str(r["batch"]),
                      f"{r['us_per_image_median']:.2f}", f"{r['us_per_image_min']:.2f}",
                      f"{r['us_per_image_max']:.2f}")
    console().print(table)


@app.command()
def mcu(
    artifact: Annotated[Path, typer.Argument(help="An INT8 model deepshrink shipped (model.onnx or model.dsonnx "
                                             "of quantize:precision=int8), a compressed file (.dsparse, .dsq, "
                                             ".dsz), any INT8 QDQ ONNX classifier, or a full-integer .tflite "
                                             "model (run with TensorFlow Lite's arithmetic).")],
    target: Annotated[str, typer.Option("--target", help="cortex-m0plus, cortex-m3, cortex-m33, cortex-m4, "
                                        "cortex-m7, or host (C and host build only).")] = default(api.mcu, "target"),
    dataset: Annotated[str | None, typer.Option("--dataset", help="Test set to measure on (default: the "
                                                "manifest beside the file).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Where model.h, model.c, firmware.elf and the "
                                             "result rows go (default runs/mcu-VARIANT).")] = None,
    images: Annotated[int, typer.Option("--images", help="Test images run in the emulator, compared bit for "
                                        "bit with the host build.")] = default(api.mcu, "images"),
    clock_mhz: Annotated[float, typer.Option("--clock-mhz", help="Clock for the estimated "
                                             "milliseconds.")] = default(api.mcu, "clock_mhz"),
    no_time: Annotated[bool, typer.Option("--no-time", help="Skip timing the host build (`c` runtime).")] = False,
    prefix: Annotated[str, typer.Option("--prefix", help="Prefix of every exported C symbol and macro (NAME_infer, "
                                        "NAME_ARENA_BYTES): models with different prefixes link into one "
                                        "image.")] = default(api.mcu, "prefix"),
    arith: Annotated[str, typer.Option("--arith", help="Requantization: float (ONNX Runtime's, bit-exact with it) "
                                       "or fixed (TensorFlow Lite's integer-only multipliers: no FPU needed). "
                                       "Default: fixed on cores without an FPU (cortex-m0plus, cortex-m3), and "
                                       "always for a .tflite.")] = default(api.mcu, "arith"),
    energy_nj_per_cycle: Annotated[float, typer.Option("--energy-nj-per-cycle", help="Energy per cycle for the "
                                                       "energy estimate (default: NUCLEO-L4R5ZI at 120 MHz, MLPerf "
                                                       "Tiny's measured power).")] = default(api.mcu,
                                                                                        "energy_nj_per_cycle"),
    optimize: Annotated[str, typer.Option("--optimize", help="speed: convolution kernels specialized per layer "
                                          "shape (fastest); size: one generic kernel (smallest flash; ~10 % "
                                          "more cycles on MLPerf Tiny's ResNet-8).")] = default(api.mcu, "optimize"),
    data_dir: DataDir = None, quiet: Quiet = False,
) -> None:
    """Turn an INT8 artifact or a full-integer .tflite model into C99 for a microcontroller (model.h +
    model.c), build it for this host and the target, run it in an emulator, and measure flash, RAM,
    instructions, estimated cycles and energy, and accuracy."""
    built = api.mcu(artifact, target, out, dataset, data_dir, images, clock_mhz, not no_time, prefix, quiet, arith,
                    energy_nj_per_cycle, optimize)
    row, c = built.row, console()
    acc = f" {row['accuracy_pct']:.2f}%" if row.get("accuracy_pct") is not None else ""
    if "mcu_tflm_identical_pct" in row:
        c.print(f"{row['variant']}: C on this host{acc}; outputs identical to TensorFlow Lite Micro's on "
                f"{row['mcu_tflm_identical_pct']:.2f}% of {row['mcu_tflm_compared']} inputs ({row['mcu_inputs']}) "
                f"-> {built.model_c}")
    else:
        c.print(f"{row['variant']}: C on this host{acc} "
                f"(ONNX Runtime {row['mcu_ort_accuracy_pct']:.2f}%, same class on {row['mcu_match_ort_pct']:.2f}% "
                f"of the test set) -> {built.model_c}")
    if "mcu_flash_bytes" in row:
        c.print(f"{target}: flash {row['mcu_flash_bytes']} B, RAM {row['mcu_ram_bytes']} B, "
                f"{row['mcu_instructions']} instructions ({row['mcu_instructions_per_mac']:.2f} per MAC), "
                f"~{row['mcu_cycles_per_mac']:.2f} cycles per MAC, ~{row['mcu_ms_est']:.2f} ms at "
                f"{row['mcu_clock_mhz']:g} MHz, ~{row['mcu_energy_uj_est']:.1f} µJ per inference "
                f"({row['mcu_energy_source']}); {row['mcu_emulated_identical']}/{row['mcu_emulated_images']} "
                "emulated inputs identical to the host build")
    if row.get("notes"):
        c.print(f"notes: {row['notes']}")


@app.command()
def study(
    recipe: Annotated[str, typer.Argument(help="Built-in name (`deepshrink recipes`) or a .toml path.")] = "quick",
    out: Annotated[Path | None, typer.Option("--out", help="Run directory (default runs/RECIPE).")] = None,
    jobs: Annotated[int | None, typer.Option("--jobs", help="Parallel processes (default: the recipe's).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="SECTION.KEY=VALUE override; repeatable.")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Ignore cached steps and earlier results.")] = False,
    seed: Annotated[int | None, typer.Option("--seed", help="Same as --set study.seeds=N.")] = None,
    choice_margin: Annotated[float | None, typer.Option(
        "--choice-margin", help="Same as --set measure.choice_margin=F (the least lead a faster runtime or INT8 "
                                "mode needs to replace the default; default the recipe's).")] = None,
    executor: Annotated[str, typer.Option("--executor", help="local (this machine) or ray (a Ray "
                                          "cluster).")] = default(api.study, "executor"),
    address: Annotated[str | None, typer.Option("--address", help="Ray cluster address (else $RAY_ADDRESS, "
                                                "else a local Ray).")] = None,
    data_dir: DataDir = None, device: Device = "auto", quiet: Quiet = False,
    allow_empty_classes: AllowEmpty = False,
) -> None:
    """Run a whole study from a recipe (resumes by default), then write report.md / report.html."""
    overrides = (*(set_ or ()), *([f"study.seeds={seed}"] if seed is not None else []),
                 *([f"measure.choice_margin={choice_margin}"] if choice_margin is not None else []))
    run_dir, statuses = api.study(recipe, out, jobs, overrides, fresh, data_dir, check_device(device), quiet,
                                  executor, address, allow_empty_classes)
    failed = {v: s for v, s in statuses.items() if s != "ok"}
    for vid, status in failed.items():
        console().print(f"{vid}: {status}")
    console().print(f"{len(statuses) - len(failed)} ok, {len(failed)} failed -> {run_dir / 'report.html'}")


@app.command()
def recipes() -> None:
    """List the built-in recipes with a one-line description and expected run time."""
    table = Table()
    for c in ("recipe", "description", "expected"):
        table.add_column(c)
    for name, desc, minutes in api.recipes():
        table.add_row(name, desc, f"~{minutes:g} min on 2 CPU cores" if minutes else "")
    console().print(table)


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A study's run directory.")]) -> None:
    """Re-render report.md, report.html and figures/ from a run's result files alone (no training)."""
    md, html = api.report(run_dir)
    console().print(f"{md}\n{html}")


@data_app.command("where")
def data_where(data_dir: DataDir = None) -> None:
    """Print where datasets are looked up, in order, and what is found there."""
    roots, found = api.data_where(data_dir)
    for origin, root in roots:
        console().print(f"{origin}: {root}{'' if root.exists() else ' (missing)'}")
    for name, where in found.items():
        console().print(f"{name}: {where or 'not found'}")


@data_app.command("verify")
def data_verify(name: Annotated[str | None, typer.Argument(help="mnist, cifar10 or idx:PATH.")] = None,
                data_dir: DataDir = None) -> None:
    """Check each dataset file: structure, sample and class counts, canonical checksum or not."""
    shown = Console(soft_wrap=True)
    bad: list[str] = []
    for r in api.data_verify(name, data_dir):
        if r.structure != "ok":
            bad.append(r.file)
            shown.print(f"{r.file}: [red]problem[/]: {r.structure}")
            continue
        warn = "" if r.checksum == "canonical" else "  [yellow](warning)[/]"
        shown.print(f"{r.file}: structure {r.structure}, {r.samples} samples"
                    f"{', classes ' + ' '.join(map(str, r.class_counts)) if r.class_counts else ''}, "
                    f"{r.checksum}{warn}")
    if bad:
        raise UserError(f"{len(bad)} dataset file(s) with problems (listed above), first {bad[0]}")


@data_app.command("download")
def data_download(name: Annotated[str | None, typer.Argument(help="mnist or cifar10.")] = None) -> None:
    """Download datasets into the user cache, checked against published hashes."""
    for ds, folder in api.data_download(name).items():
        console().print(f"{ds}: {folder}")


def main() -> None:
    """Entry point: user errors exit 2 with one line, internal errors exit 1 (traceback with --debug)."""
    debug = "--debug" in sys.argv or bool(os.environ.get("DEEPSHRINK_DEBUG"))
    if "--debug" in sys.argv:
        sys.argv.remove("--debug")
    try:
        app()  # standalone: usage errors (bad flags) exit 2 with click's message
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        if debug:
            traceback.print_exc()
        else:
            first = str(e).splitlines()[0] if str(e) else ""
            print(f"internal error: {type(e).__name__}: {first} (rerun with --debug for the traceback)",
                  file=sys.stderr)
        sys.exit(1)

