"""Pruning: masks through retraining, schedules, the sparse file, structured rebuilds, bad input."""

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deepshrink.checkpoint import load_checkpoint, save_checkpoint
from deepshrink.compress import apply, format_step, parse_step
from deepshrink.compress.prune.masks import (
    SCHEDULES,
    MaskCallback,
    apply_masks,
    compute_masks,
    fisher_diagonal,
    mask_sparsity,
)
from deepshrink.compress.prune.sensitivity import pick_layer_sparsities, plot_sensitivity, sensitivity
from deepshrink.compress.prune.units import prune_units
from deepshrink.data import DataSplits
from deepshrink.errors import UserError
from deepshrink.export import ExportContext, export
from deepshrink.export.formats import dsparse
from deepshrink.train import TrainConfig, evaluate, fit
from deepshrink.variant import StepContext, Variant

from conftest import make_splits, trained_variant


@pytest.fixture(scope="module")
def data() -> DataSplits:
    return make_splits()



@pytest.fixture(scope="module")
def mlp(data: DataSplits) -> Variant:
    return trained_variant(data, "lenet-300-100")


@pytest.fixture(scope="module")
def cnn(data: DataSplits) -> Variant:
    return trained_variant(data, "lenet-5", 3)


def _copy(v: Variant) -> Variant:
    return Variant(v.id, copy.deepcopy(v.model), copy.deepcopy(v.manifest))


def test_layer_and_global_masks_hit_the_requested_sparsity(mlp: Variant) -> None:
    m = copy.deepcopy(mlp.model)
    layer = compute_masks(m, "magnitude", 0.75, "layer")
    assert all(abs(1 - float(k.float().mean()) - 0.75) < 1e-3 for k in layer.values())
    glob = compute_masks(m, "magnitude", 0.75, "global")
    assert abs(mask_sparsity(glob) - 0.75) < 1e-4
    # global prunes the big, small-weighted first layer harder than the output layer
    assert 1 - glob["fc1"].float().mean() > 1 - glob["fc3"].float().mean()
    mags = {n: m.get_submodule(n).weight.detach().abs() for n in glob}
    kept_min = min(float(mags[n][glob[n]].min()) for n in glob)
    pruned_max = max(float(mags[n][~glob[n]].max()) for n in glob)
    assert kept_min >= pruned_max


def test_masks_only_grow(mlp: Variant) -> None:
    m = copy.deepcopy(mlp.model)
    first = compute_masks(m, "magnitude", 0.5, "layer")
    apply_masks(m, first)
    with torch.no_grad():  # revive pruned weights with large values: they must stay pruned
        m.fc1.weight.add_((~first["fc1"]).float() * 10)
    second = compute_masks(m, "magnitude", 0.7, "layer", previous=first)
    assert not (second["fc1"] & ~first["fc1"]).any()


def test_obd_uses_per_sample_fisher(data: DataSplits, mlp: Variant) -> None:
    m = copy.deepcopy(mlp.model)
    fisher = fisher_diagonal(m, data, samples=8, chunk=4)
    x, y = data.train_x, data.train_y
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:8]
    expect = torch.zeros_like(m.fc3.weight)
    for i in idx:
        m.zero_grad()
        nn.functional.cross_entropy(m.eval()(x[i : i + 1]), y[i : i + 1]).backward()
        expect += m.fc3.weight.grad.pow(2)  # type: ignore[union-attr]
    assert torch.allclose(fisher["fc3.weight"], expect / 8, rtol=1e-4, atol=1e-9)
    for saliency in ("obd", "obd-fisher"):
        masks = compute_masks(m, saliency, 0.6, "layer", data=data)
        assert abs(mask_sparsity(masks) - 0.6) < 1e-3
    true_fisher = fisher_diagonal(m, data, samples=64, sampled_labels=True)
    assert (true_fisher["fc1.weight"] >= 0).all() and true_fisher["fc1.weight"].sum() > 0


def test_masks_survive_retraining(data: DataSplits, mlp: Variant) -> None:
    m = copy.deepcopy(mlp.model)
    masks = compute_masks(m, "magnitude", 0.8, "layer")
    apply_masks(m, masks)
    fit(m, data, TrainConfig(epochs=1, lr=0.05), callbacks=[MaskCallback(masks)])
    for name, mask in masks.items():
        w = m.get_submodule(name).weight
        assert (w[~mask] == 0).all() and (w[mask] != 0).float().mean() > 0.99
    assert evaluate(m, data.test_x, data.test_y) > 50  # chance is 10 %


@pytest.mark.parametrize("schedule", ["oneshot", "iterative", "agp"])
def test_schedules_end_at_the_target(schedule: str) -> None:
    rounds = SCHEDULES.get(schedule)(0.9, 3, 9)
    assert sum(r.epochs for r in rounds) == 9
    assert rounds[-1].targets[-1] == pytest.approx(0.9)
    flat = [t for r in rounds for t in r.targets]
    assert flat == sorted(flat) and flat[0] > 0


@pytest.mark.parametrize("schedule", ["iterative", "agp"])
def test_unstructured_step_prunes_retrains_and_ships_sparse(data: DataSplits, mlp: Variant, schedule: str) -> None:
    cfg = parse_step(f"prune.unstructured:sparsity=0.9,schedule={schedule},epochs=3,rounds=3")
    out = apply(_copy(mlp), cfg, StepContext(data=data))
    ws = [p for n, p in out.model.named_parameters() if n.endswith("weight")]
    zero = sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)
    assert zero == pytest.approx(0.9, abs=1e-3)
    assert out.deployment.name == "sparse"
    assert out.manifest.pipeline == [format_step(cfg)] and mlp.manifest.pipeline == []
    assert evaluate(out.model, data.test_x, data.test_y) > 80


def test_sparse_artifact_is_small_exact_and_runs_on_nonzeros(data: DataSplits, mlp: Variant, tmp_path: Path) -> None:
    out = apply(_copy(mlp), parse_step("prune.unstructured:sparsity=0.9,schedule=oneshot,epochs=0"),
                StepContext(data=data))
    art = export(out.model, out.deployment, tmp_path / "model", ExportContext(data.test_x[:1], data.train_x[:64]))
    dense_bytes = sum(p.numel() for p in out.model.parameters()) * 4
    assert art.size_bytes < dense_bytes / 6 and art.info["sparse"] is True
    assert {"torch", "sparse", "onnxruntime"} <= set(art.runners)
    assert art.info["deployed_runtime"] in art.runners and art.info["deployed_runtime_b1"] in art.runners
    assert "deployed:" in art.info["notes"]
    x = data.test_x[:32].numpy()
    ref = out.model.eval()(torch.from_numpy(x)).detach().numpy()
    for runtime in ("torch", "sparse", "onnxruntime"):
        np.testing.assert_allclose(art.runners[runtime](1, "cpu")(x), ref, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(art.runners[runtime](1, "cpu")(x[:1]), ref[:1], rtol=1e-4, atol=1e-4)
    decoded = dsparse.decode(art.path.read_bytes())
    assert all(torch.equal(decoded[k], v) for k, v in out.model.state_dict().items())


def test_structured_mlp_shapes_and_kept_units_match(data: DataSplits, mlp: Variant, tmp_path: Path) -> None:
    m = copy.deepcopy(mlp.model).eval()
    x = data.test_x[:16]
    before = m[:3](x).detach()  # fc1 + relu activations
    kept = prune_units(m, {"fc1": 0.8, "fc2": 0.8}, "l1", data, x[:1])
    assert [tuple(p.shape) for p in m.parameters()][::2] == [(60, 784), (20, 60), (10, 20)]
    assert torch.allclose(m[:3](x).detach(), before[:, kept["fc1"]], rtol=1e-5, atol=1e-6)
    norms = mlp.model.fc1.weight.abs().sum(1)
    assert norms[kept["fc1"]].min() >= norms[[i for i in range(300) if i not in kept["fc1"]]].max()
    v = Variant("s", m, copy.deepcopy(mlp.manifest))
    save_checkpoint(v.model, v.manifest, tmp_path / "s")
    back, _ = load_checkpoint(tmp_path / "s.safetensors")
    assert torch.equal(back(x), m(x))


def test_structured_conv_rebuild_adjusts_flatten_fc(data: DataSplits, cnn: Variant) -> None:
    m = copy.deepcopy(cnn.model).eval()
    x = data.test_x[:8]
    conv_before = m[:3](x).detach()
    kept = prune_units(m, {"conv1": 0.5, "conv2": 0.5}, "l2", data, x[:1])
    assert tuple(m.conv1.weight.shape) == (3, 1, 5, 5) and tuple(m.conv2.weight.shape) == (8, 3, 5, 5)
    assert tuple(m.fc1.weight.shape) == (120, 8 * 4 * 4)
    assert torch.allclose(m[:3](x).detach(), conv_before[:, kept["conv1"]], rtol=1e-5, atol=1e-6)
    out = apply(_copy(cnn), parse_step("prune.structured:ratio=0.5,importance=taylor,layers=all,epochs=1"),
                StepContext(data=data))
    assert out.info["pruned_widths"] == "conv1=3,conv2=8,fc1=60,fc2=42,fc3=10"
    assert out.model(x).shape == (8, 10)


def test_sensitivity_rows_plot_and_pick(data: DataSplits, mlp: Variant, tmp_path: Path) -> None:
    rows = sensitivity(mlp.model, data, ["fc1", "fc3"], (0.0, 0.5, 0.99))
    assert len(rows) == 6 and {r["layer"] for r in rows} == {"fc1", "fc3"}
    fc3 = [r["accuracy_pct"] for r in rows if r["layer"] == "fc3"]
    assert fc3[0] > fc3[-1]
    assert plot_sensitivity(rows, tmp_path / "s.png").stat().st_size > 1000
    assert set(pick_layer_sparsities(rows)) == {"fc1", "fc3"}


@pytest.mark.parametrize(("text", "key"), [
    ("prune.unstructured:sparsity=1.0", "sparsity"),
    ("prune.unstructured:sparsity=-0.1", "sparsity"),
    ("prune.unstructured:saliency=random", "saliency"),
    ("prune.unstructured:schedule=linear", "schedule"),
    ("prune.unstructured:scope=net", "scope"),
    ("prune.structured:ratio=1", "ratio"),
    ("prune.structured:importance=l3", "importance"),
    ("prune.structured:layers=fc1=2", "layers"),
    ("prune.structured:round_to=0", "round_to"),
])
def test_bad_config_is_a_user_error_naming_the_key(text: str, key: str) -> None:
    with pytest.raises(UserError, match=key):
        parse_step(text)


def test_bad_layer_and_emptied_layer_are_user_errors(data: DataSplits, mlp: Variant, cnn: Variant) -> None:
    with pytest.raises(UserError, match="layers.*fc9"):
        apply(_copy(mlp), parse_step("prune.unstructured:layers=fc9,scope=layer"), StepContext(data=data))
    with pytest.raises(UserError, match="layers.*fc3"):  # the output layer's units are the classes
        apply(_copy(mlp), parse_step("prune.structured:layers=fc3"), StepContext(data=data))
    with pytest.raises(UserError, match="every unit of conv1"):
        apply(_copy(cnn), parse_step("prune.structured:layers=conv1=0.95,epochs=0"), StepContext(data=data))


def test_cli_bad_prune_step_exits_2_with_one_line(mnist_dir: Path, tmp_path: Path, mlp: Variant) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "deepshrink", *args, "--data-dir", str(mnist_dir), "--quiet"],
                              capture_output=True, text=True, timeout=300)

    ckpt = save_checkpoint(mlp.model, copy.deepcopy(mlp.manifest), tmp_path / "b" / "model")
    bad = cli("compress", str(ckpt), "--step", "prune.unstructured:schedule=linear", "--out", str(tmp_path / "c"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "schedule" in bad.stderr


def test_compress_run_writes_sparse_row(mnist_dir: Path, tmp_path: Path, mlp: Variant) -> None:
    import pandas as pd

    import deepshrink as ds
    from deepshrink.measure.latency import LatencyConfig

    ckpt = save_checkpoint(mlp.model, copy.deepcopy(mlp.manifest), tmp_path / "b" / "model")
    ds.compress(ckpt, ["prune.unstructured:sparsity=0.8,epochs=1,rounds=1"], out=tmp_path / "c", data_dir=mnist_dir,
                device="cpu", latency=LatencyConfig(threads=(1,), repeats=1, single_calls=5))
    rows = pd.read_csv(tmp_path / "c" / "results.csv")
    pruned = rows[rows.pipeline.fillna("") != ""].iloc[0]
    base = rows[rows.pipeline.fillna("") == ""].iloc[0]
    assert pruned.deployment == "sparse" and pruned.sparsity > 0.79
    assert pruned.size_bytes < base.size_bytes / 2
    assert pruned.macs_nonzero < 0.25 * pruned.macs and pruned.energy_nj_est < base.energy_nj_est
    layers = pd.read_csv(tmp_path / "c" / "layers.csv")
    assert (layers.params_nonzero <= layers.params_total).all()


@pytest.mark.parametrize(("ratio", "multiple", "kept"), [(0.5, 8, 152), (0.3, 8, 208), (0.99, 8, 8), (0.5, 1, 150),
                                                        (0.0, 64, 300)])
def test_rounded_ratios_keep_a_multiple_of_the_units(ratio: float, multiple: int, kept: int, mlp: Variant) -> None:
    """fc1 has 300 units; the ratio moved keeps the nearest multiple, at least one, at most all."""
    from deepshrink.compress.prune.units import rounded_ratios, units_to_remove

    r = rounded_ratios(mlp.model, {"fc1": ratio}, multiple)["fc1"]
    assert 300 - len(units_to_remove(torch.rand(300), r, "fc1", "k")) == kept
    assert 300 - int(300 * (1 - r)) == 300 - kept  # Torch-Pruning's count agrees (no float floor below)
