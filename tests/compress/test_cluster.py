"""Weight sharing (`cluster`) and the `encode` step: masks kept, at most 2^bits values per layer, the
.dsz artifact exact and measured from the file, bad input exit 2."""

import copy
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from deepshrink.checkpoint import save_checkpoint
from deepshrink.cli import main
from deepshrink.compress import apply, parse_step
from deepshrink.compress.cluster import linear_kmeans
from deepshrink.data import DataSplits
from deepshrink.errors import UserError
from deepshrink.export import ExportContext, export
from deepshrink.export.formats import dsz
from deepshrink.measure.latency import LatencyConfig
from deepshrink.models import weight_of, weighted_layers
from deepshrink.study import run as run_module
from deepshrink.variant import StepContext, Variant

from conftest import cli_error, make_splits, trained_variant


@pytest.fixture(scope="module")
def data() -> DataSplits:
    return make_splits()



@pytest.fixture(scope="module")
def pruned(data: DataSplits) -> Variant:
    """A LeNet-5 with 80% of its weights pruned (one-shot, no retraining)."""
    return apply(trained_variant(data, "lenet-5"), parse_step("prune.unstructured:sparsity=0.8,epochs=0,rounds=1"),
                 StepContext(data=data))


def _copy(v: Variant) -> Variant:
    return Variant(v.id, copy.deepcopy(v.model), copy.deepcopy(v.manifest), v.deployment, info=dict(v.info))


def _nonzero_values(model: nn.Module) -> dict[str, int]:
    out = {}
    for name, _ in weighted_layers(model):
        w = weight_of(model, name).detach()
        out[name] = int(torch.unique(w[w != 0]).numel())
    return out


def test_linear_kmeans_starts_evenly_spaced_and_labels_every_value() -> None:
    values = np.random.default_rng(0).normal(size=5000).astype(np.float32)
    centroids, labels = linear_kmeans(values, 16)
    assert centroids.dtype == np.float32 and 12 <= len(centroids) <= 16 and labels.shape == values.shape
    assert np.array_equal(np.unique(labels), np.arange(len(centroids)))  # every centroid has members
    for c in np.unique(labels):  # each centroid is the mean of its members (Lloyd's fixed point, to float32)
        assert abs(float(values[labels == c].astype(np.float64).mean()) - float(centroids[c])) < 0.02
    assert len(linear_kmeans(values[:3], 16)[0]) == 3  # no more centroids than values


@pytest.mark.parametrize("step", ["cluster:bits=3,epochs=1", "cluster:bits=2,epochs=0,bias_bits=16",
                                  "cluster:conv_bits=4,fc_bits=2,epochs=1"])
def test_cluster_keeps_masks_and_shares_at_most_2_to_the_bits_values(data: DataSplits, pruned: Variant,
                                                                     step: str) -> None:
    cfg = parse_step(step)
    before = {n: weight_of(pruned.model, n).detach() == 0 for n, _ in weighted_layers(pruned.model)}
    out = apply(_copy(pruned), cfg, StepContext(data=data))
    for name, module in weighted_layers(out.model):
        w = weight_of(out.model, name).detach()
        assert torch.equal(w == 0, before[name]), name  # the pruning mask, exactly
        assert not torch.signbit(w[w == 0]).any(), name  # +0.0: sparse formats store -0.0 as a value
        assert _nonzero_values(out.model)[name] <= 2 ** cfg.bits_for(module)
        assert sorted(set(w[w != 0].tolist())) == sorted(out.manifest.info["codebooks"][name]), name
        bias = module.bias.detach()  # type: ignore[union-attr]
        assert torch.equal(bias.half().float(), bias) == (cfg.bias_bits == 16), name
    assert not any(list(m.parametrizations) for _, m in weighted_layers(out.model) if hasattr(m, "parametrizations"))
    assert out.manifest.pipeline[:-1] == pruned.manifest.pipeline and out.manifest.pipeline[-1].startswith("cluster")
    assert out.info["cluster_distinct_max"] <= 16


def test_cluster_fine_tuning_moves_centroids_and_keeps_accuracy(data: DataSplits, pruned: Variant) -> None:
    frozen = apply(_copy(pruned), parse_step("cluster:bits=4,epochs=0"), StepContext(data=data))
    tuned = apply(_copy(pruned), parse_step("cluster:bits=4,epochs=2"), StepContext(data=data))
    moved = [a != b for n in frozen.manifest.info["codebooks"] for a, b in
             zip(frozen.manifest.info["codebooks"][n], tuned.manifest.info["codebooks"][n], strict=True)]
    assert any(moved) and tuned.epochs == 2


@pytest.mark.parametrize(("text", "key"), [
    ("cluster:bits=0", "cluster.bits"), ("cluster:bits=9", "cluster.bits"), ("cluster:conv_bits=12", "conv_bits"),
    ("cluster:epochs=-1", "cluster.epochs"), ("cluster:lr=-1", "cluster.lr"), ("cluster:bits=five", "cluster.bits"),
    ("encode:gap_bits=9", "encode.gap_bits"), ("cluster:width=3", "width"), ("cluster:bias_bits=8", "bias_bits"),
])
def test_bad_keys_are_user_errors_naming_the_key(text: str, key: str) -> None:
    with pytest.raises(UserError, match=key):
        parse_step(text)


def test_cluster_on_a_model_without_non_zero_weights_is_a_user_error(data: DataSplits, pruned: Variant) -> None:
    v = _copy(pruned)
    with torch.no_grad():
        for _, m in weighted_layers(v.model):
            m.weight.zero_()  # type: ignore[operator]
    with pytest.raises(UserError, match="cluster: the model has no non-zero weights"):
        apply(v, parse_step("cluster"), StepContext(data=data))


def test_encode_ships_an_exact_dsz(data: DataSplits, pruned: Variant, tmp_path: Path) -> None:
    v = apply(apply(_copy(pruned), parse_step("cluster:bits=4,epochs=0"), StepContext(data=data)),
              parse_step("encode"), StepContext(data=data))
    art = export(v.model, v.deployment, tmp_path / "model", ExportContext(example=data.test_x[:1]))
    assert art.path.suffix == ".dsz" and art.size_bytes == art.path.stat().st_size
    back = dsz.decode(art.path.read_bytes(), str(art.path))
    assert all(torch.equal(t, back[k]) for k, t in v.model.state_dict().items())
    assert "encode:" not in art.info["notes"] and art.info["sparse"]  # nothing it could not exploit
    assert "deployed: " in art.info["notes"]  # the runtime choice (export/choice.py)
    x = data.test_x[:64].numpy()
    ort, tch = art.runners["onnxruntime"](1, "cpu")(x), art.runners["torch"](1, "cpu")(x)
    assert np.allclose(ort, tch, atol=1e-4)
    sparse = export(v.model, pruned.deployment, tmp_path / "sparse", ExportContext(example=data.test_x[:1]))
    assert art.size_bytes < sparse.size_bytes / 2  # shared values and Huffman codes beat float32 + lzma


def test_encode_of_an_unpruned_unclustered_model_works_and_says_why_it_is_big(data: DataSplits,
                                                                              tmp_path: Path) -> None:
    v = apply(trained_variant(data, "mlp-50", 1), parse_step("encode"), StepContext(data=data))
    art = export(v.model, v.deployment, tmp_path / "model", ExportContext(example=data.test_x[:1]))
    assert "not clustered" in art.info["notes"] and "not pruned" in art.info["notes"]
    assert art.size_bytes > 4 * 39_760


def _cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["deepshrink", *args])
    with pytest.raises(SystemExit) as e:  # typer's standalone mode exits, 0 on success
        main()
    assert e.value.code == 0


def test_compress_cli_writes_a_dsz_measured_from_its_bytes(mnist_dir: Path, tmp_path: Path, data: DataSplits,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """`deepshrink compress CKPT --step prune.unstructured:sparsity=0.9 --step cluster:bits=5 --step encode`,
    then `show` and `bench` open the .dsz."""
    base = trained_variant(data, "lenet-300-100", 1)
    ckpt = save_checkpoint(base.model, copy.deepcopy(base.manifest), tmp_path / "b" / "model")
    quick = LatencyConfig(runtimes=("onnxruntime",), threads=(1,), repeats=1, single_calls=5)
    monkeypatch.setattr(run_module, "_latency", lambda device, latency: quick)  # timing is not under test
    out, common = tmp_path / "c", ("--data-dir", str(mnist_dir), "--quiet")
    _cli(monkeypatch, "compress", str(ckpt), "--step", "prune.unstructured:sparsity=0.9,epochs=1", "--step",
         "cluster:bits=5,epochs=1", "--step", "encode", "--out", str(out), *common)
    rows = pd.read_csv(out / "results.csv")
    row = rows[rows.deployment == "dsz"].iloc[0]
    dsz = out / row.artifact
    assert dsz.suffix == ".dsz" and row.size_bytes == dsz.stat().st_size and row.status == "ok"
    assert row.pipeline.endswith("| cluster:epochs=1 | encode") and row.sparsity > 0.89  # bits=5: the default
    assert row.size_bytes < 266_610 * 0.1 * 2  # under 2 bytes per kept weight, header and biases included
    capsys.readouterr()
    _cli(monkeypatch, "show", str(dsz))
    shown = capsys.readouterr().out
    assert "fc1.weight" in shown and "gap bits" in shown and f"{row.size_bytes} bytes" in shown
    for runtime in ("onnxruntime", "torch"):
        _cli(monkeypatch, "bench", str(dsz), "--runtime", runtime, "--batch", "32", *common)
        assert runtime in capsys.readouterr().out


def test_cli_bad_cluster_key_exits_2(mnist_dir: Path, tmp_path: Path, data: DataSplits,
                                     monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    base = trained_variant(data, "mlp-50", 0)
    ckpt = save_checkpoint(base.model, copy.deepcopy(base.manifest), tmp_path / "b" / "model")
    line = cli_error(monkeypatch, capsys, "compress", str(ckpt), "--step", "cluster:bits=9", "--out",
                     str(tmp_path / "c"), "--data-dir", str(mnist_dir))
    assert "cluster.bits=9" in line
    line = cli_error(monkeypatch, capsys, "show", str(tmp_path / "missing.dsz"))
    assert "missing.dsz" in line


def test_shared_weight_gradient_is_each_centroids_sum_and_pruned_zeros_stay_positive() -> None:
    """The scatter parametrization against autograd's own gather: same weight, same codebook gradient."""
    from deepshrink.compress.cluster.share import SharedWeight

    g = torch.Generator().manual_seed(0)
    mask = torch.rand(30, 20, generator=g) > 0.7
    labels = torch.randint(0, 8, (int(mask.sum()),), generator=g)
    codebook = -torch.rand(8, generator=g)  # negative: a product with the mask would leave -0.0
    share = SharedWeight(codebook.clone(), torch.nonzero(mask.flatten()).flatten(), labels)
    upstream = torch.randn(30, 20, generator=g)
    w = share(torch.empty(30, 20))
    (w * upstream).sum().backward()
    ref_cb = codebook.clone().requires_grad_(True)
    index = torch.zeros(30, 20, dtype=torch.int64)
    index[mask] = labels
    ref = torch.where(mask, ref_cb[index], torch.zeros(()))
    (ref * upstream).sum().backward()
    assert torch.equal(w.detach(), ref.detach())
    assert torch.allclose(share.codebook.grad, ref_cb.grad, atol=1e-5)
    assert not torch.signbit(w.detach()[~mask]).any()
