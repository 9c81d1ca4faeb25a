"""Command line: parses arguments and calls into study/measure/data. No logic of its own."""

import os
import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from deepshrink import cli_search
from deepshrink.cli_options import AllowEmpty, DataDir, Device, Quiet, Seed, check_device, console
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
    model_arg: Annotated[list[str] | None, typer.Option("--model-arg", help="KEY=VALUE passed to your model's "
                                                        "callable; repeatable.")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Override the tuned default.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Run directory (default runs/train-DATASET-MODEL).")] = None,
    data_dir: DataDir = None, device: Device = "auto", seed: Seed = 0, quiet: Quiet = False,
    allow_empty_classes: AllowEmpty = False,
) -> None:
    """Train one baseline, export it, measure it, and write results.csv / latency.csv / layers.csv."""
    from deepshrink.config import default_train, parse_kwargs
    from deepshrink.study.run import run_train
    from deepshrink.variant import slug

    cfg = default_train(dataset, model, epochs=epochs, seed=seed)
    out = out or Path("runs") / slug(f"train-{dataset}-{model}")
    row = run_train(dataset, model, cfg, out, data_dir, check_device(device), quiet=quiet,
                    model_args=parse_kwargs(model_arg or [], "--model-arg"), allow_empty_classes=allow_empty_classes)
    console().print(f"{row['variant']}: test accuracy {row['accuracy_pct']:.2f}% ({row['runtime']}), "
                    f"{row['size_bytes']} bytes -> {out}")


@app.command()
def compress(
    checkpoint: Annotated[Path | None, typer.Argument(help="A .safetensors checkpoint (its .json manifest beside it), "
                                                      "or an FP32 .onnx classifier (with --dataset).")] = None,
    step: Annotated[list[str] | None, typer.Option("--step", help="NAME:key=value,... ; repeat to chain "
                                                   "steps.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Your trained model's architecture: PATH.py:CALLABLE "
                                              "or package.module:CALLABLE (with --weights and --dataset).")] = None,
    model_arg: Annotated[list[str] | None, typer.Option("--model-arg", help="KEY=VALUE for --model; "
                                                        "repeatable.")] = None,
    weights: Annotated[Path | None, typer.Option("--weights", help="A state dict: .safetensors, or .pt/.pth (read "
                                                 "with torch.load(weights_only=True) only).")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="Data to measure on (with --model or an "
                                                ".onnx).")] = None,
    normalize: Annotated[str | None, typer.Option("--normalize", help="The model's preprocessing: mean=M,std=S (per "
                                                  "channel M1+M2+M3), or none for pixels/255; default the data's "
                                                  "own statistics.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Run directory (default runs/compress).")] = None,
    data_dir: DataDir = None, device: Device = "auto", seed: Seed = 0, quiet: Quiet = False,
) -> None:
    """Apply a chain of compression steps to a trained model and measure it beside the original."""
    from deepshrink.config import parse_kwargs
    from deepshrink.study.run import run_compress
    from deepshrink.study.trained import Source

    if not step:
        raise UserError("compress: give at least one --step NAME:key=value")
    src = Source(path=checkpoint, model=model, model_args=parse_kwargs(model_arg or [], "--model-arg"),
                 weights=weights, dataset=dataset, normalize=normalize)
    out = out or Path("runs") / "compress"
    row = run_compress(src, step, out, data_dir, check_device(device), quiet=quiet, seed=seed)
    for r in (row["control"], row) if "control" in row else (row,):
        console().print(f"{r['variant']}: accuracy {r['accuracy_pct']:.2f}% (baseline "
                        f"{float(r['baseline_accuracy_pct']):.2f}%), {r['size_bytes']} bytes -> {out}")


@app.command()
def show(run_dir: Annotated[Path, typer.Argument(help="A run directory holding results.csv, or a .dsz file.")]) -> None:
    """Print a run's results table, or what a .dsz file stores, tensor by tensor."""
    from deepshrink.results import read_rows

    if run_dir.suffix == ".dsz":
        _show_dsz(run_dir)
        return
    path = run_dir / "results.csv"
    if not path.exists():
        raise UserError(f"{path}: no results.csv in this run directory")
    cols = [("variant", "variant"), ("pipeline", "pipeline"), ("precision", "prec"), ("sparsity", "sparsity"),
            ("params_nonzero", "params≠0"), ("size_kb", "kB"), ("accuracy_pct", "acc %"),
            ("baseline_accuracy_pct", "base %"), ("energy_nj_est", "nJ/img"), ("status", "status")]
    rows = read_rows(path)
    table = Table(title=str(path))
    for _, title in cols:
        table.add_column(title, overflow="fold")
    for r in rows:
        table.add_row(*[_fmt_cell(r.get(k, "")) for k, _ in cols])
    console().print(table)
    if any(r.get("mcu_flash_bytes") for r in rows):
        _show_mcu([r for r in rows if r.get("mcu_flash_bytes")])


# The microcontroller columns (SPEC §12), for rows measured through `deepshrink mcu` or a study's [measure] mcu.
MCU_COLUMNS = [("variant", "variant"), ("mcu_target", "target"), ("mcu_flash_bytes", "flash B"),
               ("mcu_ram_bytes", "RAM B"), ("mcu_instructions", "instructions"),
               ("mcu_instructions_per_mac", "instr/MAC"), ("mcu_cycles_est", "cycles (est)"),
               ("mcu_ms_est", "ms (est)"), ("accuracy_pct", "acc %"), ("mcu_match_ort_pct", "= ORT %"),
               ("mcu_emulated_identical", "emulated = host")]


def _show_mcu(rows: list[dict[str, str]]) -> None:
    table = Table(title="On the microcontroller (instructions exact; cycles and ms estimated, zero wait states)")
    for _, title in MCU_COLUMNS:
        table.add_column(title, overflow="fold")
    for r in rows:
        table.add_row(*[_fmt_cell(r.get(k, "")) for k, _ in MCU_COLUMNS])
    console().print(table)


def _show_dsz(path: Path) -> None:
    from deepshrink.export.dsz import describe

    if not path.is_file():
        raise UserError(f"{path}: no such file")
    data = path.read_bytes()
    rows = describe(data, str(path))
    table = Table(title=str(path))
    for title in ("tensor", "shape", "kind", "non-zero", "codebook", "gap bits", "position B", "value B",
                  "of which index B", "codebook B"):
        table.add_column(title)
    for r in rows:
        table.add_row(*[str(v) for v in r.values()])
    streams = sum(r["position_bytes"] + r["value_bytes"] for r in rows)
    console().print(table)
    console().print(f"{len(data)} bytes: {streams} in streams, {len(data) - streams} header, magic and checksum")


def _fmt_cell(v: str) -> str:
    try:
        f = float(v)
    except ValueError:
        return v
    return str(int(f)) if f.is_integer() and abs(f) > 1 else f"{f:.3f}".rstrip("0").rstrip(".")


@app.command()
def bench(
    artifact: Annotated[Path, typer.Argument(help="A file deepshrink wrote (.onnx, .dsonnx, .dsparse, .safetensors) "
                                             "or any ONNX classifier (then give --dataset).")],
    dataset: Annotated[str | None, typer.Option("--dataset", help="Test set to time on (default: the "
                                                "manifest beside the file).")] = None,
    runtime: Annotated[str, typer.Option(
        "--runtime", help="torch, onnxruntime, openvino (when installed) or sparse (.dsparse files).")] = "onnxruntime",
    threads: Annotated[int, typer.Option("--threads", help="0 = all cores.")] = 1,
    batch: Annotated[int, typer.Option("--batch", help="Batch size for the batched timing.")] = 256,
    normalize: Annotated[str | None, typer.Option("--normalize", help="The model's preprocessing (mean=M,std=S or "
                                                  "none); default its manifest's, else the data's.")] = None,
    data_dir: DataDir = None, device: Device = "cpu", seed: Seed = 0, quiet: Quiet = False,
) -> None:
    """Time one artifact on its dataset's test set (batched and batch-1)."""
    from deepshrink.bench import bench_artifact

    rows = bench_artifact(artifact, runtime, threads, batch, data_dir, check_device(device), quiet, dataset,
                          normalize)
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
                                             "of quantize:precision=int8), or any INT8 QDQ ONNX classifier.")],
    target: Annotated[str, typer.Option("--target", help="cortex-m4, cortex-m7, or host (C and host build "
                                        "only).")] = "cortex-m4",
    dataset: Annotated[str | None, typer.Option("--dataset", help="Test set to measure on (default: the "
                                                "manifest beside the file).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Where model.h, model.c, firmware.elf and the "
                                             "result rows go (default runs/mcu-VARIANT).")] = None,
    images: Annotated[int, typer.Option("--images", help="Test images run in the emulator, compared bit for "
                                        "bit with the host build.")] = 100,
    clock_mhz: Annotated[float, typer.Option("--clock-mhz", help="Clock for the estimated milliseconds.")] = 80.0,
    no_time: Annotated[bool, typer.Option("--no-time", help="Skip timing the host build (`c` runtime).")] = False,
    prefix: Annotated[str, typer.Option("--prefix", help="Prefix of every exported C symbol and macro (NAME_infer, "
                                        "NAME_ARENA_BYTES): models with different prefixes link into one "
                                        "image.")] = "ds",
    data_dir: DataDir = None, quiet: Quiet = False,
) -> None:
    """Turn an INT8 artifact into C99 for a microcontroller (model.h + model.c), build it for this host and
    the target, run it in an emulator, and measure flash, RAM, instructions and accuracy."""
    from deepshrink.mcu import McuOptions, build_mcu
    from deepshrink.mcu.run import HOST_TIMING
    from deepshrink.progress import Progress
    from deepshrink.variant import slug

    opts = McuOptions(target=target, images=images, clock_mhz=clock_mhz,
                      latency=None if no_time else HOST_TIMING, prefix=prefix)
    out = out or Path("runs") / slug(f"mcu-{artifact.parent.name or artifact.stem}")
    with Progress(enabled=not quiet) as progress:
        row = build_mcu(artifact, out, dataset, data_dir, opts, progress)
    c = console()
    c.print(f"{row['variant']}: C on this host {row['accuracy_pct']:.2f}% "
                  f"(ONNX Runtime {row['mcu_ort_accuracy_pct']:.2f}%, same class on {row['mcu_match_ort_pct']:.2f}% "
                  f"of the test set) -> {out / 'model.c'}")
    if "mcu_flash_bytes" in row:
        c.print(f"{target}: flash {row['mcu_flash_bytes']} B, RAM {row['mcu_ram_bytes']} B, "
                      f"{row['mcu_instructions']} instructions ({row['mcu_instructions_per_mac']:.2f} per MAC), "
                      f"~{row['mcu_ms_est']:.2f} ms at {row['mcu_clock_mhz']:g} MHz (estimate); "
                      f"{row['mcu_emulated_identical']}/{row['mcu_emulated_images']} emulated images identical "
                      "to the host build")
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
    executor: Annotated[str, typer.Option("--executor", help="local (this machine) or ray (a Ray cluster).")] = "local",
    address: Annotated[str | None, typer.Option("--address", help="Ray cluster address (else $RAY_ADDRESS, "
                                                "else a local Ray).")] = None,
    data_dir: DataDir = None, device: Device = "auto", quiet: Quiet = False,
    allow_empty_classes: AllowEmpty = False,
) -> None:
    """Run a whole study from a recipe (resumes by default), then write report.md / report.html."""
    from deepshrink import api

    overrides = (*(set_ or ()), *([f"study.seeds={seed}"] if seed is not None else []))
    run_dir, statuses = api.study(recipe, out, jobs, overrides, fresh, data_dir, check_device(device), quiet,
                                  executor, address, allow_empty_classes)
    failed = {v: s for v, s in statuses.items() if s != "ok"}
    for vid, status in failed.items():
        console().print(f"{vid}: {status}")
    console().print(f"{len(statuses) - len(failed)} ok, {len(failed)} failed -> {run_dir / 'report.html'}")


@app.command()
def recipes() -> None:
    """List the built-in recipes with a one-line description and expected run time."""
    from deepshrink.study.recipe import builtin_names, describe

    table = Table()
    for c in ("recipe", "description", "expected"):
        table.add_column(c)
    for name in builtin_names():
        n, desc, minutes = describe(name)
        table.add_row(n, desc, f"~{minutes:g} min on 2 CPU cores" if minutes else "")
    console().print(table)


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A study's run directory.")]) -> None:
    """Re-render report.md, report.html and figures/ from a run's result files alone (no training)."""
    from deepshrink.report import render_report

    md, html = render_report(run_dir)
    console().print(f"{md}\n{html}")


@data_app.command("where")
def data_where(data_dir: DataDir = None) -> None:
    """Print where datasets are looked up, in order, and what is found there."""
    from deepshrink.data.sources import SOURCES, locate, search_roots

    for origin, root in search_roots(data_dir):
        console().print(f"{origin}: {root}{'' if root.exists() else ' (missing)'}")
    for name, source in SOURCES.items():
        found = locate(source, data_dir)
        console().print(f"{name}: {found[0] if found else 'not found'}")


@data_app.command("verify")
def data_verify(name: Annotated[str | None, typer.Argument(help="mnist, cifar10 or idx:PATH.")] = None,
                data_dir: DataDir = None) -> None:
    """Check each dataset file: structure, sample and class counts, canonical checksum or not."""
    from deepshrink.data.sources import SOURCES
    from deepshrink.data.verify import verify

    shown = Console(soft_wrap=True)
    bad: list[str] = []
    for ds in [name] if name else sorted(SOURCES):
        for r in verify(ds, data_dir):
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
    from deepshrink.data.sources import SOURCES, download

    for ds in [name] if name else sorted(SOURCES):
        if ds not in SOURCES:
            raise UserError(f"unknown dataset {ds!r} (known: {', '.join(sorted(SOURCES))})")
        console().print(f"{ds}: {download(SOURCES[ds])}")


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
