"""`deepshrink mcu MODEL.tflite`: a full-integer TFLite model -> model.h + model.c with TensorFlow Lite's
arithmetic, built for the host and the target, measured.

- host build: its outputs against TensorFlow Lite Micro's own interpreter (the `tflite-micro` package, its
  reference kernels) on the same int8 inputs, byte for byte; with `--dataset`, the test images as the
  model's input tensor takes them (raw 0-255 pixels quantized by its input scale and zero point: MLPerf
  Tiny's image models) and the accuracy; without, seeded random int8 inputs near the input zero point;
- target build: as for any model (run.target_row): flash, RAM, instructions, estimated cycles and energy.
"""

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from deepshrink.errors import UserError
from deepshrink.ingest.tflite_file import read_tflite_file
from deepshrink.mcu import toolchain
from deepshrink.mcu.graph import Graph
from deepshrink.mcu.measure import HostLibrary, load_eval_data
from deepshrink.mcu.run import McuOptions, target_row, write_c
from deepshrink.mcu.tflite_graph import read_tflite_graph
from deepshrink.progress import Progress
from deepshrink.results import RESULTS_COLUMNS, RESULTS_KEY, upsert

REFERENCE_INPUTS = 1000  # inputs compared with TFLM's interpreter (its reference kernels take ~ms each)
RANDOM_SPREAD = 32  # random inputs: normal around the input zero point with this standard deviation


def pixel_table(g: Graph) -> np.ndarray:
    """(C, 256) int8: each raw pixel value quantized by the input tensor's scale and zero point."""
    c = g.image_shape[0] if len(g.image_shape) == 3 else 1
    q = np.round(np.arange(256, dtype=np.float64) / g.input.scale) + g.input.zp
    return np.tile(np.clip(q, -128, 127).astype(np.int8), (c, 1))


def tflm_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    """TensorFlow Lite Micro's interpreter (reference kernels) on each int8 input: its output tensor's bytes."""
    from tflite_micro.python.tflite_micro import runtime

    interp = runtime.Interpreter.from_file(str(path))
    shape = interp.get_input_details(0)["shape"]
    out = []
    for row in x:
        interp.set_input(row.reshape(shape), 0)
        interp.invoke()
        out.append(np.asarray(interp.get_output(0)).reshape(-1))
    return np.array(out, np.int8)


def _inputs(g: Graph, path: Path, dataset: str | None, data_dir: Path | None,
            n: int) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(int8 inputs as TFLM's input tensor holds them, their labels or None, what they are)."""
    if dataset is None:
        rng = np.random.default_rng(0)
        x = np.clip(np.round(rng.normal(g.input.zp, RANDOM_SPREAD, (n, g.input.size))), -128, 127).astype(np.int8)
        return x, None, f"{n} random int8 inputs around the zero point {g.input.zp}"
    data = load_eval_data(dataset, data_dir)
    pixels = data.pixels  # N x C x H x W uint8
    if len(g.image_shape) != 3 or tuple(pixels.shape[1:]) != tuple(g.image_shape):
        raise UserError(f"{path}: takes {list(g.image_shape)} (C, H, W) inputs; {dataset} images are "
                        f"{list(pixels.shape[1:])}")
    table = pixel_table(g)
    hwc = np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))
    x = table[np.arange(hwc.shape[-1]), hwc].reshape(len(hwc), -1)
    return x, data.splits.test_y.numpy(), f"the {dataset} test set"


def _host(g: Graph, path: Path, out: Path, x: np.ndarray, labels: np.ndarray | None,
          prefix: str) -> tuple[dict[str, Any], np.ndarray]:
    """Host build: outputs on every input, against TFLM's interpreter on the first REFERENCE_INPUTS."""
    with tempfile.TemporaryDirectory() as tmp:
        lib_path, warnings = toolchain.build_host(out, Path(tmp), prefix)
        lib = HostLibrary(lib_path, g.tensors[g.output].size, g.input.size)
        outputs, classes = lib.quantized(x)
    k = min(REFERENCE_INPUTS, len(x))
    ref = tflm_outputs(path, x[:k])
    same = (outputs[:k] == ref).all(axis=1)
    facts: dict[str, Any] = {
        "mcu_tflm_compared": k, "mcu_tflm_identical_pct": 100.0 * float(same.mean()),
        "mcu_logits_max_diff": int(np.abs(outputs[:k].astype(np.int16) - ref).max(initial=0)),
        "mcu_host_compiler": toolchain.compiler_version(toolchain.host_compiler()),
        "mcu_host_warnings": toolchain.warning_count(warnings)}
    if labels is not None:
        facts["accuracy_pct"] = 100.0 * float((classes == labels).mean())
        facts["mcu_tflm_accuracy_pct"] = 100.0 * float((ref.argmax(1) == labels[:k]).mean())
    return facts, outputs


def build_tflite(path: Path, out: Path, dataset: str | None, data_dir: Path | None, opts: McuOptions,
                 progress: Progress) -> dict[str, Any]:
    """Generate, build and measure a .tflite model; writes model.h, model.c, firmware.elf and results.csv."""
    g = replace(read_tflite_graph(read_tflite_file(path)), optimize=opts.optimize)
    if opts.arith == "float":
        raise UserError(f"{path}: --arith float: a TFLite model computes TFLite's fixed-point arithmetic")
    n = max(opts.images, REFERENCE_INPUTS) if dataset is None else 0
    x, labels, what = _inputs(g, path, dataset, data_dir, n)
    prog, arena = write_c(g, out, pixel_table(g), f"{path.name} (TFLite, full integer)", opts.prefix)
    row: dict[str, Any] = {
        "variant": path.stem, "dataset": dataset or "", "model": path.stem, "pipeline": "tflite",
        "precision": "int8", "size_bytes": path.stat().st_size, "size_kb": path.stat().st_size / 1000.0,
        "artifact": str(path.resolve()), "status": "ok", "macs": prog.macs, "mcu_target": opts.target,
        "mcu_arena_bytes": arena, "mcu_kernels": " ".join(sorted(prog.kernels - {"base", "argmax"})),
        "mcu_arith": g.arith, "mcu_optimize": g.optimize, "mcu_inputs": what}
    facts, outputs = _host(g, path, out, x, labels, opts.prefix)
    row.update(facts)
    notes = []
    if opts.target != "host" and toolchain.cross_compiler() is None:
        notes.append(f"no target build: {toolchain.CROSS} not found ({toolchain.INSTALL_HINT})")
    elif opts.target != "host":
        row.update(target_row(g, prog, out, opts, x, outputs, progress))
    row["notes"] = "; ".join(notes)
    upsert(out / "results.csv", [row], RESULTS_COLUMNS, RESULTS_KEY)
    return row
