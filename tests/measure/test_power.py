"""Measured energy per image: a RAPL-style counter file read around repeated passes, or n/a with a reason."""

import sys
from pathlib import Path

import numpy as np
import pytest

from deepshrink.measure import power


def _runner(counter: Path | None, uj_per_call: int, calls: list[int]):  # type: ignore[no-untyped-def]
    def run(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        if counter is not None:
            counter.write_text(str(int(counter.read_text()) + uj_per_call))
        return x

    return run


def test_missing_rapl_is_none_with_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(power, "RAPL", tmp_path / "no" / "energy_uj")
    calls: list[int] = []
    value, why = power.measure_energy_per_image(_runner(None, 0, calls), np.zeros((8, 2)), "cpu",
                                                min_seconds=0.0)
    assert value is None and "no RAPL counter" in why
    assert calls == []  # nothing is run when nothing can be measured


def test_unreadable_rapl_is_none_with_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(power, "RAPL", tmp_path)  # a folder: exists, but read_text fails
    value, why = power.measure_energy_per_image(lambda x: x, np.zeros((8, 2)), "cpu", min_seconds=0.0)
    assert value is None and "not readable" in why


def test_counter_that_advances_gives_nj_per_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counter = tmp_path / "energy_uj"
    counter.write_text("123456789\n")
    monkeypatch.setattr(power, "RAPL", counter)
    calls: list[int] = []
    x = np.zeros((10, 3), np.float32)
    value, source = power.measure_energy_per_image(_runner(counter, 500, calls), x, "cpu", batch=4,
                                                   min_seconds=0.02)
    assert source == "rapl" and value is not None and value > 0
    assert calls[:3] == [4, 4, 2] and len(calls) % 3 == 0  # whole passes over x in batches of 4
    images = len(calls) // 3 * len(x)
    assert value == pytest.approx(len(calls) * 500e-6 / images * 1e9)  # µJ read, nJ per image reported


def test_counter_that_does_not_advance_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counter = tmp_path / "energy_uj"
    counter.write_text("42")
    monkeypatch.setattr(power, "RAPL", counter)
    calls: list[int] = []
    value, why = power.measure_energy_per_image(_runner(counter, 0, calls), np.zeros((8, 2)), "cpu",
                                                min_seconds=0.005)
    assert value is None and why == "rapl counter did not advance"
    assert calls  # it did try


def test_cuda_without_nvml_is_none_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    counter, why = power.energy_counter("cuda")
    assert counter is None and why.startswith("NVML energy counter unavailable (ModuleNotFoundError")
