"""deepshrink's microcontroller C beside TensorFlow Lite Micro, both measured: the same model, built for the same
Cortex-M core, run in the same emulator (SPEC §12.1).

    PYTHONPATH=src .venv/bin/python benchmarks/bench_mcu.py ../shared/mlperf-tiny/kws_ref_model.tflite \\
        ../shared/mlperf-tiny/pretrainedResnet_quant.tflite --targets cortex-m4,cortex-m0plus --out runs/bench-mcu

Each MODEL is a full-integer .tflite or an FP32 checkpoint (.safetensors). Per model and core:

- TFLM: ../shared/tflm (TFLM + CMSIS-NN at a pinned commit) built once per core into OUT/tflm-cache/<core>/
  libtflm.a (tflm_build.py), an app registering only the model's operators linked against it, its arena sized to
  what AllocateTensors uses, run in deepshrink's emulator as that core (tflm_run.py): flash, RAM (data + bss +
  the stack's high-water mark), arena, instructions and estimated cycles of Invoke(), the int8 outputs.
  Checked on a few inputs against the tflite_micro Python interpreter (TFLM's reference kernels on this host).
- deepshrink: `deepshrink.api.mcu` on the same .tflite for the same core, its firmware.elf run on the same inputs
  (`ds_side`); identical_pct is the share of inputs whose whole output vector equals TFLM's.
- A checkpoint: INT8 PTQ and `deepshrink mcu` as `deepshrink compress` does it (ours), and TensorFlow's converter
  on the same FP32 weights in a TensorFlow environment this bench creates (tflm_side.py) for TFLM's .tflite, then
  measured as above. The two are different quantizations of one network, so identical_pct stays empty there.

Inputs: the CIFAR-10 test images for the ResNet-8 (raw pixels quantized with the input tensor's scale and zero
point), seeded random int8 near the input zero point otherwise. Writes summary.csv (one row per model and core),
summary.md (with ds/TFLM ratios) and details.csv (every measured fact).
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import time
import venv
from pathlib import Path
from typing import Any

import numpy as np

from deepshrink.mcu.run_tflite import tflm_outputs

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tflm_build
import tflm_run

HERE = Path(__file__).resolve().parent
SUMMARY_COLUMNS = ("model", "target", "ds_flash_bytes", "tflm_flash_bytes", "ds_ram_bytes", "tflm_ram_bytes",
                   "ds_instructions", "tflm_instructions", "ds_cycles_est", "tflm_cycles_est", "identical_pct")
RATIOS = (("flash", "ds_flash_bytes", "tflm_flash_bytes"), ("RAM", "ds_ram_bytes", "tflm_ram_bytes"),
          ("instructions", "ds_instructions", "tflm_instructions"), ("cycles", "ds_cycles_est", "tflm_cycles_est"))
TF_PACKAGES = ["tensorflow-cpu", "tflite-micro", "onnx"]


# ---- inputs -------------------------------------------------------------------------------------------------

def cifar10_pixels(n: int, data_dir: Path | None) -> np.ndarray:
    """The first n CIFAR-10 test images as uint8 N x H x W x C (the order deepshrink's loader gives)."""
    from deepshrink.data import load_arrays

    arrays, _ = load_arrays("cifar10", data_dir, allow_download=False)
    return np.ascontiguousarray(arrays["test_x"][:n].transpose(0, 2, 3, 1))


def quantize_pixels(pixels: np.ndarray, t: tflm_run.TensorInfo) -> np.ndarray:
    """Raw 0-255 pixels as the input tensor takes them: q = round(p / scale) + zero point, clamped to int8."""
    q = np.round(pixels.astype(np.float64) / t.scale) + t.zero_point
    return np.clip(q, -128, 127).astype(np.int8).reshape(len(pixels), -1)


def tflm_accuracy(tflite: Path, info: tflm_run.ModelInfo, n: int | None, data_dir: Path | None) -> dict[str, Any]:
    """TFLM's accuracy on the first n CIFAR-10 test images (all by default), by its Python interpreter (the reference
    kernels, which the emulated image equals on the `--reference` inputs): the anchor a study's report plots."""
    from deepshrink.data import load_arrays

    arrays, _ = load_arrays("cifar10", data_dir, allow_download=False)
    x = quantize_pixels(np.ascontiguousarray(arrays["test_x"][:n].transpose(0, 2, 3, 1)), info.input)
    t0 = time.time()
    pred = tflm_outputs(tflite, x).argmax(1)
    return {"tflm_accuracy_pct": round(100.0 * float(np.mean(pred == np.asarray(arrays["test_y"][:n]))), 2),
            "tflm_accuracy_images": len(x), "tflm_accuracy_seconds": round(time.time() - t0, 1)}


def random_inputs(n: int, t: tflm_run.TensorInfo, seed: int = 0) -> np.ndarray:
    """Seeded int8 inputs near the zero point (a real input's spread: +-48 codes, clamped)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(t.zero_point, 48.0, size=(n, t.size)).round()
    return np.clip(x, -128, 127).astype(np.int8)


def model_inputs(tflite: Path, info: tflm_run.ModelInfo, n: int, data_dir: Path | None) -> tuple[np.ndarray, str]:
    if tuple(info.input.shape[1:]) == (32, 32, 3):  # the CIFAR-10 classifier
        try:
            return quantize_pixels(cifar10_pixels(n, data_dir), info.input), "CIFAR-10 test images"
        except Exception as e:  # no data here: random inputs, said in the notes
            print(f"{tflite.name}: CIFAR-10 not loaded ({e}); random inputs", flush=True)
    return random_inputs(n, info.input), "random int8 (seed 0)"


# ---- deepshrink's side --------------------------------------------------------------------------------------

def ds_measure(elf: Path, core: str, inputs: np.ndarray, out_size: int, counted: int = 2) -> dict[str, Any]:
    """A deepshrink firmware.elf (entry ds_infer(const int8_t *input, int8_t *output)) on `inputs` in the
    emulator as `core`: flash, RAM (static + stack high-water mark), mean instructions and cycles over the first
    `counted` inputs, and the int8 outputs."""
    from deepshrink.mcu.emulate import Firmware
    from deepshrink.mcu.toolchain import image_sizes

    flash, static_ram = image_sizes(elf)
    fw = Firmware.load(elf, "ds", core)
    outs = np.zeros((len(inputs), out_size), np.int8)
    counts = []
    for i, x in enumerate(inputs):
        if i < counted:
            outs[i], n, c = fw.count(x, out_size)
            counts.append((n, c))
        else:
            outs[i] = fw.infer(x, out_size)[0]
    stack = fw.stack_bytes()
    return {"flash": flash, "ram": static_ram + stack, "static_ram": static_ram, "stack": stack,
            "instructions": round(float(np.mean([c[0] for c in counts]))) if counts else None,
            "cycles": round(float(np.mean([c[1] for c in counts]))) if counts else None, "outputs": outs}


def ds_side(tflite: Path, core: str, out: Path, inputs: np.ndarray, counted: int = 2) -> dict[str, Any]:
    """`deepshrink.api.mcu` on the .tflite for `core` (model.c and firmware.elf under `out`), then its image run
    on the same inputs as TFLM's. Raises what the API raises (the .tflite route may be missing)."""
    import deepshrink as ds

    info = tflm_run.model_info(tflite)
    build = ds.mcu(tflite, target=core, out=out, images=max(counted, 3), time_host=False)
    res = ds_measure(build.out / "firmware.elf", core, inputs, info.output.size, counted)
    res["row"] = build.row
    return res


# ---- a checkpoint: the TensorFlow converter's .tflite of the same weights -----------------------------------

def tf_python(venv_dir: Path) -> Path:
    """The TensorFlow environment's interpreter, created (and its packages installed) on first use."""
    py = venv_dir / "bin" / "python"
    if not py.exists():
        print(f"creating {venv_dir} with {', '.join(TF_PACKAGES)} (once; a few minutes)", flush=True)
        venv.create(venv_dir, with_pip=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *TF_PACKAGES], check=True)
    return py


def checkpoint_models(checkpoint: Path, out: Path, py: Path, core: str,
                      images: int | None = None) -> tuple[str, Path, dict[str, Any]]:
    """(name, TFLM's .tflite, our measured row) for an FP32 checkpoint."""
    import deepshrink as ds
    from deepshrink.checkpoint import read_manifest
    from deepshrink.data import load_dataset
    from deepshrink.mcu import McuOptions, build_mcu
    from deepshrink.measure.latency import LatencyConfig

    manifest = read_manifest(checkpoint)
    name = f"{manifest.dataset}-{Path(manifest.model).name.replace('.py:', '-')}"
    work = out / name
    light = LatencyConfig(runtimes=("onnxruntime",), threads=(1,), repeats=3, single_calls=100)
    row = ds.compress(checkpoint, ["quantize:precision=int8,method=ptq"], out=work / "compress", latency=light).row
    ours = build_mcu(work / "compress" / row["artifact"], work / f"mcu-{core}",
                     options=McuOptions(target=core, latency=None))
    tflite = work / "model.tflite"
    if not tflite.exists():
        data = load_dataset(manifest.dataset)
        npz = work / "tflm-data.npz"
        n = images or len(data.test_x)
        np.savez(npz, calib=data.train_x[:512].numpy(), test_x=data.test_x[:n].numpy(), test_y=data.test_y[:n].numpy())
        proc = subprocess.run([str(py), str(HERE / "tflm_side.py"), str(checkpoint.with_name("model.onnx")), str(npz),
                               str(tflite)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"tflm_side.py failed: {(proc.stderr.strip().splitlines() or [''])[-1]}")
        npz.unlink()
        (work / "tflm-accuracy.json").write_text(proc.stdout.strip().splitlines()[-1])
    ours["tflm_accuracy_pct"] = json.loads((work / "tflm-accuracy.json").read_text())["tflm_accuracy_pct"]
    return manifest.model.rsplit(":", 1)[-1], tflite, ours


# ---- one model on one core ----------------------------------------------------------------------------------

def bench_tflite(tflite: Path, name: str, core: str, args: argparse.Namespace,
                 ours_row: dict[str, Any] | None = None) -> dict[str, Any]:
    info = tflm_run.model_info(tflite)
    inputs, source = model_inputs(tflite, info, args.inputs, args.data_dir)
    work = args.out / name / core
    t0 = time.time()
    tflm = tflm_run.tflm_side(tflite, core, args.cache, work / "tflm", inputs, args.counted, args.tflm, args.jobs,
                              args.lean, not args.generic_kernels)
    np.save(work / "inputs.npy", inputs)
    np.save(work / "tflm_outputs.npy", tflm.outputs)
    build_s = (args.cache / core / "build_seconds.txt")
    d: dict[str, Any] = {
        "model": name, "target": core, "inputs": len(inputs), "input_source": source, "ops": " ".join(info.ops),
        "tflm_flash_bytes": tflm.flash, "tflm_ram_bytes": tflm.ram, "tflm_static_ram_bytes": tflm.static_ram,
        "tflm_stack_bytes": tflm.stack, "tflm_arena_bytes": tflm.arena, "tflm_arena_used_bytes": tflm.arena_used,
        "tflm_instructions": tflm.instructions, "tflm_cycles_est": tflm.cycles,
        "tflm_model_bytes": tflite.stat().st_size,
        "tflm_registrations": "generic" if args.generic_kernels else "int8 (Register_*_INT8 where TFLM has one)",
        "tflm_seconds": round(time.time() - t0, 1),
        "tflm_library_build_seconds": float(build_s.read_text()) if build_s.exists() else None}
    k = min(args.reference, len(inputs))
    if k:  # CMSIS-NN (the image) against TFLM's reference kernels (the Python interpreter)
        ref = tflm_outputs(tflite, inputs[:k])
        d["tflm_vs_reference_identical_pct"] = 100.0 * float(np.mean([np.array_equal(a, b) for a, b in
                                                                      zip(ref, tflm.outputs[:k], strict=True)]))
        d["tflm_vs_reference_max_diff"] = int(np.abs(ref.astype(np.int16) - tflm.outputs[:k]).max())
    if source == "CIFAR-10 test images" and ours_row is None:
        d.update(tflm_accuracy(tflite, info, args.images, args.data_dir))
    if ours_row is not None:  # a checkpoint: ours is deepshrink's own quantization, measured by `deepshrink mcu`
        d.update(ds_flash_bytes=ours_row.get("mcu_flash_bytes"), ds_ram_bytes=ours_row.get("mcu_ram_bytes"),
                 ds_instructions=ours_row.get("mcu_instructions"), ds_cycles_est=ours_row.get("mcu_cycles_est"),
                 identical_pct=None, ds_accuracy_pct=ours_row.get("accuracy_pct"),
                 tflm_accuracy_pct=ours_row.get("tflm_accuracy_pct"),
                 ds_note="deepshrink's own INT8 PTQ of the same weights (not bit-comparable); accuracies: ours on "
                         "the whole test set, TFLM's by the tflite_micro Python interpreter")
    elif not args.no_ds:
        try:
            ours = ds_side(tflite, core, work / "ds", inputs, args.counted)
            same = [np.array_equal(a, b) for a, b in zip(ours["outputs"], tflm.outputs, strict=True)]
            d.update(ds_flash_bytes=ours["flash"], ds_ram_bytes=ours["ram"], ds_static_ram_bytes=ours["static_ram"],
                     ds_stack_bytes=ours["stack"], ds_instructions=ours["instructions"], ds_cycles_est=ours["cycles"],
                     identical_pct=100.0 * float(np.mean(same)))
        except Exception as e:  # e.g. no .tflite route in this deepshrink yet: TFLM's side still stands
            d["ds_note"] = f"deepshrink side failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            print(f"{name} {core}: {d['ds_note']}", flush=True)
    return d


# ---- summary ------------------------------------------------------------------------------------------------

def _fmt(v: Any) -> str:
    if v is None or v == "":
        return ""
    if isinstance(v, float):
        return f"{v:.1f}"
    return str(v)


def write_summary(rows: list[dict[str, Any]], out: Path) -> None:
    """summary.csv (SUMMARY_COLUMNS exactly, empty where not measured), summary.md (with ds/TFLM ratios) and
    details.csv (every key any row has)."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "summary.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(SUMMARY_COLUMNS)
        for r in rows:
            w.writerow([_fmt(r.get(c)) for c in SUMMARY_COLUMNS])
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with (out / "details.csv").open("w", newline="") as f:
        dw = csv.DictWriter(f, fieldnames=keys)
        dw.writeheader()
        dw.writerows([{k: _fmt(r.get(k)) for k in keys} for r in rows])

    def ratio(r: dict[str, Any], a: str, b: str) -> str:
        return f"{r[a] / r[b]:.2f}" if r.get(a) and r.get(b) else "n/a"

    head = ["model", "target"]
    for label, _, _ in RATIOS:
        head += [f"ds {label}", f"TFLM {label}", "ds/TFLM"]
    head.append("identical %")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], r["target"]]
        for _, a, b in RATIOS:
            cells += [_fmt(r.get(a)) or "n/a", _fmt(r.get(b)), ratio(r, a, b)]
        cells.append(_fmt(r.get("identical_pct")) or "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "TFLM: TensorFlow Lite Micro + CMSIS-NN (../shared/tflm) built for the same core, an app registering "
              "only the model's operators, linked with newlib-nano and --gc-sections, run in the same emulator. "
              "Flash = text + rodata + data of each linked image; RAM = data + bss (TFLM's arena included) + the "
              "stack's measured high-water mark; instructions and cycles (an estimate from the core's cycle table) "
              "of one inference (TFLM: Invoke() only), the mean over the counted inputs. identical % = inputs whose "
              "whole int8 output equals TFLM's. details.csv holds the arena, stack, and the check of TFLM's image "
              "against the tflite_micro Python interpreter."]
    notes = sorted({f"{r['model']} {r['target']}: {r['ds_note']}" for r in rows if r.get("ds_note")})
    lines += ["", *(f"- {n}" for n in notes)] if notes else []
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", type=Path, help=".tflite files (full-integer) or FP32 checkpoints")
    ap.add_argument("--targets", default="cortex-m4", help="comma-separated cores (default cortex-m4)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-mcu"))
    ap.add_argument("--inputs", type=int, default=1000, help="inputs whose outputs are compared (default 1000)")
    ap.add_argument("--counted", type=int, default=2, help="of those, inputs whose instructions are counted")
    ap.add_argument("--reference", type=int, default=3,
                    help="inputs checked against the tflite_micro Python interpreter (0: none)")
    ap.add_argument("--tflm", type=Path, default=tflm_build.DEFAULT_TFLM, help="the TFLM source tree")
    ap.add_argument("--cache", type=Path, default=None, help="TFLM library cache (default OUT/tflm-cache)")
    ap.add_argument("-j", "--jobs", type=int, default=2)
    ap.add_argument("--generic-kernels", action="store_true",
                    help="register TFLM's generic kernels (int8/int16/int4 dispatch) instead of the int8-only ones")
    ap.add_argument("--lean", action="store_true", help="build TFLM without its signal library (tflm_build.LEAN_SKIP)")
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("DEEPSHRINK_DATA", "../shared/data")))
    ap.add_argument("--no-ds", action="store_true", help="TFLM's side only")
    ap.add_argument("--tf-venv", type=Path, default=Path.home() / ".cache" / "deepshrink" / "tflm-venv",
                    help="TensorFlow environment for checkpoints (created when missing)")
    ap.add_argument("--images", type=int, default=None,
                    help="test images for TFLM's accuracy: a checkpoint's, or a CIFAR-10 .tflite's (default: the "
                         "whole test set)")
    ap.add_argument("--run", type=Path, default=None, help="a study's run directory: write tflm.csv there too, so "
                    "its report shows TensorFlow Lite Micro beside its own microcontroller builds")
    args = ap.parse_args()
    args.cache = args.cache or args.out / "tflm-cache"
    cores = [c.strip() for c in args.targets.split(",") if c.strip()]
    unknown = [c for c in cores if c not in tflm_build.CORES]
    if unknown:
        ap.error(f"--targets: {', '.join(unknown)} (expected {', '.join(tflm_build.CORES)})")
    rows = []
    for model in args.models:
        for core in cores:
            if model.suffix == ".tflite":
                rows.append(bench_tflite(model, model.stem, core, args))
            else:
                name, tflite, ours = checkpoint_models(model, args.out, tf_python(args.tf_venv), core, args.images)
                rows.append(bench_tflite(tflite, name, core, args, ours))
            write_summary(rows, args.out)  # after every row: a long run leaves what it measured
            print(json.dumps({k: v for k, v in rows[-1].items() if k in SUMMARY_COLUMNS or k.startswith("tflm_")}),
                  flush=True)
    if args.run is not None:
        (args.run / "tflm.csv").write_text((args.out / "details.csv").read_text())
    print((args.out / "summary.md").read_text())


if __name__ == "__main__":
    main()
