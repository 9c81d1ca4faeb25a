"""Analytic energy per image at 45 nm (Horowitz, ISSCC 2014; the figures Han et al. 2016 and the
reference study quote): arithmetic per MAC at the variant's precision plus one read per weight from
on-chip SRAM when the whole model fits the on-chip budget, else from DRAM.
"""

from dataclasses import dataclass

# pJ per operation at 45 nm. fp64 is not in Horowitz's table: extrapolated as 4x the fp32 multiply
# (multiplier area/energy grows ~quadratically with mantissa width) and 2x the add.
MAC_PJ: dict[str, float] = {
    "fp64": 4 * 3.7 + 2 * 0.9,
    "fp32": 3.7 + 0.9,  # fp32 mult + add
    "fp16": 1.1 + 0.4,
    "int8": 0.2 + 0.1,  # int8 mult, accumulated in int32 (32-bit int add 0.1 pJ)
    "int4": 0.2 + 0.1,  # no cheaper published figure: costed as int8
    "int2": 0.2 + 0.1,
}
SRAM_PJ_PER_32BIT = 5.0
DRAM_PJ_PER_32BIT = 640.0
DEFAULT_SRAM_BUDGET_BYTES = 256 * 1024


@dataclass(frozen=True)
class EnergyEstimate:
    nj_per_image: float
    compute_nj: float
    memory_nj: float
    memory: str  # "sram" or "dram"


def estimate(macs: int, weight_bytes: int, precision: str,
             sram_budget_bytes: int = DEFAULT_SRAM_BUDGET_BYTES) -> EnergyEstimate:
    """`weight_bytes`: bytes read per image (the deployed weights); `macs`: MACs actually executed."""
    mac_pj = MAC_PJ.get(precision, MAC_PJ["fp32"])
    on_chip = weight_bytes <= sram_budget_bytes
    per_word = SRAM_PJ_PER_32BIT if on_chip else DRAM_PJ_PER_32BIT
    compute = macs * mac_pj / 1000.0
    memory = (weight_bytes / 4.0) * per_word / 1000.0
    return EnergyEstimate(compute + memory, compute, memory, "sram" if on_chip else "dram")
