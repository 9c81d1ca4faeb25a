"""`deepshrink mcu`: an artifact -> model.h + model.c, built for the host and the target, measured.

- host build: accuracy on the whole test set through `ds_infer_pixels` (raw pixels in, as a device gets
  them), its logits against ONNX Runtime running the same all-INT8 QDQ model (`model.int8.onnx`), and the
  `c` runtime's time beside ONNX Runtime's;
- target build: flash and static RAM of the linked image (`firmware.elf`); the image emulated on `images`
  test images (logits bit for bit against the host build), instructions counted on `counted` of them, the
  stack's high-water mark.
"""

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from deepshrink.checkpoint import Manifest, atomic_write_bytes, read_manifest
from deepshrink.data.normalize import renormalize
from deepshrink.errors import UserError
from deepshrink.export.base import Artifact
from deepshrink.export.files import manifest_beside
from deepshrink.export.runtimes import ort_runner
from deepshrink.mcu import toolchain
from deepshrink.mcu.arena import plan
from deepshrink.mcu.emit import emit
from deepshrink.mcu.emulate import Firmware
from deepshrink.mcu.graph import Graph, read_graph
from deepshrink.mcu.lower import lower
from deepshrink.mcu.measure import EvalData, HostLibrary, integer_logits, load_eval_data, ort_quantize, pixel_lut
from deepshrink.mcu.names import check_prefix
from deepshrink.mcu.program import Program
from deepshrink.mcu.source import IntegerModel, calibrated_here, load_integer_model
from deepshrink.mcu.toolchain import OPTIMIZE
from deepshrink.measure.latency import LatencyConfig, measure_latency
from deepshrink.progress import Progress, null_progress
from deepshrink.results import LATENCY_COLUMNS, LATENCY_KEY, RESULTS_COLUMNS, RESULTS_KEY, read_rows, upsert

# The host build is a check of the C, not the deployment's speed (that is the target's instructions), so it
# is timed lighter than SPEC §6's full protocol: 1,000 test images, 5 passes, 200 batch-1 calls.
HOST_TIMING = LatencyConfig(runtimes=("c",), threads=(1,), repeats=5, single_calls=200)
TIMED_IMAGES = 1000
# Energy per cycle of MLPerf Tiny's reference Cortex-M4 board, NUCLEO-L4R5ZI at 120 MHz: 33.06 mW measured in
# its published runs (3 V, SMPS) / 120 MHz = 0.28 nJ per cycle (../shared/mlperf-tiny/README.md).
ENERGY_NJ_PER_CYCLE = 0.28
ENERGY_SOURCE = "estimate: estimated cycles x {nj} nJ/cycle ({where})"
ENERGY_DEFAULT_WHERE = "NUCLEO-L4R5ZI at 120 MHz, MLPerf Tiny's measured power"


@dataclass(frozen=True)
class McuOptions:
    target: str = "cortex-m4"
    images: int = 100  # emulated images whose logits must equal the host build's, bit for bit
    counted: int = 3  # of those, images whose instructions are counted (a block hook; slower)
    clock_mhz: float = 80.0
    latency: LatencyConfig | None = HOST_TIMING  # the `c` runtime beside ONNX Runtime; None: not timed
    dense_reference: bool = True  # with weights in place, also build the all-dense image (flash, instructions)
    prefix: str = "ds"  # of every exported C symbol and macro: NAME_infer, NAME_ARENA_BYTES (names.check_prefix)
    arith: str = ""  # requantization: "float" (ONNX Runtime's) or "fixed" (TFLite's); "": fixed where no FPU
    energy_nj_per_cycle: float = ENERGY_NJ_PER_CYCLE
    optimize: str = "speed"  # "size": the smallest code (kernels.c.j2's generic pair kernel, none specialized)

    def __post_init__(self) -> None:
        if self.target not in toolchain.TARGET_NAMES:
            raise UserError(f"--target {self.target!r}: expected one of {', '.join(toolchain.TARGET_NAMES)}")
        if not 1 <= self.counted <= self.images:
            raise UserError(f"--images {self.images}: must be at least {self.counted} (the images counted)")
        if not self.clock_mhz > 0:
            raise UserError(f"--clock-mhz {self.clock_mhz}: must be > 0")
        check_prefix(self.prefix)
        if self.arith not in ("", "float", "fixed"):
            raise UserError(f"--arith {self.arith!r}: expected float or fixed")
        if self.optimize not in OPTIMIZE:
            raise UserError(f"--optimize {self.optimize!r}: expected {' or '.join(OPTIMIZE)}")
        if not self.energy_nj_per_cycle > 0:
            raise UserError(f"--energy-nj-per-cycle {self.energy_nj_per_cycle}: must be > 0")

    @property
    def arithmetic(self) -> str:
        """The arithmetic the C uses: as asked, else integer-only on a core without an FPU."""
        core = toolchain.TARGETS.get(self.target)
        return self.arith or ("fixed" if core is not None and not core.has_fpu else "float")


@dataclass
class Built:
    """The generated program and what its measurement needs."""

    src: IntegerModel
    graph: Graph
    prog: Program
    arena: int
    data: EvalData


def _normalized(data: EvalData, manifest: Manifest | None) -> EvalData:
    """The test images as the model was trained to see them (its manifest's normalization, e.g. a user's
    `--normalize`), so ds_infer's reference inputs and ds_infer_pixels' table agree."""
    return EvalData(renormalize(data.splits, (manifest.mean, manifest.std)), data.pixels) if manifest else data


def generate(artifact: Path, out: Path, dataset: str | None, data_dir: Path | None,
             data: EvalData | None = None, prefix: str = "ds", arith: str = "float", optimize: str = "speed") -> Built:
    """Read the artifact and write model.h, model.c and model.int8.onnx into `out` (nothing, on an error)."""
    if calibrated_here(artifact) and data is None:  # calibrated on training images here: the data comes first
        manifest = read_manifest(manifest_beside(artifact))
        data = _normalized(load_eval_data(dataset or manifest.dataset, data_dir), manifest)
    src = load_integer_model(artifact, data.splits.train_x[:512] if data else None)
    name = dataset or (src.manifest.dataset if src.manifest else None)
    if not name:
        raise UserError(f"{artifact}: no manifest beside it names its dataset; pass --dataset")
    graph = read_graph(src.model, str(artifact))
    if arith == "fixed":
        graph = replace(graph, arith="fixed")
    graph = replace(graph, optimize=optimize)
    data = data or _normalized(load_eval_data(name, data_dir), src.manifest)
    if tuple(data.pixels.shape[1:]) != tuple(graph.image_shape if len(graph.image_shape) == 3 else ()) and \
            int(np.prod(data.pixels.shape[1:])) != graph.input.size:
        raise UserError(f"{artifact}: takes {list(graph.image_shape)} inputs; {name} images are "
                        f"{list(data.pixels.shape[1:])}")
    norm = src.manifest or data.splits  # the model's own normalization where its manifest records it
    lut = pixel_lut(graph, norm.mean, norm.std)
    prog, arena = write_c(graph, out, lut, f"{artifact.name} ({src.variant}, {name})", prefix)
    atomic_write_bytes(out / "model.int8.onnx", src.model.SerializeToString())
    return Built(src, graph, prog, arena, data)


def write_c(graph: Graph, out: Path, lut: np.ndarray, title: str, prefix: str) -> tuple[Program, int]:
    """Lower `graph`, plan its arena and write model.h and model.c into `out`: (the program, arena bytes)."""
    prog = lower(graph)
    arena = plan(prog.buffers)
    sources = emit(prog, arena, lut, title, prefix)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "model.h", sources.header.encode())
    atomic_write_bytes(out / "model.c", sources.body.encode())
    return prog, arena


def _host(b: Built, out: Path, work: Path, prefix: str) -> tuple[HostLibrary, dict[str, Any], np.ndarray,
                                                                 np.ndarray]:
    """Host build: accuracy from raw pixels, agreement with ONNX Runtime. Returns the library, the row's
    facts, and the quantized test inputs with their C logits (the emulator's reference)."""
    lib_path, warnings = toolchain.build_host(out, work, prefix)
    lib = HostLibrary(lib_path, b.graph.tensors[b.graph.output].size, b.graph.input.size)
    splits = b.data.splits
    logits, classes = lib.pixels(b.data.pixels)
    xq = ort_quantize(b.graph, splits.test_x.numpy())
    if not np.array_equal(lib.quantized(xq)[0], logits):  # the pixel table must be ONNX Runtime's quantization
        raise RuntimeError(f"{b.graph.source}: ds_infer_pixels and ds_infer disagree on the test set")
    ref = integer_logits(b.src.model, splits.test_x.numpy(), b.graph.offset)
    labels = splits.test_y.numpy()
    diff = np.abs(logits.astype(np.int16) - ref)
    facts = {"accuracy_pct": 100.0 * float((classes == labels).mean()),
             "mcu_ort_accuracy_pct": 100.0 * float((ref.argmax(1) == labels).mean()),
             "mcu_match_ort_pct": 100.0 * float((classes == ref.argmax(1)).mean()),
             "mcu_logits_exact_pct": 100.0 * float((diff == 0).mean()), "mcu_logits_max_diff": int(diff.max()),
             "mcu_host_compiler": toolchain.compiler_version(toolchain.host_compiler()),
             "mcu_host_warnings": toolchain.warning_count(warnings)}
    return lib, facts, xq, logits


def target_row(graph: Graph, prog: Program, out: Path, opts: McuOptions, xq: np.ndarray, host_logits: np.ndarray,
               progress: Progress) -> dict[str, Any]:
    """Target build, emulated: sizes, bit-exactness against the host build, instructions, cycles, energy."""
    elf, warnings = toolchain.build_target(out, out / "firmware", opts.target, opts.prefix)
    flash, static_ram = toolchain.image_sizes(elf)
    fw = Firmware.load(elf, opts.prefix, opts.target)
    n = min(opts.images, len(xq))
    classes = graph.tensors[graph.output].size
    task = progress.add(f"emulating {opts.target}", total=n)
    identical = 0
    counts: list[tuple[int, int]] = []
    for i in range(n):
        if i < opts.counted:
            logits, instructions, cycles = fw.count(xq[i], classes)
            counts.append((instructions, cycles))
        else:
            logits = fw.infer(xq[i], classes)[0]
        identical += int(np.array_equal(logits, host_logits[i]))
        progress.update(task, advance=1)
    progress.finish(task)
    instructions = round(float(np.mean([c[0] for c in counts])))
    cycles = round(float(np.mean([c[1] for c in counts])))
    stack = fw.stack_bytes()
    row = {"mcu_flash_bytes": flash, "mcu_ram_bytes": static_ram + stack, "mcu_static_ram_bytes": static_ram,
            "mcu_stack_bytes": stack, "mcu_instructions": instructions, "mcu_cycles_est": cycles,
            "mcu_ms_est": cycles / (opts.clock_mhz * 1e3), "mcu_clock_mhz": opts.clock_mhz,
            "mcu_instructions_per_mac": instructions / max(prog.macs, 1),
            "mcu_cycles_per_mac": cycles / max(prog.macs, 1),
            "mcu_energy_uj_est": cycles * opts.energy_nj_per_cycle / 1000.0,
            "mcu_energy_source": ENERGY_SOURCE.format(
                nj=opts.energy_nj_per_cycle, where=ENERGY_DEFAULT_WHERE if opts.energy_nj_per_cycle ==
                ENERGY_NJ_PER_CYCLE else "--energy-nj-per-cycle"), "mcu_arith": graph.arith,
            "mcu_optimize": graph.optimize,
            "mcu_emulated_images": n, "mcu_emulated_identical": identical,
            "mcu_compiler": toolchain.compiler_version(toolchain.CROSS),
            "mcu_target_warnings": toolchain.warning_count(warnings),
            "mcu_layouts": "; ".join(prog.layouts)}
    if prog.layouts and opts.dense_reference:
        row.update(_dense_reference(graph, out / "dense", opts.target, xq[0], opts.prefix))
    return row


def _dense_reference(graph: Graph, out: Path, target: str, x: np.ndarray, prefix: str) -> dict[str, Any]:
    """The same INT8 model with every layer stored dense, built and counted on one image: what storing the
    weights in place saves."""
    prog = lower(graph, in_place=False)
    arena = plan(prog.buffers)
    sources = emit(prog, arena, np.zeros((graph.image_shape[0] if len(graph.image_shape) == 3 else 1, 256),
                                         np.int8), "the dense reference build", prefix)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.h").write_text(sources.header)
    (out / "model.c").write_text(sources.body)
    elf, _ = toolchain.build_target(out, out / "firmware", target, prefix)
    flash, static_ram = toolchain.image_sizes(elf)
    fw = Firmware.load(elf, prefix, target)
    _, instructions, cycles = fw.count(x, graph.tensors[graph.output].size)
    return {"mcu_dense_flash_bytes": flash, "mcu_dense_ram_bytes": static_ram + fw.stack_bytes(),
            "mcu_dense_instructions": instructions, "mcu_dense_cycles_est": cycles}


def _artifact_accuracy(artifact: Path, variant: str) -> float | None:
    """The shipped artifact's accuracy, from the results.csv of the run that wrote it (two folders up)."""
    for row in read_rows(artifact.parent.parent.parent / "results.csv"):
        if row.get("variant") == variant and row.get("accuracy_pct"):
            return float(row["accuracy_pct"])
    return None


def build_mcu(artifact: Path, out: Path, dataset: str | None = None, data_dir: Path | None = None,
              options: McuOptions | None = None, progress: Progress | None = None,
              data: EvalData | None = None) -> dict[str, Any]:
    """Generate, build and measure; writes model.h, model.c, firmware.elf and result rows into `out`.
    `data`: the test set already in memory (a study's), else `dataset` is loaded."""
    opts = options or McuOptions()
    progress = progress or null_progress()
    b = generate(artifact, out, dataset, data_dir, data, opts.prefix, opts.arithmetic, opts.optimize)
    notes = list(b.src.notes)
    m = b.src.manifest
    row: dict[str, Any] = {
        "variant": b.src.variant, "dataset": b.data.splits.name, "model": m.model if m else artifact.stem,
        "pipeline": " | ".join(m.pipeline) if m else "", "precision": "int8", "size_bytes": artifact.stat().st_size,
        "size_kb": artifact.stat().st_size / 1000.0, "artifact": str(artifact.resolve()), "status": "ok",
        "macs": b.prog.macs, "mcu_target": opts.target, "mcu_arena_bytes": b.arena,
        "mcu_kernels": " ".join(sorted(b.prog.kernels - {"base", "argmax"})), "mcu_arith": b.graph.arith,
        "artifact_accuracy_pct": _artifact_accuracy(artifact, b.src.variant)}
    with tempfile.TemporaryDirectory() as tmp:
        lib, facts, xq, host_logits = _host(b, out, Path(tmp), opts.prefix)
        row.update(facts)
        if opts.target != "host" and toolchain.cross_compiler() is None:
            notes.append(f"no target build: {toolchain.CROSS} not found ({toolchain.INSTALL_HINT})")
        elif opts.target != "host":
            row.update(target_row(b.graph, b.prog, out, opts, xq, host_logits, progress))
        x = b.data.splits.test_x[:TIMED_IMAGES].numpy()
        latency = [] if opts.latency is None else time_host(lib, out / "model.int8.onnx", b.src.variant, x,
                                                            opts.latency, progress)
    row["notes"] = "; ".join(notes)
    upsert(out / "results.csv", [row], RESULTS_COLUMNS, RESULTS_KEY)
    if latency:
        upsert(out / "latency.csv", latency, LATENCY_COLUMNS, LATENCY_KEY)
    return row


def time_host(lib: HostLibrary, reference: Path, variant: str, x: np.ndarray, cfg: LatencyConfig,
              progress: Progress) -> list[dict[str, object]]:
    """The `c` runtime beside ONNX Runtime running the same all-INT8 model, interleaved in one run."""
    ort_art = Artifact(reference, "onnx-qdq-int8-full", "int8", runners={"onnxruntime": ort_runner(reference)})
    c_art = Artifact(reference, "c", "int8", runners={"c": lib.runner()})
    return measure_latency([(f"{variant} model.int8.onnx", ort_art), (variant, c_art)], x, cfg, progress)
