"""The firmware image run in an instruction-set emulator (Unicorn, ARMv7-M Thumb-2 with the FPU and DSP
extension): outputs per image, exact instructions per inference, an estimate of Cortex-M4 cycles, and the
stack's high-water mark.

Instructions are counted per translated block (a block hook, not one callback per instruction): each
block's instructions are decoded once with Capstone and priced from Arm's Cortex-M4 technical reference
manual (Table 3-1, and Table 7-1 for the FPU) at zero wait states. Two effects are modelled dynamically: a
taken branch costs a pipeline refill (P, 1 to 3 cycles in the manual; 2 here), and a load or store right
after another one pipelines into a single cycle. Everything else (wait states, bus contention, the
branch-target alignment that makes P vary) is not, which is why cycles and milliseconds are estimates and
instructions are not.
"""

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deepshrink.errors import UserError

FLASH = (0x08000000, 4 << 20)  # the regions of c/link.ld
RAM = (0x20000000, 1 << 20)
SCB = (0xE000E000, 0x1000)  # system control block: start-up writes CPACR there to enable the FPU
STACK_FILL = 0xA5
REFILL = 2  # P of the manual: pipeline refill after a taken branch, 1 to 3 cycles
MAX_SECONDS = 120  # one inference: far beyond any model here; a runaway image stops there


_REGLIST = re.compile(r"\{([^}]*)\}")
_SUFFIX = re.compile(r"\.(w|n|f32|f64|s32|u32|f32\.s32|s32\.f32|32|8|16)$")
_CONDS = ("eq", "ne", "cs", "hs", "cc", "lo", "mi", "pl", "vs", "vc", "hi", "ls", "ge", "lt", "gt", "le", "al")


@dataclass(frozen=True)
class _Block:
    instructions: int
    cycles: int  # without the dynamic effects
    first_mem: bool  # the block starts with a single load/store (pipelines after one)
    last_mem: bool
    branch_at_end: bool


@dataclass
class Counts:
    instructions: int = 0
    cycles: int = 0
    per_image: list[int] = field(default_factory=list)


def _base(mn: str) -> str:
    mn = _SUFFIX.sub("", mn.lower())
    mn = mn.split(".")[0]
    return mn


def _regs(op_str: str) -> int:
    m = _REGLIST.search(op_str)
    if not m:
        return 1
    n = 0
    for part in m.group(1).split(","):
        a, _, b = part.strip().partition("-")
        if b:  # a range such as r4-r7 or s16-s31
            n += int(b.strip()[1:]) - int(a.strip()[1:]) + 1
        else:
            n += 1
    return n


def price(mnemonic: str, op_str: str) -> tuple[int, str]:
    """(cycles, kind) of one instruction at zero wait states; kind is "mem" for a single load or store
    (which pipelines after another), "branch" for anything that may write the PC, else ""."""
    mn = _base(mnemonic)
    writes_pc = "pc" in op_str.split(",")[0] or (mn in ("pop", "ldm", "ldmia") and "pc" in op_str)
    if mn in ("b", "bl", "bx", "blx", "cbz", "cbnz", "tbb", "tbh") or (mn.startswith("b") and mn[1:] in _CONDS):
        return (3 if mn in ("tbb", "tbh") else 1), "branch"
    if mn in ("pop", "ldm", "ldmia", "ldmdb", "ldmfd", "push", "stm", "stmia", "stmdb", "stmfd"):
        return 1 + _regs(op_str), "branch" if writes_pc else ""
    if mn in ("ldrd", "strd", "ldrexd", "strexd"):
        return 3, ""
    if mn.startswith(("ldr", "str")):
        return 2, "branch" if writes_pc else "mem"
    if mn in ("vldr", "vstr"):
        return 2, ""
    if mn in ("vldm", "vldmia", "vldmdb", "vstm", "vstmia", "vstmdb", "vpush", "vpop"):
        return 1 + _regs(op_str), ""
    if mn in ("vmla", "vmls", "vnmla", "vnmls", "vfma", "vfms", "vfnma", "vfnms"):
        return 3, ""
    if mn in ("vdiv", "vsqrt"):
        return 14, ""
    if mn in ("sdiv", "udiv"):
        return 7, ""  # 2 to 12 by operand size in the manual; the middle of that range
    if writes_pc and mn in ("mov", "add"):
        return 1, "branch"
    return 1, ""


@dataclass
class Firmware:
    """A linked image in the emulator, reset and ready: `infer` runs the model's `entry` (`prefix`_infer) on
    one input."""

    elf: Path
    symbols: dict[str, int]
    uc: object
    estack: int
    ebss: int
    entry: str = "ds_infer"
    blocks: dict[tuple[int, int], _Block] = field(default_factory=dict)

    @classmethod
    def load(cls, elf: Path, prefix: str = "ds") -> "Firmware":
        from elftools.elf.elffile import ELFFile
        from elftools.elf.sections import SymbolTableSection
        from unicorn import UC_ARCH_ARM, UC_MODE_MCLASS, UC_MODE_THUMB, Uc
        from unicorn.arm_const import UC_CPU_ARM_CORTEX_M4

        with elf.open("rb") as f:
            image = ELFFile(f)
            segments = [(s["p_paddr"], s.data()) for s in image.iter_segments() if s["p_type"] == "PT_LOAD"]
            symtab = image.get_section_by_name(".symtab")
            if not isinstance(symtab, SymbolTableSection):
                raise RuntimeError(f"{elf}: no symbol table")
            # Function symbols carry the Thumb bit; addresses here are even, calls set the bit again.
            symbols = {s.name: s["st_value"] & ~1 if s["st_info"]["type"] == "STT_FUNC" else s["st_value"]
                       for s in symtab.iter_symbols() if s.name}
        uc = Uc(UC_ARCH_ARM, UC_MODE_THUMB | UC_MODE_MCLASS)
        uc.ctl_set_cpu_model(UC_CPU_ARM_CORTEX_M4)
        for base, size in (FLASH, RAM, SCB):
            uc.mem_map(base, size)
        for addr, data in segments:
            uc.mem_write(addr, data)
        fw = cls(elf, symbols, uc, symbols["_estack"], symbols["_ebss"], f"{prefix}_infer")
        fw._reset()
        return fw

    def _reg(self, name: str) -> int:
        from unicorn import arm_const

        return int(getattr(arm_const, f"UC_ARM_REG_{name}"))

    def _reset(self) -> None:
        """Run the reset handler (copy .data, zero .bss, enable the FPU) up to main, then paint the stack."""
        uc = self.uc
        sp, reset = struct.unpack("<II", bytes(uc.mem_read(FLASH[0], 8)))  # type: ignore[attr-defined]
        uc.reg_write(self._reg("SP"), sp)  # type: ignore[attr-defined]
        uc.emu_start(reset, self.symbols["main"], count=10_000_000)  # type: ignore[attr-defined]
        if uc.reg_read(self._reg("PC")) != self.symbols["main"]:  # type: ignore[attr-defined]
            raise RuntimeError(f"{self.elf}: the reset handler did not reach main")
        free = self.estack - self.ebss
        uc.mem_write(self.ebss, bytes([STACK_FILL]) * free)  # type: ignore[attr-defined]

    def infer(self, x: np.ndarray, logits: int) -> tuple[np.ndarray, int]:
        """The entry point on one int8 input: (int8 logits, the class it returned)."""
        uc = self.uc
        inp = self.symbols["ds_fw_input"]
        out = self.symbols["ds_fw_logits"]
        uc.mem_write(inp, x.astype(np.int8).tobytes())  # type: ignore[attr-defined]
        stop = self.symbols["main"]  # the entry point returns there (LR); main itself never runs again
        for reg, value in (("R0", inp), ("R1", out), ("SP", self.estack), ("LR", stop | 1)):
            uc.reg_write(self._reg(reg), value)  # type: ignore[attr-defined]
        try:
            # A timeout, not an instruction count: counting makes Unicorn check every instruction.
            uc.emu_start(self.symbols[self.entry] | 1, stop, timeout=MAX_SECONDS * 1_000_000)  # type: ignore[attr-defined]
        except Exception as e:  # a fault in the image: our bug, not the user's input
            pc = uc.reg_read(self._reg("PC"))  # type: ignore[attr-defined]
            raise RuntimeError(f"{self.elf}: the emulated firmware faulted at {pc:#x} ({e})") from None
        if uc.reg_read(self._reg("PC")) != stop:  # type: ignore[attr-defined]
            raise RuntimeError(f"{self.elf}: {self.entry} did not return within {MAX_SECONDS} s")
        res = np.frombuffer(bytes(uc.mem_read(out, logits)), np.int8).copy()  # type: ignore[attr-defined]
        return res, int(np.int32(np.uint32(uc.reg_read(self._reg("R0")))))  # type: ignore[attr-defined]

    def count(self, x: np.ndarray, logits: int) -> tuple[np.ndarray, int, int]:
        """(int8 logits, instructions, estimated cycles) of one inference."""
        from unicorn import UC_HOOK_BLOCK

        state = {"n": 0, "cycles": 0, "prev_end": -1, "prev_branch": False, "prev_mem": False}

        def on_block(uc: object, address: int, size: int, _: object) -> None:
            b = self.blocks.get((address, size)) or self._decode(address, size)
            state["n"] += b.instructions
            state["cycles"] += b.cycles
            if state["prev_branch"] and address != state["prev_end"]:
                state["cycles"] += REFILL
            elif state["prev_mem"] and b.first_mem and address == state["prev_end"]:
                state["cycles"] -= 1
            state.update(prev_end=address + size, prev_branch=b.branch_at_end, prev_mem=b.last_mem)

        # Hooks are compiled into translated blocks: flush them so every block is retranslated with the hook,
        # and again after, so uncounted runs go back to full speed.
        hook = self.uc.hook_add(UC_HOOK_BLOCK, on_block)  # type: ignore[attr-defined]
        self.uc.ctl_flush_tb()  # type: ignore[attr-defined]
        try:
            out = self.infer(x, logits)[0]
        finally:
            self.uc.hook_del(hook)  # type: ignore[attr-defined]
            self.uc.ctl_flush_tb()  # type: ignore[attr-defined]
        if state["prev_branch"]:  # the final return into `main` also refills the pipeline
            state["cycles"] += REFILL
        return out, int(state["n"]), int(state["cycles"])

    def _decode(self, address: int, size: int) -> _Block:
        import capstone

        md = capstone.Cs(capstone.CS_ARCH_ARM, capstone.CS_MODE_THUMB | capstone.CS_MODE_MCLASS)
        code = bytes(self.uc.mem_read(address, size))  # type: ignore[attr-defined]
        n = cycles = 0
        kinds: list[str] = []
        for ins in md.disasm(code, address):
            c, kind = price(ins.mnemonic, ins.op_str)
            if kind == "mem" and kinds and kinds[-1] == "mem":
                c -= 1  # neighbouring single loads/stores pipeline their address and data phases
            n += 1
            cycles += c
            kinds.append(kind)
        if n == 0 or sum(i.size for i in md.disasm(code, address)) != size:
            raise UserError(f"{self.elf}: cannot decode the code at {address:#x}")
        block = _Block(n, cycles, kinds[0] == "mem", kinds[-1] == "mem", kinds[-1] == "branch")
        self.blocks[(address, size)] = block
        return block

    def stack_bytes(self) -> int:
        """The deepest the stack has gone since reset (bytes below the top still unpainted)."""
        free = self.estack - self.ebss
        mem = np.frombuffer(bytes(self.uc.mem_read(self.ebss, free)), np.uint8)  # type: ignore[attr-defined]
        touched = np.flatnonzero(mem != STACK_FILL)
        return int(free - touched[0]) if touched.size else 0
