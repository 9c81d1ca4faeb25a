"""Knowledge distillation: the loss by hand, the cache, the control, the sweep, bad input, the CLI."""

import copy
import csv
import dataclasses
import importlib
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from deepshrink.checkpoint import Manifest, save_checkpoint
from deepshrink.cli import app
from deepshrink.compress import apply, format_step, parse_step
from deepshrink.compress.distill import DistillConfig, distill_objective, distill_with_control, hinton_loss
from deepshrink.compress.distill import teacher as dt
from deepshrink.compress.distill.sweep import pick_temperature, plot_sweep, temperature_sweep
from deepshrink.data import DataSplits
from deepshrink.errors import UserError
from deepshrink.models import create_model
from deepshrink.train import TrainConfig, fit, predict
from deepshrink.variant import StepContext, Variant

from conftest import make_splits, requires_real_data


def _teacher(data: DataSplits, model: str = "lenet-300-100", epochs: int = 3, seed: int = 0) -> Variant:
    torch.manual_seed(seed)
    net = create_model(model, data.input_shape, data.num_classes)
    log = fit(net, data, TrainConfig(epochs=epochs, lr=0.05, seed=seed))
    manifest = Manifest(model=model, dataset=data.name, input_shape=list(data.input_shape),
                        num_classes=data.num_classes, mean=data.mean, std=data.std)
    return Variant(f"{data.name}-{model}", net.eval(), manifest, log=log)


def _save(v: Variant, path: Path) -> Path:
    return save_checkpoint(v.model, copy.deepcopy(v.manifest), path)


@pytest.fixture(scope="module")
def data() -> DataSplits:
    return make_splits(n_train=384, n_val=96, n_test=128)


@pytest.fixture(scope="module")
def teacher(data: DataSplits) -> Variant:
    return _teacher(data)


def test_loss_matches_hand_computed_value() -> None:
    s = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    t = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    y = torch.tensor([0, 2])
    temp, alpha = 2.0, 0.7
    kl = 0.0
    ce = 0.0
    for i in range(2):
        ps = [math.exp(v / temp) for v in s[i].tolist()]
        pt = [math.exp(v / temp) for v in t[i].tolist()]
        ps = [p / sum(ps) for p in ps]
        pt = [p / sum(pt) for p in pt]
        kl += sum(a * math.log(a / b) for a, b in zip(pt, ps, strict=True))
        e = [math.exp(v) for v in s[i].tolist()]
        ce += -math.log(e[int(y[i])] / sum(e))
    kl, ce = kl / 2, ce / 2
    out = hinton_loss(s, t, y, temp, alpha)
    assert float(out["kd_loss"]) == pytest.approx(temp**2 * kl, rel=1e-5)
    assert float(out["task_loss"]) == pytest.approx(ce, rel=1e-5)
    assert float(out["loss"]) == pytest.approx(alpha * temp**2 * kl + (1 - alpha) * ce, rel=1e-5)


def test_alpha_zero_is_plain_cross_entropy_and_kd_vanishes_on_equal_logits() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(16, 10, generator=g), torch.randn(16, 10, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    out = hinton_loss(s, t, y, temperature=1.0, alpha=0.0)
    assert torch.equal(out["loss"], F.cross_entropy(s, y))
    assert float(hinton_loss(s, s, y, 3.0, 1.0)["loss"]) == pytest.approx(0.0, abs=1e-6)
    assert float(hinton_loss(s, t, y, 3.0, 1.0)["loss"]) > 0.01


def test_objective_gradient_reaches_student_only() -> None:
    model = torch.nn.Linear(4, 3)
    teacher = torch.nn.Linear(4, 3)
    obj = distill_objective(lambda x: teacher(x).detach(), 2.0, 0.5)
    out = obj(model, torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]), torch.arange(5))
    out["loss"].backward()
    assert model.weight.grad is not None and teacher.weight.grad is None
    assert set(out) == {"loss", "task_loss", "kd_loss"}


def test_cached_logits_match_recomputed_and_persist(data: DataSplits, teacher: Variant, tmp_path: Path) -> None:
    dt.clear_memory_cache()
    [t] = dt.resolve_teachers("", teacher.model, teacher.manifest, data)
    first = dt.train_logits(t, data, tmp_path)
    files = list((tmp_path / "teacher_logits").glob("*.safetensors"))
    assert len(files) == 1 and t.weights_hash in files[0].name and data.fingerprint in files[0].name
    assert torch.allclose(first, predict(teacher.model, data.train_x), atol=1e-6)
    dt.clear_memory_cache()
    teacher.model.fc3.bias.data += 0  # same weights -> same key -> read from disk, not recomputed
    again = dt.train_logits(t, data, tmp_path)
    assert torch.equal(first, again)
    # Other weights are another key: changing the teacher never reuses stale logits.
    other = copy.deepcopy(teacher.model)
    other.fc3.bias.data += 1.0
    assert dt.weights_hash(other) != t.weights_hash


def test_corrupt_cache_file_is_recomputed(data: DataSplits, teacher: Variant, tmp_path: Path) -> None:
    dt.clear_memory_cache()
    [t] = dt.resolve_teachers("", teacher.model, teacher.manifest, data)
    dt.train_logits(t, data, tmp_path)
    [f] = (tmp_path / "teacher_logits").glob("*.safetensors")
    f.write_bytes(b"garbage")
    dt.clear_memory_cache()
    assert torch.allclose(dt.train_logits(t, data, tmp_path), predict(teacher.model, data.train_x), atol=1e-6)


def test_ensemble_averages_member_logits(data: DataSplits, teacher: Variant, tmp_path: Path) -> None:
    second = _teacher(data, "lenet-5", epochs=2, seed=1)
    a, b = _save(teacher, tmp_path / "a"), _save(second, tmp_path / "b")
    teachers = dt.resolve_teachers(f"{a}+{b}", teacher.model, teacher.manifest, data)
    assert len(teachers) == 2 and dt.split_teacher_spec(f"{a},{b}") == [str(a), str(b)]
    avg = dt.ensemble_train_logits(teachers, data, tmp_path)
    want = (predict(teacher.model, data.train_x) + predict(second.model, data.train_x)) / 2
    assert torch.allclose(avg, want, atol=1e-5)


def test_distilled_student_and_control_share_budget(data: DataSplits, teacher: Variant, tmp_path: Path) -> None:
    ctx = StepContext(data=data, seed=3, cache_dir=tmp_path)
    cfg = DistillConfig(temperature=4.0, alpha=0.9, epochs=4)
    kd, scratch = distill_with_control(teacher, cfg, ctx)
    assert kd.manifest.model == scratch.manifest.model == "mlp-50"
    assert kd.epochs == scratch.epochs == 4 and kd.log and scratch.log
    assert kd.manifest.train == scratch.manifest.train
    assert kd.info["distill_role"] == "distilled" and scratch.info["distill_role"] == "scratch"
    assert kd.info["distill_teacher_logits"] == "cached" and scratch.info["distill_teacher_logits"] == "none"
    assert 1 <= kd.info["epochs_to_converge"] <= 4 and 1 <= scratch.info["epochs_to_converge"] <= 4
    assert kd.manifest.pipeline == ["distill:alpha=0.9,epochs=4"] or kd.manifest.pipeline[-1].startswith("distill")
    assert "alpha=0.0" in scratch.manifest.pipeline[-1] and kd.id != scratch.id
    assert kd.log.best_val_acc > 80 and kd.info["distill_teacher_val_acc"] > 95
    # Both students started from the same seeded weights: the first epoch differs only by the loss.
    assert kd.log.history[0]["train_loss"] != scratch.log.history[0]["train_loss"]


def test_online_teacher_with_augmentation(data: DataSplits, teacher: Variant) -> None:
    ctx = StepContext(data=data, seed=0)
    out = apply(teacher, DistillConfig(epochs=1, augment="shift"), ctx)
    assert out.info["distill_teacher_logits"] == "online" and out.manifest.train["augment"] == "shift"


def test_student_can_be_pruned_checkpoint_or_input(data: DataSplits, teacher: Variant, tmp_path: Path) -> None:
    from deepshrink.checkpoint import load_checkpoint
    from deepshrink.models import shrink_to

    small = copy.deepcopy(teacher)  # a "structurally pruned" copy: fc1 300 -> 150, fc2 input 150
    shapes = {k: list(v.shape) for k, v in small.model.state_dict().items()}
    shapes.update({"fc1.weight": [150, 784], "fc1.bias": [150], "fc2.weight": [100, 150]})
    small.model = shrink_to(small.model, shapes)
    path = _save(small, tmp_path / "pruned")
    ctx = StepContext(data=data, seed=0, cache_dir=tmp_path)
    out = apply(teacher, DistillConfig(student=str(path), epochs=1, augment="none"), ctx)
    assert out.manifest.model == "lenet-300-100" and list(out.model.fc1.weight.shape) == [150, 784]
    # ... and it reloads from its own checkpoint, so a later quantize step sees an ordinary model.
    reloaded, _ = load_checkpoint(save_checkpoint(out.model, out.manifest, tmp_path / "out"))
    assert list(reloaded.fc1.weight.shape) == [150, 784]
    before = copy.deepcopy(small.model.state_dict())
    warm = apply(small, DistillConfig(student="input", teacher=str(_save(teacher, tmp_path / "t")), epochs=1,
                                      augment="none"), ctx)
    assert list(warm.model.fc1.weight.shape) == [150, 784] and warm.info["distill_teacher_model"] == "lenet-300-100"
    # The input is trained as a copy: the pipeline's earlier variant stays as it was.
    assert all(torch.equal(before[k], v) for k, v in small.model.state_dict().items())


def test_temperature_sweep_rows_choice_and_plot(data: DataSplits, teacher: Variant, tmp_path: Path) -> None:
    ctx = StepContext(data=data, seed=0, cache_dir=tmp_path)
    rows = temperature_sweep(teacher, DistillConfig(epochs=2), ctx, temperatures=(1.0, 4.0, 8.0))
    assert [r["temperature"] for r in rows] == [1.0, 4.0, 8.0]
    assert sum(r["chosen"] for r in rows) == 1
    chosen = next(r for r in rows if r["chosen"])
    assert chosen["val_acc_pct"] == max(r["val_acc_pct"] for r in rows)
    png = plot_sweep(rows, tmp_path / "figures" / "distill_temperature.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pick_temperature([{"temperature": 8.0, "val_acc_pct": 90.0},
                             {"temperature": 2.0, "val_acc_pct": 90.0}]) == 2.0


@pytest.mark.parametrize("text, key", [
    ("distill:temperature=0", "distill.temperature"),
    ("distill:temperature=-2", "distill.temperature"),
    ("distill:alpha=1.5", "distill.alpha"),
    ("distill:alpha=-0.1", "distill.alpha"),
    ("distill:student=resnet-9000", "distill.student"),
    ("distill:teacher=/nonexistent/t.safetensors", "distill.teacher"),
    ("distill:epochs=-1", "distill.epochs"),
])
def test_bad_config_is_a_one_line_user_error(text: str, key: str) -> None:
    with pytest.raises(UserError) as e:
        parse_step(text)
    assert str(e.value).startswith(key) and "\n" not in str(e.value)


def test_teacher_of_another_dataset_or_class_count_is_rejected(data: DataSplits, teacher: Variant,
                                                               tmp_path: Path) -> None:
    ctx = StepContext(data=data)
    cifar = _teacher(make_splits(n_train=64, n_val=16, n_test=16, shape=(3, 32, 32), name="cifar10"), "mlp-50", 1)
    with pytest.raises(UserError, match="distill.teacher: .* trained on 'cifar10'"):
        apply(teacher, DistillConfig(teacher=str(_save(cifar, tmp_path / "c")), epochs=1), ctx)
    five = copy.deepcopy(teacher)
    five.manifest.num_classes = 5
    five.model.fc3 = torch.nn.Linear(100, 5)
    with pytest.raises(UserError, match="5 classes"):
        apply(teacher, DistillConfig(teacher=str(_save(five, tmp_path / "five")), epochs=1), ctx)


def test_format_round_trips() -> None:
    cfg = parse_step("distill:temperature=8,alpha=0.5,student=lenet-300-100")
    assert parse_step(format_step(cfg)) == cfg


def test_cli_compress_distill_and_bad_input(mnist_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    base = tmp_path / "base"
    r = runner.invoke(app, ["train", "--dataset", "mnist", "--model", "lenet-300-100", "--epochs", "2",
                            "--out", str(base), "--data-dir", str(mnist_dir), "--quiet"])
    assert r.exit_code == 0, r.output
    ckpt = next(base.glob("artifacts/*/model.safetensors"))
    out = tmp_path / "kd"
    r = runner.invoke(app, ["compress", str(ckpt), "--step", "distill:temperature=4,epochs=2", "--out", str(out),
                            "--data-dir", str(mnist_dir), "--quiet"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((out / "results.csv").open()))
    kd = next(row for row in rows if row["distill_role"] == "distilled")
    assert kd["model"] == "mlp-50" and kd["pipeline"].startswith("distill") and kd["epochs_to_converge"]
    control = next(row for row in rows if row["distill_role"] == "scratch")  # reported beside it, same budget
    assert control["model"] == "mlp-50" and control["epochs"] == kd["epochs"] and "alpha=0" in control["pipeline"]
    assert "accuracy" in r.output and control["variant"] in r.output
    assert list((out / "cache" / "teacher_logits").glob("*.safetensors"))
    bad = subprocess.run([sys.executable, "-m", "deepshrink", "compress", str(ckpt), "--step",
                          "distill:student=nope", "--out", str(out), "--data-dir", str(mnist_dir)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "distill.student=" in bad.stderr and \
        len(bad.stderr.strip().splitlines()) == 1, bad.stderr


@requires_real_data
def test_real_mnist_logits_cache_roundtrip(tmp_path: Path) -> None:
    from deepshrink.data import load_dataset

    from conftest import real_data_dir

    real = load_dataset("mnist", real_data_dir())
    net = create_model("mlp-50", real.input_shape)
    t = dt.Teacher("x", net.eval(), Manifest("mlp-50", "mnist", [1, 28, 28], 10, real.mean, real.std),
                   dt.weights_hash(net))
    dt.clear_memory_cache()
    a = dt.train_logits(t, real, tmp_path)
    dt.clear_memory_cache()
    assert a.shape == (len(real.train_x), 10) and torch.equal(a, dt.train_logits(t, real, tmp_path))


def test_distillation_table_has_one_scratch_and_one_row_per_teacher(data: DataSplits, teacher: Variant) -> None:
    from deepshrink.compress.distill import distillation_table

    other = _teacher(data, "lenet-5", epochs=1, seed=2)
    rows = distillation_table([teacher, other], DistillConfig(epochs=1), StepContext(data=data, seed=0))
    assert [r.info["distill_role"] for r in rows] == ["scratch", "distilled", "distilled"]
    assert [r.info.get("distill_teacher_model") for r in rows] == [None, "lenet-300-100", "lenet-5"]
    assert len({r.id for r in rows}) == 3 and all(r.manifest.model == "mlp-50" for r in rows)


def _fake_fit(val_by_aug: dict[str, float], seen: list[str]):  # type: ignore[no-untyped-def]
    """A stand-in for the shared loop: the validation accuracy a run 'reaches' depends on its augmentation."""
    from deepshrink.train import TrainLog

    def fake(model, data, cfg, objective=None, **kw):  # type: ignore[no-untyped-def]
        seen.append(cfg.augment)
        with torch.no_grad():  # mark the copy so the test can tell which run was kept
            next(model.parameters()).fill_(val_by_aug[cfg.augment])
        log = TrainLog(best_epoch=1, best_val_acc=val_by_aug[cfg.augment])
        log.history.append({"epoch": 1, "train_loss": 1.0, "val_acc": val_by_aug[cfg.augment]})
        return log

    return fake


@pytest.mark.parametrize(("vals", "want"), [({"none": 60.0, "shift": 70.0}, "shift"),
                                            ({"none": 75.0, "shift": 70.0}, "none"),
                                            ({"none": 70.0, "shift": 70.0}, "none")])
def test_best_control_picks_augmentation_by_validation(data: DataSplits, monkeypatch: pytest.MonkeyPatch,
                                                       vals: dict[str, float], want: str) -> None:
    dd = importlib.import_module("deepshrink.compress.distill")  # the module, not the step's name
    seen: list[str] = []
    monkeypatch.setattr(dd, "fit", _fake_fit(vals, seen))
    out = apply(Variant("v", torch.nn.Linear(1, 1), _teacher_manifest(data)),
                DistillConfig(alpha=0.0, epochs=1, control="best"), StepContext(data=data, seed=0))
    assert seen == ["none", "shift"]  # mnist family: none and the baselines' shift, same epoch cap
    assert out.info["distill_augment"] == want and out.manifest.train["augment"] == want
    assert out.info["distill_augment_val_acc"] == vals and out.manifest.train["epochs"] == 1
    assert float(next(out.model.parameters()).detach().flatten()[0]) == vals[want]  # the kept run is the chosen one


def test_best_control_chooses_at_seed_0_once_and_every_seed_trains_that_choice(
        data: DataSplits, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Seed 1 asks first: it runs the search at seed 0 and one run of the winner at seed 1, although seed 1
    alone would have picked the other augmentation; seed 0 then reuses the saved winner without training,
    and seed 2 trains once."""
    dd = importlib.import_module("deepshrink.compress.distill")
    seen: list[tuple[str, int]] = []

    def fake(model, data, cfg, objective=None, **kw):  # type: ignore[no-untyped-def]
        from deepshrink.train import TrainLog

        seen.append((cfg.augment, cfg.seed))
        acc = {"none": 60.0, "shift": 70.0}[cfg.augment] + (20.0 if (cfg.augment, cfg.seed) == ("none", 1) else 0)
        with torch.no_grad():
            next(model.parameters()).fill_(acc + cfg.seed)
        return TrainLog(history=[{"epoch": 1, "train_loss": 1.0, "val_acc": acc}], best_epoch=1, best_val_acc=acc,
                        seconds=1.0)

    monkeypatch.setattr(dd, "fit", fake)
    cfg = DistillConfig(alpha=0.0, epochs=1, control="best", student="lenet-300-100")
    base = Variant("v", torch.nn.Linear(1, 1), _teacher_manifest(data))
    out = {s: apply(base, cfg, StepContext(data=data, seed=s, cache_dir=tmp_path)) for s in (1, 0, 2)}
    assert seen == [("none", 0), ("shift", 0), ("shift", 1), ("shift", 2)]
    for s, v in out.items():
        assert v.info["distill_augment"] == "shift" and v.manifest.train["augment"] == "shift"
        assert v.info["distill_augment_val_acc"] == {"none": 60.0, "shift": 70.0}
        assert float(next(v.model.parameters()).detach().flatten()[0]) == 70.0 + s  # its own seed's run
    assert out[0].info["distill_train_seconds"] == 2.0 and out[1].info["distill_train_seconds"] == 1.0
    # The same student, config and objective with control=same (lenet-300-100's tuned MNIST augmentation is
    # shift) is a run already trained: it is loaded, not trained again.
    same = apply(base, dataclasses.replace(cfg, control="same"), StepContext(data=data, seed=1, cache_dir=tmp_path))
    assert len(seen) == 4 and float(next(same.model.parameters()).detach().flatten()[0]) == 71.0
    monkeypatch.setattr(importlib.import_module("deepshrink.codehash"), "_CODE", ["edited"])  # other code
    apply(base, dataclasses.replace(cfg, control="same"), StepContext(data=data, seed=1, cache_dir=tmp_path))
    assert seen[4:] == [("shift", 1)]  # trained again: a memo answers only for the code that made it


def test_best_distilled_student_runs_the_teacher_online_when_augmented(data: DataSplits, teacher: Variant,
                                                                       tmp_path: Path) -> None:
    cfg = DistillConfig(epochs=1, control="best")
    kd = apply(teacher, cfg, StepContext(data=data, seed=0, cache_dir=tmp_path))
    assert set(kd.info["distill_augment_val_acc"]) == {"none", "shift"}
    assert kd.info["distill_teacher_logits"] == ("online" if kd.info["distill_augment"] == "shift" else "cached")
    from deepshrink.compress.distill import control_of
    control = control_of([cfg])
    assert control is not None and control.control == "best" and control.alpha == 0.0
    with pytest.raises(UserError, match="control"):
        DistillConfig(control="strong")


def _teacher_manifest(data: DataSplits) -> Manifest:
    return Manifest(model="lenet-300-100", dataset=data.name, input_shape=list(data.input_shape),
                    num_classes=data.num_classes, mean=data.mean, std=data.std)
