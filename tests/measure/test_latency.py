"""Measurement: MACs and parameter counts per layer, energy model, latency rows and artifact accuracy."""

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from deepshrink.export import Artifact, ExportContext, export
from deepshrink.export.runtimes import has_openvino
from deepshrink.measure import energy
from deepshrink.measure.accuracy import artifact_accuracy
from deepshrink.measure.latency import LatencyConfig, RunnerFactory, measure_latency, pinned
from deepshrink.measure.params import layer_stats
from deepshrink.models import create_model
from deepshrink.train import evaluate
from deepshrink.variant import Deployment

from conftest import make_splits


def test_lenet5_macs_and_params() -> None:
    stats = {s.layer: s for s in layer_stats(create_model("lenet-5", "mnist"), (1, 28, 28))}
    assert stats["conv1"].macs == 6 * 24 * 24 * 25  # 6 filters x 24x24 outputs x 5x5x1 taps
    assert stats["conv2"].macs == 16 * 8 * 8 * 150
    assert stats["fc1"].macs == 256 * 120
    assert sum(s.params_total for s in stats.values()) == 44_426


def test_nonzero_counts_follow_zeros() -> None:
    m = create_model("lenet-300-100", "mnist")
    with torch.no_grad():
        m.fc1.weight[:, :392] = 0
    s = {x.layer: x for x in layer_stats(m, (1, 28, 28))}["fc1"]
    assert s.params_nonzero == 300 * 392 + 300 and s.macs_nonzero == 300 * 392


def test_energy_sram_vs_dram() -> None:
    small = energy.estimate(1000, 1024, "fp32", sram_budget_bytes=4096)
    big = energy.estimate(1000, 8192, "fp32", sram_budget_bytes=4096)
    assert small.memory == "sram" and big.memory == "dram"
    assert big.memory_nj / small.memory_nj == 8 * energy.DRAM_PJ_PER_32BIT / energy.SRAM_PJ_PER_32BIT
    assert energy.estimate(1000, 0, "int8").compute_nj < energy.estimate(1000, 0, "fp32").compute_nj


def test_onnx_artifact_matches_torch_and_latency_rows(tmp_path: Path) -> None:
    data = make_splits(n_test=64)
    torch.manual_seed(0)
    model = create_model("lenet-5", "mnist").eval()
    art = export(model, Deployment(), tmp_path / "m", ExportContext(example=data.test_x[:1]))
    onnx.checker.check_model(onnx.load(str(art.path)))
    assert art.size_bytes == art.path.stat().st_size > 4 * 44_426
    assert artifact_accuracy(art, data, "onnxruntime") == evaluate(model, data.test_x, data.test_y)
    cfg = LatencyConfig(threads=(1,), repeats=2, single_calls=20, batch=32)
    rows = measure_latency([("a", art), ("b", art)], data.test_x.numpy(), cfg)
    runtimes = {"torch", "onnxruntime", *(["openvino"] if has_openvino() else [])}
    assert {(r["runtime"], r["batch"]) for r in rows} == {(rt, b) for rt in runtimes for b in (32, 1)}
    for r in rows:
        assert r["us_per_image_min"] <= r["us_per_image_median"] <= r["us_per_image_max"]
        if r["variant"] == "a":
            assert r["speedup"] == 1.0
    assert all(np.isfinite(float(r["speedup"])) for r in rows)


def test_a_runtime_the_baseline_lacks_is_compared_with_its_onnxruntime_model() -> None:
    def factory(scale: float) -> RunnerFactory:
        return lambda threads, device: lambda x: np.zeros((len(x), 10), np.float32) * scale

    base = Artifact(Path("b"), "onnx", "fp32", runners={"torch": factory(1), "onnxruntime": factory(1)})
    pruned = Artifact(Path("p"), "sparse", "fp32", runners={"onnxruntime": factory(1), "sparse": factory(1)})
    cfg = LatencyConfig(threads=(1,), repeats=2, single_calls=10, batch=8)
    rows = measure_latency([("base", base), ("pruned", pruned)], np.zeros((16, 1, 2, 2), np.float32), cfg)
    sparse = [r for r in rows if r["runtime"] == "sparse"]
    assert {(r["variant"], r["batch"]) for r in sparse} == {("pruned", 8), ("pruned", 1)}  # no baseline row
    assert all(r["reference"] == "base (onnxruntime)" and float(r["speedup"]) > 0 for r in sparse)
    assert {r["reference"] for r in rows if r["runtime"] == "onnxruntime"} == {"base"}


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_one_thread_timing_is_pinned_to_one_core_and_released() -> None:
    before = os.sched_getaffinity(0)
    with pinned(1):
        inside = os.sched_getaffinity(0)
    assert inside == {max(before)}
    assert os.sched_getaffinity(0) == before
    with pinned(0):  # all cores: left free
        assert os.sched_getaffinity(0) == before
