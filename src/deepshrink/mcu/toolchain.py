"""Compilers: the host build (the system `cc`, a shared library loaded through ctypes) and the target build
(Arm's GNU toolchain, `arm-none-eabi-gcc`, a firmware image with our own start-up and linker script), and
the image's flash and static RAM read from its ELF sections."""

import shutil
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from deepshrink.errors import UserError
from deepshrink.mcu.templates import render

OPTIMIZE = ("speed", "size")  # deepshrink mcu --optimize: kernels specialized per layer shape, or not
WARNINGS = ("-std=c99", "-Wall", "-Wextra", "-Wpedantic")
# Loops GCC would turn into memcpy/memset calls stay loops: the image links no C library.
FIRMWARE = ("-Os", "-ffunction-sections", "-fdata-sections", "-fno-tree-loop-distribute-patterns",
            "-nostartfiles", "-nostdlib", "-Wl,--gc-sections")


@dataclass(frozen=True)
class Target:
    """A Cortex-M core: its GCC flags and the facts the emulator and the kernels need."""

    name: str
    cpu_flags: tuple[str, ...]
    has_fpu: bool = False  # single-precision FPU, used (hard-float ABI)
    has_dsp: bool = False  # the DSP extension (SMLAD, SXTB16, ...): __ARM_FEATURE_DSP, the kernels' DS_DSP path
    unicorn_cpu: str = "UC_CPU_ARM_CORTEX_M4"  # the CPU model the image runs as (unicorn.arm_const)
    cycle_table: str = "cortex-m4"  # emulate.CYCLE_TABLES: the per-instruction timings its cycles are priced with


# Cortex-M33: GCC's plain -mcpu=cortex-m33 includes the (optional) DSP extension, as the M33 parts sold with an
# FPU (STM32L5/U5, nRF5340, LPC55S) all have it, so it is chosen deliberately: DSP and FPU on.
TARGETS: dict[str, Target] = {
    "cortex-m0plus": Target("cortex-m0plus", ("-mcpu=cortex-m0plus", "-mthumb", "-mfloat-abi=soft"),
                            unicorn_cpu="UC_CPU_ARM_CORTEX_M0", cycle_table="cortex-m0plus"),
    "cortex-m3": Target("cortex-m3", ("-mcpu=cortex-m3", "-mthumb", "-mfloat-abi=soft"),
                        unicorn_cpu="UC_CPU_ARM_CORTEX_M3"),
    "cortex-m4": Target("cortex-m4", ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"),
                        has_fpu=True, has_dsp=True),
    "cortex-m7": Target("cortex-m7", ("-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-sp-d16"),
                        has_fpu=True, has_dsp=True, unicorn_cpu="UC_CPU_ARM_CORTEX_M7"),
    "cortex-m33": Target("cortex-m33", ("-mcpu=cortex-m33", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-sp-d16"),
                         has_fpu=True, has_dsp=True, unicorn_cpu="UC_CPU_ARM_CORTEX_M33"),
}
DEFAULT_TARGET = "cortex-m4"
TARGET_NAMES = (*TARGETS, "host")
CROSS = "arm-none-eabi-gcc"
INSTALL_HINT = "apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi (or `make setup` as root)"


def support_file(name: str) -> str:
    return resources.files("deepshrink.mcu").joinpath(f"c/{name}").read_text()


def _run(cmd: list[str], what: str) -> str:
    """Run a compiler; a failure is ours (generated code that does not compile), so not a UserError."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or ["no output"])[0]
        raise RuntimeError(f"{what} failed: {first}")
    return proc.stderr


def host_compiler() -> str:
    for cc in ("cc", "gcc", "clang"):
        if path := shutil.which(cc):
            return path
    raise UserError("no C compiler (cc, gcc or clang) on PATH for the host build")


def build_host(src: Path, out: Path, prefix: str = "ds") -> tuple[Path, str]:
    """model.c + the host harness (calling the model's `prefix`_infer...) as a shared library: (library,
    compiler warnings)."""
    (out / "host.c").write_text(render("host.c.j2", p=prefix, P=prefix.upper()))
    lib = out / "libmodel.so"
    # -O3 for this machine: the test set runs through it; integers are exact however they are vectorized,
    # and -std=c99 keeps float expressions uncontracted (no FMA but the written ones).
    cmd = [host_compiler(), *WARNINGS, "-O3", "-march=native", "-shared", "-fPIC", "-I", str(src), "-o", str(lib),
           str(src / "model.c"), str(out / "host.c"), "-lm"]
    return lib, _run(cmd, "host build")


def cross_compiler() -> str | None:
    return shutil.which(CROSS)


def build_target(src: Path, firmware: Path, target: str, prefix: str = "ds") -> tuple[Path, str]:
    """The firmware image (start-up, an inference loop calling `prefix`_infer, the model), linked for `target`:
    (ELF, warnings)."""
    cc = cross_compiler()
    if cc is None:
        raise UserError(f"{CROSS} not found: {INSTALL_HINT}")
    firmware.mkdir(parents=True, exist_ok=True)
    for name in ("startup.c", "link.ld"):
        (firmware / name).write_text(support_file(name))
    (firmware / "main.c").write_text(render("main.c.j2", p=prefix, P=prefix.upper()))
    elf = src / "firmware.elf"
    cmd = [cc, *TARGETS[target].cpu_flags, *WARNINGS, *FIRMWARE, "-I", str(src), "-T", str(firmware / "link.ld"),
           "-o", str(elf), str(firmware / "startup.c"), str(firmware / "main.c"), str(src / "model.c"), "-lgcc"]
    return elf, _run(cmd, "target build")


def compiler_version(cc: str) -> str:
    proc = subprocess.run([cc, "--version"], capture_output=True, text=True)
    return (proc.stdout.splitlines() or [cc])[0]


def warning_count(output: str) -> int:
    """The warnings a compiler printed (its stderr, as build_host and build_target return it)."""
    return len([w for w in output.splitlines() if "warning:" in w])


def image_sizes(elf: Path) -> tuple[int, int]:
    """(flash, static RAM) of a linked image: flash holds code, constants and .data's initial values
    (text + rodata + data); RAM holds .data and .bss."""
    from elftools.elf.constants import SH_FLAGS
    from elftools.elf.elffile import ELFFile

    flash = ram = 0
    with elf.open("rb") as f:
        for sec in ELFFile(f).iter_sections():
            flags = sec["sh_flags"]
            if not flags & SH_FLAGS.SHF_ALLOC:
                continue
            loaded = sec["sh_type"] != "SHT_NOBITS"
            if flags & SH_FLAGS.SHF_WRITE:
                ram += sec["sh_size"]
                flash += sec["sh_size"] if loaded else 0
            else:
                flash += sec["sh_size"]
    return int(flash), int(ram)
