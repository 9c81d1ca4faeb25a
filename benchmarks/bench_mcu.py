"""deepshrink's microcontroller C beside TensorFlow Lite Micro, in one run, on the same trained weights.

    DEEPSHRINK_DATA=../shared/data .venv/bin/python benchmarks/bench_mcu.py \
        runs/l5/artifacts/mnist-lenet-5/model.safetensors runs/r8/artifacts/cifar10-resnet8/model.safetensors \
        --out runs/bench-mcu

For each FP32 checkpoint: INT8 PTQ through `deepshrink compress`'s code path, then `deepshrink mcu` (ours:
flash and RAM of the linked Cortex-M4 image, accuracy of the C on the whole test set). TensorFlow Lite
Micro's side runs in a virtual environment this bench creates (TensorFlow and tflite-micro are never
deepshrink dependencies): the same FP32 weights (deepshrink's FP32 ONNX export, batch norm folded) rebuilt
in Keras, converted by TensorFlow's converter to a full-integer .tflite calibrated on the same 512 training
images, run by the tflite-micro interpreter on the same test images; its flatbuffer bytes and its recording
allocator's arena bytes. TFLM's own code size cannot be built here: the published figure (about 48 kB of
text with a mutable op resolver, tensorflow/tensorflow#32345) stands in for it, and the summary says so.
Writes summary.csv and summary.md.
"""

import argparse
import csv
import json
import re
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

import deepshrink as ds
from deepshrink.checkpoint import read_manifest
from deepshrink.data import load_dataset
from deepshrink.mcu import McuOptions, build_mcu
from deepshrink.measure.latency import LatencyConfig

HERE = Path(__file__).resolve().parent
TFLM_RUNTIME_TEXT_BYTES = 48_000  # tensorflow/tensorflow#32345: TFLM's text with a mutable op resolver
TF_PACKAGES = ["tensorflow-cpu", "tflite-micro", "onnx"]
_ARENA = re.compile(r"Arena allocation total (\d+) bytes")


def tf_python(venv_dir: Path) -> Path:
    """The TensorFlow environment's interpreter, created (and its packages installed) on first use."""
    py = venv_dir / "bin" / "python"
    if not py.exists():
        print(f"creating {venv_dir} with {', '.join(TF_PACKAGES)} (once; a few minutes)", flush=True)
        venv.create(venv_dir, with_pip=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *TF_PACKAGES], check=True)
    return py


def tflm(py: Path, fp32_onnx: Path, data: Any, out: Path, images: int) -> dict[str, Any]:
    """TensorFlow Lite Micro on the same weights and images: accuracy, flatbuffer and arena bytes."""
    npz = out / "tflm-data.npz"
    np.savez(npz, calib=data.train_x[:512].numpy(), test_x=data.test_x[:images].numpy(),
             test_y=data.test_y[:images].numpy())
    tflite = out / "model.tflite"
    proc = subprocess.run([str(py), str(HERE / "tflm_side.py"), str(fp32_onnx), str(npz), str(tflite)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"tflm_side.py failed: {(proc.stderr.strip().splitlines() or [''])[-1]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    arena = _ARENA.search(proc.stderr)
    res["tflm_arena_bytes"] = int(arena.group(1)) if arena else None
    # The Keras rebuild must hold the same FP32 network: its logits against ONNX Runtime's.
    sess = ort.InferenceSession(str(fp32_onnx), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: data.test_x[:256].numpy()})[0]
    res["keras_vs_onnx_max_abs_diff"] = float(np.abs(np.load(f"{tflite}.keras.npy") - ref).max())
    npz.unlink()
    return res


def bench_one(checkpoint: Path, out: Path, py: Path, images: int | None) -> dict[str, Any]:
    manifest = read_manifest(checkpoint)
    name = f"{manifest.dataset}-{Path(manifest.model).name.replace('.py:', '-')}"
    work = out / name
    light = LatencyConfig(runtimes=("onnxruntime",), threads=(1,), repeats=3, single_calls=100)  # not what is compared
    row = ds.compress(checkpoint, ["quantize:precision=int8,method=ptq"], out=work / "compress", latency=light).row
    artifact = work / "compress" / row["artifact"]
    ours = build_mcu(artifact, work / "mcu", options=McuOptions(latency=None))
    data = load_dataset(manifest.dataset)
    theirs = tflm(py, checkpoint.with_name("model.onnx"), data, work, images or len(data.test_x))
    short = manifest.model.rsplit(":", 1)[-1]  # a file reference's callable, not the path it was trained from
    return {"int8_artifact_accuracy_pct": float(row["accuracy_pct"]), **ours, **theirs, "model": short}


def summarize(r: dict[str, Any]) -> dict[str, Any]:
    tflm_flash = r["tflm_flatbuffer_bytes"] + TFLM_RUNTIME_TEXT_BYTES
    s = {"model": r["model"], "ours_flash_bytes": r["mcu_flash_bytes"], "ours_ram_bytes": r["mcu_ram_bytes"],
         "ours_accuracy_pct": r["accuracy_pct"], "ours_instructions": r["mcu_instructions"],
         "ours_ms_est_80mhz": round(r["mcu_ms_est"], 3), "ort_match_pct": r["mcu_match_ort_pct"],
         "tflm_flatbuffer_bytes": r["tflm_flatbuffer_bytes"], "tflm_flash_est_bytes": tflm_flash,
         "tflm_arena_bytes": r["tflm_arena_bytes"], "tflm_accuracy_pct": r["tflm_accuracy_pct"],
         "tflm_images": r["tflm_images"], "keras_vs_onnx_max_abs_diff": r["keras_vs_onnx_max_abs_diff"]}
    s["ram_ratio"] = round(s["ours_ram_bytes"] / s["tflm_arena_bytes"], 3) if s["tflm_arena_bytes"] else None
    s["flash_ratio"] = round(s["ours_flash_bytes"] / tflm_flash, 3)
    s["accuracy_delta_pt"] = round(s["ours_accuracy_pct"] - s["tflm_accuracy_pct"], 3)
    s["pass"] = bool(s["ram_ratio"] is not None and s["ram_ratio"] <= 0.7 and s["flash_ratio"] <= 0.7
                     and abs(s["accuracy_delta_pt"]) <= 0.2)
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", type=Path, help="FP32 checkpoints (.safetensors) to compare on")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-mcu"))
    ap.add_argument("--tf-venv", type=Path, default=Path.home() / ".cache" / "deepshrink" / "tflm-venv",
                    help="TensorFlow + tflite-micro virtual environment (created when missing)")
    ap.add_argument("--images", type=int, default=None, help="test images for TFLM (default: the whole test set)")
    ap.add_argument("--run", type=Path, default=None, help="a study's run directory: write tflm.csv there too, so "
                    "its report shows TensorFlow Lite Micro beside its own microcontroller builds")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    py = tf_python(args.tf_venv)
    rows = [summarize(bench_one(c, args.out, py, args.images)) for c in args.checkpoints]
    with (args.out / "summary.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = ["| model | ours flash B | TFLM flatbuffer + 48 kB runtime | ratio | ours RAM B | TFLM arena B | ratio | "
             "ours acc % | TFLM acc % | pass |", "|" + "---|" * 10]
    lines += [f"| {r['model']} | {r['ours_flash_bytes']} | {r['tflm_flash_est_bytes']} | {r['flash_ratio']} | "
              f"{r['ours_ram_bytes']} | {r['tflm_arena_bytes']} | {r['ram_ratio']} | {r['ours_accuracy_pct']:.2f} | "
              f"{r['tflm_accuracy_pct']:.2f} | {'yes' if r['pass'] else 'NO'} |" for r in rows]
    kb = TFLM_RUNTIME_TEXT_BYTES // 1000
    lines += ["", f"TFLM's runtime code is not built here: its flash adds the published ~{kb} kB of text with a "
              "mutable op resolver (tensorflow/tensorflow#32345) to the flatbuffer. Ours is the "
              "whole linked Cortex-M4 image (code, weights, start-up). RAM: ours is .data + .bss + the measured stack "
              "(input buffer included); TFLM's is its recording allocator's arena total (input and output tensors "
              "included, its stack not)."]
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    if args.run is not None:
        (args.run / "tflm.csv").write_text((args.out / "summary.csv").read_text())
    print("\n".join(lines))
    sys.exit(0 if all(r["pass"] for r in rows) else 1)


if __name__ == "__main__":
    main()
