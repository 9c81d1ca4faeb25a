"""Measured energy per image where the platform exposes a counter (SPEC §6b): RAPL package energy on
CPU (Linux powercap), NVML total energy on CUDA. Elsewhere the answer is "n/a" with the reason.
"""

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

RAPL = Path("/sys/class/powercap/intel-rapl:0/energy_uj")

EnergyCounter = Callable[[], float]  # joules since an arbitrary origin


def _rapl() -> tuple[EnergyCounter | None, str]:
    if not RAPL.exists():
        return None, "no RAPL counter (/sys/class/powercap absent: VM or non-Intel/AMD-RAPL host)"
    try:
        RAPL.read_text()
    except OSError as e:
        return None, f"RAPL counter not readable ({e.strerror})"
    return (lambda: int(RAPL.read_text()) / 1e6), "rapl"


def _nvml() -> tuple[EnergyCounter | None, str]:
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except Exception as e:  # not installed, no driver, or the GPU lacks the counter
        return None, f"NVML energy counter unavailable ({type(e).__name__})"
    return (lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0), "nvml"


def energy_counter(device: str) -> tuple[EnergyCounter | None, str]:
    """(counter, source) or (None, reason)."""
    return _nvml() if device == "cuda" else _rapl()


def measure_energy_per_image(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, device: str,
                             batch: int = 256, min_seconds: float = 1.0) -> tuple[float | None, str]:
    """Average nJ per image over repeated passes of `x` lasting at least `min_seconds`."""
    counter, source = energy_counter(device)
    if counter is None:
        return None, source
    images = 0
    start_j, start_t = counter(), time.perf_counter()
    while time.perf_counter() - start_t < min_seconds:
        for i in range(0, len(x), batch):
            run(x[i : i + batch])
        images += len(x)
    joules = counter() - start_j
    if joules <= 0:  # counter wrapped or did not tick: say so rather than report zero
        return None, f"{source} counter did not advance"
    return joules / images * 1e9, source
