"""Whole-study validation before any work: no data, an unreadable checkpoint or a bad model reference
exits 2 with one line within seconds, before the run directory is even created."""

import time
from pathlib import Path

import pytest

from deepshrink.data import sources
from deepshrink.study import unit

from conftest import cli_error
from smoke_recipe import RECIPE


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No shared data, no user cache, no network: only what each test hands the study."""
    monkeypatch.delenv("DEEPSHRINK_DATA", raising=False)
    monkeypatch.setenv("DEEPSHRINK_OFFLINE", "1")
    monkeypatch.setattr(sources, "cache_dir", lambda: tmp_path / "no-cache")
    unit._DATA.clear()  # decoded datasets of earlier tests would hide a missing one


def _study(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str,
           data_dir: Path) -> str:
    recipe = tmp_path / "r.toml"
    recipe.write_text(text)
    t0 = time.perf_counter()
    line = cli_error(monkeypatch, capsys, "study", str(recipe), "--out", str(tmp_path / "run"), "--data-dir",
                     str(data_dir), "--device", "cpu", "--quiet")
    assert time.perf_counter() - t0 < 30  # seconds, not a training run
    assert not (tmp_path / "run").exists()  # refused before any work: not even a run directory
    return line


def test_no_dataset_reachable_is_exit_2_before_any_work(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    line = _study(monkeypatch, capsys, tmp_path, RECIPE, tmp_path / "empty")
    assert "study.datasets: dataset 'mnist' not found" in line and "--data-dir" in line


def test_unreadable_teacher_checkpoint_is_exit_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path, mnist_dir: Path) -> None:
    from deepshrink.checkpoint import Manifest, save_checkpoint
    from deepshrink.models import create_model

    teacher = save_checkpoint(create_model("mlp-50", "mnist"), Manifest("mlp-50", "mnist", [1, 28, 28], 10, [0.1],
                                                                        [0.3]), tmp_path / "t" / "teacher")
    teacher.write_bytes(teacher.read_bytes()[:100])  # truncated weights, intact manifest
    text = RECIPE.split("[[pipeline]]")[0] + f'[[pipeline]]\nname = "kd"\nsteps = ["distill:teacher={teacher}"]\n'
    line = _study(monkeypatch, capsys, tmp_path, text, mnist_dir)
    assert "teacher.safetensors: not a readable safetensors file" in line and "pipeline 'kd'" in line


@pytest.mark.parametrize(("body", "says"), [
    ("def net(num_classes):\n    raise ValueError('width must be even')\n", "calling it raised ValueError"),
    ("import torch\ndef net(num_classes):\n    return torch.nn.Linear(3, num_classes)\n", "a forward pass on"),
    ("def other():\n    pass\n", "no callable 'net'"),
])
def test_bad_model_reference_is_exit_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path, mnist_dir: Path, body: str, says: str) -> None:
    (tmp_path / "mine.py").write_text(body)
    text = RECIPE.replace('models = ["lenet-300-100"]', f'models = ["{tmp_path / "mine.py"}:net"]')
    assert says in _study(monkeypatch, capsys, tmp_path, text, mnist_dir)
