"""TensorFlow Lite Micro + CMSIS-NN (../shared/tflm, see its README) built once per Cortex-M core into a static
library, cached: CACHE/<core>/libtflm.a, rebuilt only when missing. Not part of deepshrink: the peer the bench
measures against, compiled as TFLM's own Makefile compiles it for `TARGET=cortex_m_generic
OPTIMIZED_KERNEL_DIR=cmsis_nn` (core -Os, kernels -O2), with -mcpu/-mfloat-abi/-mfpu per core and ARM_MATH_DSP
only where the core has the DSP extension (CMSIS-NN falls back to plain C elsewhere; ARM_MATH_MVEI never).

    python benchmarks/tflm_build.py --core cortex-m4 --cache runs/bench-mcu/tflm-cache [--tflm ../shared/tflm]
"""

import argparse
import os
import shutil
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TFLM = REPO.parent / "shared" / "tflm"
CXX, CC, AR = "arm-none-eabi-g++", "arm-none-eabi-gcc", "arm-none-eabi-ar"

# Per core: the code-generation flags (the same as deepshrink's own targets, toolchain.TARGETS) and whether the
# core has the DSP extension (CMSIS-NN's ARM_MATH_DSP paths).
CORES: dict[str, tuple[tuple[str, ...], bool]] = {
    "cortex-m0plus": (("-mcpu=cortex-m0plus", "-mthumb", "-mfloat-abi=soft"), False),
    "cortex-m3": (("-mcpu=cortex-m3", "-mthumb", "-mfloat-abi=soft"), False),
    "cortex-m4": (("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"), True),
    "cortex-m7": (("-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-sp-d16"), True),
    "cortex-m33": (("-mcpu=cortex-m33", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-sp-d16"), True),
}

DEFINES = ("TF_LITE_STATIC_MEMORY", "TF_LITE_MCU_DEBUG_LOG", "TF_LITE_STRIP_ERROR_STRINGS", "CMSIS_NN",
           "ARM_MATH_LOOPUNROLL", "CORTEX_M_GENERIC")
INCLUDES = (".", "third_party/flatbuffers/include", "third_party/gemmlowp", "third_party/ruy", "third_party/kissfft",
            "third_party/cmsis_nn", "third_party/cmsis_nn/Include", "third_party/cmsis/CMSIS/Core/Include")
# TFLM's cortex_m_generic flags (tensorflow/lite/micro/tools/make/targets/cortex_m_generic_makefile.inc and the
# main Makefile's CCFLAGS/CXXFLAGS), warnings aside.
COMMON = ("-fno-unwind-tables", "-ffunction-sections", "-fdata-sections", "-fmessage-length=0", "-funsigned-char",
          "-mlittle-endian", "-fomit-frame-pointer")
CXXFLAGS = ("-std=c++17", "-fno-rtti", "-fno-exceptions", "-fno-threadsafe-statics", "-fno-use-cxa-atexit")
CFLAGS = ("-std=c11",)
KERNEL_DIRS = ("tensorflow/lite/micro/kernels/", "third_party/cmsis_nn/")  # -O2 (KERNEL_OPTIMIZATION_LEVEL)


def core_flags(core: str) -> list[str]:
    """Code generation and preprocessor flags for `core`, shared by the library and the app that links it."""
    cpu, dsp = CORES[core]
    return [*cpu, *COMMON, *(f"-D{d}" for d in DEFINES), *(["-DARM_MATH_DSP"] if dsp else [])]


# TFLM's signal library (audio front-end operators) and the FFT under it: objects of the archive that only a model
# using signal operators pulls in, so leaving them out changes no image linked from a model without them
# (the MLPerf Tiny ones); it saves 12 % of the build. An image that needs them fails to link, it is never wrong.
LEAN_SKIP = ("signal/", "third_party/kissfft/")


def sources(tflm: Path, lean: bool = False) -> list[str]:
    """Every .cc/.c of the tree (the microlite library's sources), relative to it, sorted; `lean`: without
    LEAN_SKIP."""
    found = [p.relative_to(tflm).as_posix() for p in tflm.rglob("*") if p.suffix in (".cc", ".c") and p.is_file()]
    # kissfft's tools are programs of their own, not part of the library (TFLM's Makefile leaves them out too).
    return sorted(s for s in found if "/tools/" not in s and not (lean and s.startswith(LEAN_SKIP)))


def _makefile(tflm: Path, core: str, objdir: Path, lean: bool) -> str:
    flags = " ".join(core_flags(core))
    inc = " ".join(f"-I{tflm / i}" for i in INCLUDES)
    objs = []
    rules = []
    for src in sources(tflm, lean):
        obj = objdir / (src.replace("/", "__") + ".o")
        opt = "-O2" if src.startswith(KERNEL_DIRS) else "-Os"
        cc, lang = (CXX, " ".join(CXXFLAGS)) if src.endswith(".cc") else (CC, " ".join(CFLAGS))
        rules.append(f"{obj}: {tflm / src}\n\t@{cc} {flags} {lang} {opt} {inc} -c $< -o $@")
        objs.append(str(obj))
    lib = objdir.parent / "libtflm.a"
    return (f"all: {lib}\n\n{lib}: {' '.join(objs)}\n\t@rm -f $@.tmp && {AR} rcs $@.tmp $^ && mv $@.tmp $@\n\n"
            + "\n\n".join(rules) + "\n")


def build(core: str, cache: Path, tflm: Path = DEFAULT_TFLM, jobs: int = 2, verbose: bool = True,
          lean: bool = False) -> Path:
    """CACHE/<core>/libtflm.a, built with `make -j<jobs>` when missing (`lean`: without LEAN_SKIP). Returns its
    path."""
    lib = cache / core / "libtflm.a"
    if lib.is_file():
        return lib
    if not (tflm / "tensorflow" / "lite" / "micro").is_dir():
        raise FileNotFoundError(f"{tflm}: not a TFLM source tree (see ../shared/tflm/README.md)")
    if shutil.which(CXX) is None:
        raise FileNotFoundError(f"{CXX} not found (apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi "
                                "libstdc++-arm-none-eabi-newlib)")
    objdir = cache / core / "obj"
    objdir.mkdir(parents=True, exist_ok=True)
    mk = cache / core / "Makefile"
    mk.write_text(_makefile(tflm.resolve(), core, objdir.resolve(), lean))
    t0 = time.time()
    if verbose:
        print(f"building TFLM for {core} ({len(sources(tflm, lean))} files, make -j{jobs}) into {lib}", flush=True)
    proc = subprocess.run(["make", "-f", str(mk), f"-j{jobs}"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"TFLM build for {core} failed:\n{proc.stderr[-4000:]}")
    (cache / core / "build_seconds.txt").write_text(f"{time.time() - t0:.1f}\n")
    (cache / core / "build_files.txt").write_text(f"{len(sources(tflm, lean))}{' (lean)' if lean else ''}\n")
    if verbose:
        print(f"built TFLM for {core} in {time.time() - t0:.0f} s", flush=True)
    return lib


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--core", action="append", required=True, choices=sorted(CORES))
    ap.add_argument("--cache", type=Path, default=Path("runs/bench-mcu/tflm-cache"))
    ap.add_argument("--tflm", type=Path, default=DEFAULT_TFLM)
    ap.add_argument("-j", "--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--lean", action="store_true", help=f"leave out {', '.join(LEAN_SKIP)} (see LEAN_SKIP)")
    args = ap.parse_args()
    for core in args.core:
        build(core, args.cache, args.tflm, args.jobs, lean=args.lean)


if __name__ == "__main__":
    main()
