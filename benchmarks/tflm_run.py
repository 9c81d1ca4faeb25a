"""TensorFlow Lite Micro's side of bench_mcu.py, measured: a .tflite model linked into a TFLM app (only the model's
operators registered, one static arena sized to what AllocateTensors uses) against the TFLM + CMSIS-NN library
tflm_build.py builds for the core, run in deepshrink's emulator as that core (src/deepshrink/mcu/emulate.py: the
same instruction count and cycle table as deepshrink's own images).

Measured: flash (text + rodata + data of the linked image), RAM (data + bss, the arena included, + the stack's
high-water mark over setup and every Invoke), the arena TFLM reports using, instructions and estimated cycles of
Invoke() alone, and the int8 output per input.
"""

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tflm_build

from deepshrink.mcu.emulate import Firmware
from deepshrink.mcu.toolchain import image_sizes, support_file

HERE = Path(__file__).resolve().parent
APP = HERE / "tflm_app"
ARENA_PROBE = 768 << 10  # the first link's arena: larger than any model here needs; RAM is 1 MB

# TFLite builtin operator -> MicroMutableOpResolver method.
RESOLVER = {"CONV_2D": "AddConv2D", "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D", "FULLY_CONNECTED": "AddFullyConnected",
            "ADD": "AddAdd", "AVERAGE_POOL_2D": "AddAveragePool2D", "MAX_POOL_2D": "AddMaxPool2D",
            "RESHAPE": "AddReshape", "SOFTMAX": "AddSoftmax", "QUANTIZE": "AddQuantize", "DEQUANTIZE": "AddDequantize",
            "MEAN": "AddMean", "PAD": "AddPad", "MUL": "AddMul", "CONCATENATION": "AddConcatenation",
            "LOGISTIC": "AddLogistic", "RELU": "AddRelu", "RELU6": "AddRelu6", "TANH": "AddTanh",
            "STRIDED_SLICE": "AddStridedSlice", "TRANSPOSE": "AddTranspose", "SQUEEZE": "AddSqueeze"}

# The int8-only registrations TFLM offers (kernels/*.h): an all-int8 model needs nothing else, and they leave out
# the int16/int4 CMSIS-NN paths the generic registrations dispatch to (~40 kB of text). What a size-conscious
# TFLM application registers; `int8_kernels=False` measures the generic ones.
INT8_REGISTRATION = {"CONV_2D": "Register_CONV_2D_INT8", "DEPTHWISE_CONV_2D": "Register_DEPTHWISE_CONV_2D_INT8",
                     "FULLY_CONNECTED": "Register_FULLY_CONNECTED_INT8", "ADD": "Register_ADD_INT8",
                     "AVERAGE_POOL_2D": "Register_AVERAGE_POOL_2D_INT8", "MAX_POOL_2D": "Register_MAX_POOL_2D_INT8",
                     "SOFTMAX": "Register_SOFTMAX_INT8", "MUL": "Register_MUL_INT8", "PAD": "Register_PAD_INT8"}


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    scale: float
    zero_point: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


@dataclass(frozen=True)
class ModelInfo:
    ops: tuple[str, ...]  # the builtin operators the model uses, in its operator-code order
    input: TensorInfo
    output: TensorInfo


def model_info(tflite: Path) -> ModelInfo:
    """The model's operators and its int8 input/output tensors, read with the `tflite` schema package."""
    import tflite as schema

    buf = tflite.read_bytes()
    m = schema.Model.GetRootAsModel(buf, 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    if m.SubgraphsLength() != 1:
        raise ValueError(f"{tflite}: {m.SubgraphsLength()} subgraphs; one expected")
    g = m.Subgraphs(0)
    ops: list[str] = []  # those the operators use (a model's code table may list more: the ResNet's has QUANTIZE)
    for i in range(g.OperatorsLength()):
        code = m.OperatorCodes(g.Operators(i).OpcodeIndex())
        op = names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]  # the deprecated field holds codes < 127
        if op not in ops:
            ops.append(op)

    def tensor(index: int) -> TensorInfo:
        t = g.Tensors(index)
        if t.Type() != schema.TensorType.INT8:
            raise ValueError(f"{tflite}: tensor {t.Name()!r} is not int8")
        q = t.Quantization()
        return TensorInfo(tuple(int(d) for d in t.ShapeAsNumpy()), float(q.ScaleAsNumpy()[0]),
                          int(q.ZeroPointAsNumpy()[0]))

    return ModelInfo(tuple(ops), tensor(g.Inputs(0)), tensor(g.Outputs(0)))


def _c_array(name: str, data: bytes) -> str:
    rows = [", ".join(str(b) for b in data[i:i + 24]) for i in range(0, len(data), 24)]
    # 16-byte aligned: TFLM reads the flatbuffer in place (its buffers' alignment).
    return (f'extern "C" {{ alignas(16) extern const unsigned char {name}[{len(data)}]; }}\n'
            f"alignas(16) const unsigned char {name}[{len(data)}] = {{\n" + ",\n".join(rows) + "\n};\n")


def write_app(tflite: Path, info: ModelInfo, work: Path, arena: int, int8_kernels: bool = True) -> list[Path]:
    """app.cc (the resolver for the model's operators, the arena) and model_data.cc: the app's sources."""
    missing = [op for op in info.ops if op not in RESOLVER]
    if missing:
        raise ValueError(f"{tflite}: no resolver entry for {', '.join(missing)}")
    work.mkdir(parents=True, exist_ok=True)
    def registration(op: str) -> str:
        return f"tflite::{INT8_REGISTRATION[op]}()" if int8_kernels and op in INT8_REGISTRATION else ""

    adds = "\n".join(f"    resolver.{RESOLVER[op]}({registration(op)});" for op in info.ops)
    app = ((APP / "app.cc.in").read_text().replace("@ARENA@", str(arena)).replace("@NOPS@", str(len(info.ops)))
           .replace("@ADD_OPS@", adds).replace("@IN_BYTES@", str(info.input.size))
           .replace("@OUT_BYTES@", str(info.output.size)))
    (work / "app.cc").write_text(app)
    data = work / "model_data.cc"
    if not data.exists():  # a folder per model (bench_mcu.py: OUT/<model>/<core>/tflm)
        data.write_text(_c_array("tflm_model", tflite.read_bytes()))
    startup = work / "startup.c"  # deepshrink's own start-up (built with DS_CONSTRUCTORS: link())
    startup.write_text(support_file("startup.c"))
    return [work / "app.cc", data, startup]


def link(tflite: Path, info: ModelInfo, core: str, lib: Path, work: Path, arena: int,
         tflm: Path = tflm_build.DEFAULT_TFLM, int8_kernels: bool = True) -> Path:
    """The app linked for `core` with `arena` bytes of arena: work/tflm.elf (and its map)."""
    srcs = write_app(tflite, info, work, arena, int8_kernels)
    elf = work / "tflm.elf"
    inc = [f"-I{(tflm / i).resolve()}" for i in tflm_build.INCLUDES]
    objs = []
    for src in srcs:  # compiled as the library is (-Os, the core's flags), then linked by g++
        obj = work / (src.name + ".o")
        if src.name != "app.cc" and obj.exists():  # the model's bytes and the start-up do not change between links
            objs.append(str(obj))
            continue
        cc, lang = (tflm_build.CXX, tflm_build.CXXFLAGS) if src.suffix == ".cc" else (tflm_build.CC, tflm_build.CFLAGS)
        defs = ["-DDS_CONSTRUCTORS"] if src.name == "startup.c" else []  # C++ constructors run before main()
        _run([cc, *tflm_build.core_flags(core), *lang, "-Os", *defs, *inc, "-c", str(src), "-o", str(obj)],
             f"compile {src.name}")
        objs.append(str(obj))
    cpu = tflm_build.CORES[core][0]
    _run([tflm_build.CXX, *cpu, "-nostartfiles", "--specs=nano.specs", "--specs=nosys.specs", "-Wl,--gc-sections",
          f"-Wl,-Map={work / 'tflm.map'}", "-T", str(APP / "link.ld"), "-o", str(elf), *objs, str(lib), "-lm"],
         "link the TFLM app")
    return elf


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{proc.stderr[-3000:]}")


@dataclass
class TflmApp:
    """The linked app in the emulator, set up (AllocateTensors ran): `run` one input through Invoke()."""

    elf: Path
    fw: Firmware
    info: ModelInfo
    arena_used: int
    inp: int = 0
    out: int = 0

    @classmethod
    def load(cls, elf: Path, core: str, info: ModelInfo) -> "TflmApp":
        fw = Firmware.load(elf, core=core)
        used = fw.call("tflm_setup")
        if used < 0:
            raise RuntimeError(f"{elf}: AllocateTensors failed (arena too small?)")
        app = cls(elf, fw, info, used)
        app.inp = fw.call("tflm_input_data") & 0xFFFFFFFF
        app.out = fw.call("tflm_output_data") & 0xFFFFFFFF
        return app

    def run(self, x: np.ndarray, count: bool = False) -> tuple[np.ndarray, int, int]:
        """(int8 output, instructions, cycles) of Invoke() on int8 input x (instructions 0 when not counted)."""
        self.fw.write(self.inp, np.ascontiguousarray(x, np.int8).tobytes())
        if count:
            status, n, cycles = self.fw.counted_call("tflm_invoke")
        else:
            status, n, cycles = self.fw.call("tflm_invoke"), 0, 0
        if status != 0:
            raise RuntimeError(f"{self.elf}: Invoke() failed")
        return np.frombuffer(self.fw.read(self.out, self.info.output.size), np.int8).copy(), n, cycles


def build_app(tflite: Path, core: str, cache: Path, work: Path, tflm: Path = tflm_build.DEFAULT_TFLM,
              jobs: int = 2, lean: bool = False, int8_kernels: bool = True) -> tuple[Path, ModelInfo, int]:
    """The library (cached), then the app linked twice: once with a large arena to read arena_used_bytes, then
    with that (16-byte aligned; grown in 16-byte steps should AllocateTensors need more). (ELF, info, arena)."""
    lib = tflm_build.build(core, cache, tflm, jobs, lean=lean)
    info = model_info(tflite)
    probe = link(tflite, info, core, lib, work, ARENA_PROBE, tflm, int8_kernels)
    probe = probe.rename(work / "probe.elf")
    used = TflmApp.load(probe, core, info).arena_used
    arena = -(-used // 16) * 16
    for _ in range(64):
        elf = link(tflite, info, core, lib, work, arena, tflm, int8_kernels)
        try:
            TflmApp.load(elf, core, info)
            return elf, info, arena
        except RuntimeError:
            arena += 16
    raise RuntimeError(f"{tflite}: no arena size near {used} B works")


@dataclass
class SideResult:
    flash: int
    ram: int
    static_ram: int
    stack: int
    arena: int  # the arena array linked (bytes)
    arena_used: int  # what TFLM's arena_used_bytes() reports after AllocateTensors
    instructions: int
    cycles: int
    outputs: np.ndarray  # (N, output size) int8
    extra: dict[str, Any] = field(default_factory=dict)


def tflm_side(tflite: Path, core: str, cache: Path, work: Path, inputs: np.ndarray, counted: int = 2,
              tflm: Path = tflm_build.DEFAULT_TFLM, jobs: int = 2, lean: bool = False,
              int8_kernels: bool = True) -> SideResult:
    """Build, link and run TFLM on `inputs` ((N, input size) int8), instructions counted on the first
    `counted`."""
    elf, info, arena = build_app(tflite, core, cache, work, tflm, jobs, lean, int8_kernels)
    flash, static_ram = image_sizes(elf)
    app = TflmApp.load(elf, core, info)
    outs = np.zeros((len(inputs), info.output.size), np.int8)
    counts = []
    for i, x in enumerate(inputs):
        outs[i], n, c = app.run(x, count=i < counted)
        if i < counted:
            counts.append((n, c))
    stack = app.fw.stack_bytes()
    n_mean = round(float(np.mean([c[0] for c in counts]))) if counts else 0
    c_mean = round(float(np.mean([c[1] for c in counts]))) if counts else 0
    return SideResult(flash, static_ram + stack, static_ram, stack, arena, app.arena_used, n_mean, c_mean, outs)
