"""Every Cortex-M core deepshrink targets: the same small model built for each (soft float on the M0+ and M3),
run in the emulator AS that core, equals the host build bit for bit; an image using an instruction its core
lacks faults with a clear error instead of running."""

from pathlib import Path

import numpy as np
import pytest
from torch import nn

from deepshrink.mcu import toolchain
from deepshrink.mcu.emulate import Firmware, FirmwareFault, price
from deepshrink.mcu.measure import HostLibrary, ort_quantize

from mcu_helpers import Head, generate, qdq_model, write


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], np.ndarray, np.ndarray]:
    if toolchain.cross_compiler() is None:
        pytest.skip(f"{toolchain.CROSS} not found: {toolchain.INSTALL_HINT}")
    root = tmp_path_factory.mktemp("cores")
    model, x = qdq_model(Head(nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2)), 6 * 4 * 4), (1, 12, 12))
    gen = generate(model)
    host_dir = write(gen, root / "host")
    lib_path, _ = toolchain.build_host(host_dir, host_dir)
    xq = ort_quantize(gen.graph, x[:3])
    expected = HostLibrary(lib_path, 5, gen.graph.input.size).quantized(xq)[0]
    elfs = {}
    for core in toolchain.TARGETS:
        folder = write(gen, root / core)
        elf, warnings = toolchain.build_target(folder, folder / "fw", core)
        assert "warning" not in warnings, (core, warnings)
        elfs[core] = elf
    return elfs, xq, expected


@pytest.mark.parametrize("core", list(toolchain.TARGETS))
def test_each_core_runs_as_itself_and_equals_the_host_build(built: tuple, core: str) -> None:
    elfs, xq, expected = built
    fw = Firmware.load(elfs[core], core=core)
    counted, instructions, cycles = fw.count(xq[0], 5)
    assert np.array_equal(counted, expected[0])
    for i in range(len(xq)):
        assert np.array_equal(fw.infer(xq[i], 5)[0], expected[i])
    assert cycles > instructions > 1000 and 0 < fw.stack_bytes() < 1024


def test_an_instruction_the_core_lacks_faults(built: tuple) -> None:
    elfs, xq, _ = built
    with pytest.raises(FirmwareFault, match="cortex-m0plus"):  # Thumb-2 and the FPU, from the reset handler on
        Firmware.load(elfs["cortex-m4"], core="cortex-m0plus").infer(xq[0], 5)
    with pytest.raises(FirmwareFault, match="cortex-m3"):  # the FPU (Unicorn's M3) or SXTB16 (the decoder's check)
        Firmware.load(elfs["cortex-m4"], core="cortex-m3").count(xq[0], 5)


def test_cycle_tables_differ_where_the_cores_do() -> None:
    assert price("ldr", "r0, [r1]", "cortex-m4") == (2, "mem")
    assert price("ldr", "r0, [r1]", "cortex-m0plus") == (2, "")  # no load pipelining on the M0+
    assert price("pop", "{r4, r5, pc}", "cortex-m0plus") == (5, "branch")  # 3 + N with the refill
    assert price("pop", "{r4, r5, pc}", "cortex-m4") == (4, "branch")
    assert price("muls", "r0, r1, r0", "cortex-m0plus") == (1, "")  # the fast multiplier
    assert price("smlad", "r0, r1, r2, r3", "cortex-m7") == price("smlad", "r0, r1, r2, r3", "cortex-m4")
