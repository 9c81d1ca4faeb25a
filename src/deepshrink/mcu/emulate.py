"""The firmware image run in an instruction-set emulator (Unicorn, M-profile Thumb) AS its core (Cortex-M0+,
M3, M4, M7 or M33: an instruction the core lacks faults): outputs per image, exact instructions per
inference, an estimate of the core's cycles, and the stack's high-water mark.

Instructions are counted per translated block (a block hook, not one callback per instruction): each
block's instructions are decoded once with Capstone and priced from a cycle table at zero wait states:

- "cortex-m4": Arm's Cortex-M4 technical reference manual (Table 3-1, and Table 7-1 for the FPU). A taken
  branch costs a pipeline refill (P, 1 to 3 cycles in the manual; 2 here), and a load or store right after
  another one pipelines into a single cycle. Also used for the Cortex-M3 (its TRM's Table 18-1 gives the
  same timings for the instructions both have), the Cortex-M33 (ARMv8-M Mainline, a 3-stage pipeline like
  the M4's) and the Cortex-M7, for which it is pessimistic: the M7 issues two instructions per cycle and
  predicts branches, so its real cycles are lower.
- "cortex-m0plus": Arm's Cortex-M0+ technical reference manual (DDI 0484, section 3.3), for the fast
  (single-cycle) multiplier configuration: loads and stores 2 cycles each with no pipelining between
  them, LDM/STM/PUSH/POP 1+N, POP with PC 3+N, a taken branch 2 (the 2-stage pipeline refills in 1), BL 3,
  MULS 1, DMB/DSB/ISB/MRS/MSR 3, everything else 1. Division and floating point are library calls
  (libgcc), counted instruction by instruction.

Everything else (wait states, bus contention, the branch-target alignment that makes P vary) is not
modelled, which is why cycles and milliseconds are estimates and instructions are not.

A fault (an undefined instruction for the core, a bad memory access) ends the run with a RuntimeError
naming the address: the start-up's Default_Handler, where every exception lands, is watched.
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
REFILL = 2  # P of the Cortex-M4 manual: pipeline refill after a taken branch, 1 to 3 cycles
DEFAULT_CORE = "cortex-m4"
MAX_SECONDS = 120  # one inference: far beyond any model here; a runaway image stops there


_REGLIST = re.compile(r"\{([^}]*)\}")
_SUFFIX = re.compile(r"\.(w|n|f32|f64|s32|u32|f32\.s32|s32\.f32|32|8|16)$")
# The DSP extension's instructions (ARMv7E-M): SIMD add/subtract, saturating arithmetic, packing, the dual and
# long multiply-accumulates. UMULL/SMULL/UMLAL/SMLAL are plain ARMv7-M and stay out.
_DSP = frozenset(
    """
sadd16 sadd8 ssub16 ssub8 sasx ssax qadd16 qadd8 qsub16 qsub8 qasx qsax shadd16 shadd8 shsub16 shsub8 shasx shsax
uadd16 uadd8 usub16 usub8 uasx usax uqadd16 uqadd8 uqsub16 uqsub8 uqasx uqsax uhadd16 uhadd8 uhsub16 uhsub8 uhasx
uhsax qadd qsub qdadd qdsub sel usad8 usada8 ssat16 usat16 sxtb16 uxtb16 sxtab16 uxtab16 sxtab sxtah uxtab uxtah
pkhbt pkhtb smlabb smlabt smlatb smlatt smlawb smlawt smulbb smulbt smultb smultt smulwb smulwt smlad smladx smlsd
smlsdx smlald smlaldx smlsld smlsldx smlalbb smlalbt smlaltb smlaltt smuad smuadx smusd smusdx smmla smmlar smmls
smmlsr smmul smmulr umaal""".split()  # noqa: SIM905
)
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


def _price_m4(mn: str, op_str: str, writes_pc: bool) -> tuple[int, str]:
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


def _price_m0plus(mn: str, op_str: str, writes_pc: bool) -> tuple[int, str]:
    """Base cycles before the refill (1 cycle, added when a branch is taken): B 1+1, BL 2+1, BX/BLX 1+1,
    POP {..., pc} (2+N)+1."""
    if mn == "bl":
        return 2, "branch"
    if mn in ("b", "bx", "blx") or (mn.startswith("b") and mn[1:] in _CONDS):
        return 1, "branch"
    if mn in ("pop", "ldm", "ldmia", "ldmfd", "push", "stm", "stmia", "stmea"):
        return (2 if writes_pc else 1) + _regs(op_str), "branch" if writes_pc else ""
    if mn.startswith(("ldr", "str")):
        return 2, ""  # no pipelining of neighbouring loads/stores on the M0+
    if mn in ("dmb", "dsb", "isb", "mrs", "msr"):
        return 3, ""
    if writes_pc and mn in ("mov", "add"):
        return 1, "branch"
    return 1, ""  # MULS included: the fast multiplier


@dataclass(frozen=True)
class CycleTable:
    name: str
    price: object  # (mnemonic, op_str, writes_pc) -> (cycles, kind)
    refill: int  # cycles added when a branch is taken
    pipelined_mem: bool  # a single load/store right after another costs one cycle less


CYCLE_TABLES: dict[str, CycleTable] = {
    "cortex-m4": CycleTable("cortex-m4", _price_m4, REFILL, True),
    "cortex-m0plus": CycleTable("cortex-m0plus", _price_m0plus, 1, False),
}


def cycle_table(core: str) -> CycleTable:
    """The table a core's cycles are priced with (its toolchain.Target's cycle_table; "cortex-m4" else)."""
    from deepshrink.mcu.toolchain import TARGETS

    target = TARGETS.get(core)
    return CYCLE_TABLES[target.cycle_table if target else core if core in CYCLE_TABLES else DEFAULT_CORE]


def price(mnemonic: str, op_str: str, core: str = DEFAULT_CORE) -> tuple[int, str]:
    """(cycles, kind) of one instruction at zero wait states on `core`; kind is "mem" for a single load or store
    (which pipelines after another, where the core does), "branch" for anything that may write the PC, else ""."""
    mn = _base(mnemonic)
    writes_pc = "pc" in op_str.split(",")[0] or (mn in ("pop", "ldm", "ldmia") and "pc" in op_str)
    return cycle_table(core).price(mn, op_str, writes_pc)  # type: ignore[operator]


class FirmwareFault(RuntimeError):
    """The emulated image faulted (an instruction its core lacks, a bad access) or never returned."""


@dataclass
class Firmware:
    """A linked image in the emulator, reset and ready, run as `core`: `infer` runs the model's `entry`
    (`prefix`_infer) on one input; `call` runs any function of the image."""

    elf: Path
    symbols: dict[str, int]
    uc: object
    estack: int
    ebss: int
    entry: str = "ds_infer"
    blocks: dict[tuple[int, int], _Block] = field(default_factory=dict)
    core: str = DEFAULT_CORE
    fault: str | None = None  # the exception the last run took, if any

    @classmethod
    def load(cls, elf: Path, prefix: str = "ds", core: str = DEFAULT_CORE) -> "Firmware":
        from elftools.elf.elffile import ELFFile
        from elftools.elf.sections import SymbolTableSection
        from unicorn import UC_ARCH_ARM, UC_MODE_THUMB, Uc, arm_const

        from deepshrink.mcu.toolchain import TARGETS

        if core not in TARGETS:
            raise UserError(f"core {core!r}: expected one of {', '.join(TARGETS)}")
        with elf.open("rb") as f:
            image = ELFFile(f)
            segments = [(s["p_paddr"], s.data()) for s in image.iter_segments() if s["p_type"] == "PT_LOAD"]
            symtab = image.get_section_by_name(".symtab")
            if not isinstance(symtab, SymbolTableSection):
                raise RuntimeError(f"{elf}: no symbol table")
            # Function symbols carry the Thumb bit; addresses here are even, calls set the bit again.
            symbols = {s.name: s["st_value"] & ~1 if s["st_info"]["type"] == "STT_FUNC" else s["st_value"]
                       for s in symtab.iter_symbols() if s.name}
        # Not UC_MODE_MCLASS: Unicorn 2.1 then forces the Cortex-M33 whatever model is set (cpu_arm_init); the
        # M-profile comes from the model itself, and ctl_set_cpu_model must precede the first mapping.
        uc = Uc(UC_ARCH_ARM, UC_MODE_THUMB)
        uc.ctl_set_cpu_model(int(getattr(arm_const, TARGETS[core].unicorn_cpu)))
        for base, size in (FLASH, RAM, SCB):
            uc.mem_map(base, size)
        for addr, data in segments:
            uc.mem_write(addr, data)
        fw = cls(elf, symbols, uc, symbols["_estack"], symbols["_ebss"], f"{prefix}_infer", core=core)
        fw._watch_faults()
        fw._reset()
        return fw

    def _reg(self, name: str) -> int:
        from unicorn import arm_const

        return int(getattr(arm_const, f"UC_ARM_REG_{name}"))

    def _watch_faults(self) -> None:
        """Every exception vector but reset leads to Default_Handler (startup.c); a hook on its first instruction
        only (cheap: no other block is hooked) stops the run there and records the exception taken."""
        from unicorn import UC_HOOK_CODE

        handlers = {self.symbols[n] for n in ("Default_Handler", "HardFault_Handler") if n in self.symbols}

        def on_fault(uc: object, address: int, size: int, _: object) -> None:
            ipsr = uc.reg_read(self._reg("XPSR")) & 0x1FF  # type: ignore[attr-defined]
            names = {2: "NMI", 3: "HardFault", 4: "MemManage", 5: "BusFault", 6: "UsageFault", 7: "SecureFault"}
            # The stacked frame's PC (offset 24) is the faulting instruction.
            sp = uc.reg_read(self._reg("SP"))  # type: ignore[attr-defined]
            pc = struct.unpack("<I", bytes(uc.mem_read(sp + 24, 4)))[0]  # type: ignore[attr-defined]
            self.fault = f"{names.get(ipsr, f'exception {ipsr}')} at {pc:#x}"
            uc.emu_stop()  # type: ignore[attr-defined]

        for h in handlers:
            self.uc.hook_add(UC_HOOK_CODE, on_fault, begin=h, end=h)  # type: ignore[attr-defined]

    def _reset(self) -> None:
        """Run the reset handler (copy .data, zero .bss, enable the FPU, C++ constructors where the image has
        them) up to main, then paint the stack."""
        uc = self.uc
        sp, reset = struct.unpack("<II", bytes(uc.mem_read(FLASH[0], 8)))  # type: ignore[attr-defined]
        uc.reg_write(self._reg("SP"), sp)  # type: ignore[attr-defined]
        self._start(reset, self.symbols["main"], "the reset handler")
        free = self.estack - self.ebss
        uc.mem_write(self.ebss, bytes([STACK_FILL]) * free)  # type: ignore[attr-defined]

    def _start(self, begin: int, stop: int, what: str) -> None:
        uc = self.uc
        self.fault = None
        try:
            # A timeout, not an instruction count: counting makes Unicorn check every instruction.
            uc.emu_start(begin | 1, stop, timeout=MAX_SECONDS * 1_000_000)  # type: ignore[attr-defined]
        except FirmwareFault:  # raised by a hook (_check_isa)
            raise
        except Exception as e:  # a fault in the image: our bug, not the user's input
            pc = uc.reg_read(self._reg("PC"))  # type: ignore[attr-defined]
            raise FirmwareFault(f"{self.elf}: the emulated firmware ({self.core}) faulted at {pc:#x} "
                                f"in {what} ({e})") from None
        if self.fault:
            raise FirmwareFault(f"{self.elf}: the emulated firmware ({self.core}) took a {self.fault} in {what} "
                                "(an instruction this core lacks, or a bad memory access)")
        if uc.reg_read(self._reg("PC")) != stop:  # type: ignore[attr-defined]
            raise FirmwareFault(f"{self.elf}: {what} did not return within {MAX_SECONDS} s")

    def write(self, address: int, data: bytes) -> None:
        self.uc.mem_write(address, data)  # type: ignore[attr-defined]

    def read(self, address: int, size: int) -> bytes:
        return bytes(self.uc.mem_read(address, size))  # type: ignore[attr-defined]

    def call(self, entry: str, *args: int) -> int:
        """Run the image's function `entry` with up to four integer/pointer arguments, from the top of the
        stack, to its return: its int32 result."""
        uc = self.uc
        stop = self.symbols["main"]  # the function returns there (LR); main itself never runs again
        regs = [(f"R{i}", a & 0xFFFFFFFF) for i, a in enumerate(args)]
        for reg, value in (*regs, ("SP", self.estack), ("LR", stop | 1)):
            uc.reg_write(self._reg(reg), value)  # type: ignore[attr-defined]
        self._start(self.symbols[entry], stop, entry)
        return int(np.int32(np.uint32(uc.reg_read(self._reg("R0")))))  # type: ignore[attr-defined]

    def counted_call(self, entry: str, *args: int) -> tuple[int, int, int]:
        """`call`, counted: (result, instructions, estimated cycles on this core)."""
        state = self._counting()
        try:
            result = self.call(entry, *args)
        finally:
            self._stop_counting(state)
        return result, int(state["n"]), int(state["cycles"])

    def infer(self, x: np.ndarray, logits: int) -> tuple[np.ndarray, int]:
        """The entry point on one int8 input: (int8 logits, the class it returned)."""
        inp = self.symbols["ds_fw_input"]
        out = self.symbols["ds_fw_logits"]
        self.write(inp, x.astype(np.int8).tobytes())
        cls = self.call(self.entry, inp, out)
        return np.frombuffer(self.read(out, logits), np.int8).copy(), cls

    def count(self, x: np.ndarray, logits: int) -> tuple[np.ndarray, int, int]:
        """(int8 logits, instructions, estimated cycles) of one inference."""
        state = self._counting()
        try:
            out = self.infer(x, logits)[0]
        finally:
            self._stop_counting(state)
        return out, int(state["n"]), int(state["cycles"])

    def _counting(self) -> dict:
        from unicorn import UC_HOOK_BLOCK

        table = cycle_table(self.core)
        state: dict = {"n": 0, "cycles": 0, "prev_end": -1, "prev_branch": False, "prev_mem": False,
                       "table": table}

        def on_block(uc: object, address: int, size: int, _: object) -> None:
            b = self.blocks.get((address, size)) or self._decode(address, size)
            state["n"] += b.instructions
            state["cycles"] += b.cycles
            if state["prev_branch"] and address != state["prev_end"]:
                state["cycles"] += table.refill
            elif table.pipelined_mem and state["prev_mem"] and b.first_mem and address == state["prev_end"]:
                state["cycles"] -= 1
            state.update(prev_end=address + size, prev_branch=b.branch_at_end, prev_mem=b.last_mem)

        # Hooks are compiled into translated blocks: flush them so every block is retranslated with the hook,
        # and again after, so uncounted runs go back to full speed.
        state["hook"] = self.uc.hook_add(UC_HOOK_BLOCK, on_block)  # type: ignore[attr-defined]
        self.uc.ctl_flush_tb()  # type: ignore[attr-defined]
        return state

    def _stop_counting(self, state: dict) -> None:
        self.uc.hook_del(state["hook"])  # type: ignore[attr-defined]
        self.uc.ctl_flush_tb()  # type: ignore[attr-defined]
        if state["prev_branch"]:  # the final return into `main` also refills the pipeline
            state["cycles"] += state["table"].refill

    def _decode(self, address: int, size: int) -> _Block:
        import capstone

        md = capstone.Cs(capstone.CS_ARCH_ARM, capstone.CS_MODE_THUMB | capstone.CS_MODE_MCLASS)
        code = bytes(self.uc.mem_read(address, size))  # type: ignore[attr-defined]
        table = cycle_table(self.core)
        n = cycles = 0
        kinds: list[str] = []
        for ins in md.disasm(code, address):
            self._check_isa(ins.mnemonic, ins.address)
            c, kind = price(ins.mnemonic, ins.op_str, self.core)
            if table.pipelined_mem and kind == "mem" and kinds and kinds[-1] == "mem":
                c -= 1  # neighbouring single loads/stores pipeline their address and data phases
            n += 1
            cycles += c
            kinds.append(kind)
        if n == 0 or sum(i.size for i in md.disasm(code, address)) != size:
            raise UserError(f"{self.elf}: cannot decode the code at {address:#x}")
        block = _Block(n, cycles, kinds[0] == "mem", kinds[-1] == "mem", kinds[-1] == "branch")
        self.blocks[(address, size)] = block
        return block

    def _check_isa(self, mnemonic: str, address: int) -> None:
        """Unicorn's Cortex-M3 model executes DSP-extension instructions (its Cortex-M0 faults on every
        Thumb-2 one): counted runs check each decoded instruction against the core's facts as well."""
        from deepshrink.mcu.toolchain import TARGETS

        target = TARGETS[self.core]
        mn = _base(mnemonic)
        if (not target.has_dsp and mn in _DSP) or (not target.has_fpu and mn.startswith("v")):
            raise FirmwareFault(f"{self.elf}: {mnemonic} at {address:#x} is not an instruction of the {self.core}")

    def stack_bytes(self) -> int:
        """The deepest the stack has gone since reset (bytes below the top still unpainted)."""
        free = self.estack - self.ebss
        mem = np.frombuffer(bytes(self.uc.mem_read(self.ebss, free)), np.uint8)  # type: ignore[attr-defined]
        touched = np.flatnonzero(mem != STACK_FILL)
        return int(free - touched[0]) if touched.size else 0
