"""A study whose `study.models` names a trained model file (SPEC §4 "Already trained?"): a float .tflite written
here without TensorFlow is its own baseline (no training run), read with the preprocessing its
`[model_args."PATH"] normalize` names; pipelines start from it, a second run resumes from its cache, and every
mistake about the file (missing, unknown key, bad normalize, an operator the converter lacks, no stated
normalization) is one line before any work. Also `parse_normalize("raw")` and the built-in mlperf-ic recipe."""

import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import deepshrink as ds
from deepshrink.checkpoint import read_manifest
from deepshrink.data.normalize import RAW_STD, parse_normalize, renormalize
from deepshrink.errors import UserError
from deepshrink.ingest.tflite_file import TfModel, TfOperator, TfTensor
from deepshrink.ingest.tflite_to_torch import REFERENCE as TFLITE_REFERENCE
from deepshrink.ingest.tflite_write import write_tflite
from deepshrink.models import check_model_name, display_name, is_trained_file, source_sha256
from deepshrink.report.mcu import _is_control
from deepshrink.results import read_rows, write_rows
from deepshrink.study import unit
from deepshrink.study.plan import baseline_key
from deepshrink.study.recipe import builtin_dir, load_recipe, validate
from deepshrink.study.run import run_study

from conftest import cli_error

_NONE_F, _NONE_I = np.zeros(0, np.float32), np.zeros(0, np.int64)
REPO = Path(__file__).resolve().parents[2]


def pixel_classifier(op: str = "") -> TfModel:
    """A float 8 x 8 x 3 -> 3 classifier that is right only on 0-255 pixels: a 1 x 1 convolution passes channel k
    less 140 through a ReLU, the fully connected layer sums each channel. On 0-1 or standardized inputs every
    activation is 0 and every logit equal (argmax: class 0, a third of the data). `op` "MUL": one operator the
    converter refuses, inside."""
    tensors: list[TfTensor] = []
    ops: list[TfOperator] = []

    def tensor(shape: tuple[int, ...], data: np.ndarray | None = None, dtype: str = "float32") -> int:
        tensors.append(TfTensor(len(tensors), f"t{len(tensors)}", shape, dtype, _NONE_F, _NONE_I, 0, data))
        return len(tensors) - 1

    def layer(name: str, inputs: tuple[int, ...], shape: tuple[int, ...], options: dict[str, object]) -> int:
        out = tensor(shape)
        ops.append(TfOperator(len(ops), name, 1, inputs, (out,), options))
        return out

    x = tensor((1, 8, 8, 3))
    w = np.zeros((3, 1, 1, 3), np.float32)
    w[[0, 1, 2], 0, 0, [0, 1, 2]] = 1.0
    y = layer("CONV_2D", (x, tensor(w.shape, w), tensor((3,), np.full(3, -140.0, np.float32))), (1, 4, 4, 3),
              {"padding": "SAME", "stride_h": 2, "stride_w": 2, "dilation_h_factor": 1, "dilation_w_factor": 1,
               "fused_activation_function": "RELU"})
    if op == "MUL":
        y = layer("MUL", (y, y), (1, 4, 4, 3), {"fused_activation_function": "NONE"})
    flat = layer("RESHAPE", (y, tensor((2,), np.array([1, 48], np.int32), "int32")), (1, 48), {})
    fw = (np.arange(48)[None] % 3 == np.arange(3)[:, None]).astype(np.float32) / 16  # H x W x C order: C fastest
    logits = layer("FULLY_CONNECTED", (flat, tensor(fw.shape, fw), tensor((3,), np.zeros(3, np.float32))), (1, 3),
                   {"fused_activation_function": "NONE", "keep_num_dims": False})
    out = layer("SOFTMAX", (logits,), (1, 3), {"beta": 1.0})
    return TfModel("pixels.tflite", 3, "test", tuple(tensors), tuple(ops), (x,), (out,))


def write_data(path: Path) -> Path:
    """An npz of 8 x 8 x 3 uint8 images: class k has channel k at 220, everything else below 60."""
    rng = np.random.default_rng(0)

    def images(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % 3
        x = rng.integers(0, 60, (n, 8, 8, 3)).astype(np.uint8)
        for k in range(3):
            x[y == k, :, :, k] = 220
        return x, y

    (xt, yt), (xs, ys) = images(120), images(60)
    np.savez(path, x_train=xt, y_train=yt, x_test=xs, y_test=ys)
    return path


def recipe_text(model: Path, data: Path, args: str = 'normalize = "raw"', measure: str = "") -> str:
    return f"""
name = "trained-file"
description = "tiny"
expected_minutes = 0.1
[study]
datasets = ["npz:{data}"]
models = ["{model}"]
val_size = 30
[model_args."{model}"]
{args}
[measure]
runtimes = ["onnxruntime"]
threads = [1]
repeats = 1
single_calls = 3
images = 30
{measure}
[[pipeline]]
name = "dense-ft"
steps = ["finetune:epochs=1", "quantize:precision=int8,method=ptq"]
[[pipeline]]
name = "int8"
steps = ["quantize:precision=int8,method=ptq"]
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, list[float]]]:
    """(recipe, run directory, the clock each microcontroller measurement was asked for) of one run. The
    microcontroller build itself is replaced by a recorder (tests/study/test_mcu_study.py builds for real)."""
    root = tmp_path_factory.mktemp("trained-file")
    model = root / "pixels.tflite"
    model.write_bytes(write_tflite(pixel_classifier()))
    recipe = root / "r.toml"
    recipe.write_text(recipe_text(model, write_data(root / "data.npz"),
                                  measure='mcu = "cortex-m4"\nmcu_clock_mhz = 40.0\nmcu_optimize = "size"'))
    clocks: list[float] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(unit, "measure_mcu", lambda m, data, out, target, clock=80.0, optimize="speed":
                   clocks.append(clock) if optimize == "size" else None)
        run_study(str(recipe), root / "run", None, "cpu", quiet=True)
    yield recipe, root / "run", clocks


def test_the_file_is_the_baseline_and_pipelines_start_from_it(study: tuple[Path, Path, list[float]]) -> None:
    _, out, clocks = study
    rows = {r["label"]: r for r in read_rows(out / "results.csv")}
    assert set(rows) == {"baseline", "dense-ft", "int8"}
    assert all(r["status"] == "ok" for r in rows.values()), {k: r["status"] for k, r in rows.items()}
    base = rows["baseline"]
    assert float(base["train_seconds"]) == 0.0 and base["epochs"] == "0"  # loaded, not trained
    assert base["variant"].endswith("-pixels") and base["model"] == "pixels"  # the file's stem names it
    assert all(r["variant"].startswith(base["variant"]) for r in rows.values())
    # Right only on 0-255 pixels: 100 % says the study fed it the data as `normalize = "raw"` says.
    assert float(base["accuracy_pct"]) == 100.0
    assert float(rows["int8"]["accuracy_pct"]) >= 95.0 and float(rows["int8"]["train_seconds"]) == 0.0
    ft = rows["dense-ft"]
    assert ft["recipe_steps"] == "finetune:epochs=1 | quantize:precision=int8,method=ptq"
    assert ft["epochs"] == "1" and float(ft["train_seconds"]) > 0.0 and float(ft["accuracy_pct"]) >= 95.0
    manifest = read_manifest(out / base["checkpoint"])
    assert manifest.model == TFLITE_REFERENCE and manifest.mean == [0.0] * 3 and manifest.std == [RAW_STD] * 3
    assert clocks == [40.0, 40.0]  # each INT8 variant measured at the recipe's clock and mcu_optimize


def test_a_second_run_resumes_without_recomputing(study: tuple[Path, Path, list[float]], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    recipe, first, _ = study
    out = tmp_path / "run"
    shutil.copytree(first, out)
    rows = read_rows(out / "results.csv")
    kept = [r for r in rows if r["label"] != "int8"]  # as if the study had stopped before its last variant
    write_rows(out / "results.csv", kept, list(rows[0]))

    def no(*args: object, **kwargs: object) -> None:
        raise AssertionError("the baseline was recomputed: its cache was not used")

    monkeypatch.setattr(unit, "file_baseline", no)
    monkeypatch.setattr(unit, "measure_mcu", lambda *a, **k: None)
    _, statuses = run_study(str(recipe), out, None, "cpu", quiet=True)
    assert set(statuses.values()) == {"ok"}
    again = {r["label"]: r for r in read_rows(out / "results.csv")}
    assert sorted(again) == ["baseline", "dense-ft", "int8"] and again["int8"]["status"] == "ok"
    assert again["baseline"] == {k: v for k, v in next(r for r in rows if r["label"] == "baseline").items()}
    assert float(again["int8"]["accuracy_pct"]) >= 95.0
    _, statuses = run_study(str(recipe), out, None, "cpu", quiet=True)  # all done: nothing added
    assert set(statuses.values()) == {"ok"} and len(read_rows(out / "results.csv")) == 3


def test_the_file_s_bytes_are_in_the_baseline_key(tmp_path: Path) -> None:
    model = tmp_path / "m.tflite"
    model.write_bytes(write_tflite(pixel_classifier()))
    args: dict[str, object] = {"normalize": "raw"}
    key = baseline_key("npz:d.npz", str(model), {"epochs": 1}, "fp", 30, args)
    assert key == baseline_key("npz:d.npz", str(model), {"epochs": 1}, "fp", 30, args)
    assert source_sha256(str(model)) and key != baseline_key("npz:d.npz", str(model), {"epochs": 1}, "fp", 30,
                                                             {"normalize": "none"})
    model.write_bytes(model.read_bytes() + b"\0")  # another file at the same path: another baseline
    assert baseline_key("npz:d.npz", str(model), {"epochs": 1}, "fp", 30, args) != key


def test_trained_files_are_told_from_names_and_references(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("m.tflite", "dir/m.onnx", "m.safetensors"):
        assert is_trained_file(name) and display_name(name) == "m"
    assert display_name("runs/a/artifacts/cifar10-net/model.safetensors") == "cifar10-net"  # not every one "model"
    for name in ("lenet-5", "examples/models.py:dwnet", "m.py"):
        assert not is_trained_file(name)
    assert source_sha256("lenet-5") == "" and source_sha256("m.tflite") == ""  # absent: no hash to take
    with pytest.raises(UserError, match=r"m\.tflite: no such file"):
        check_model_name("m.tflite")
    Path("m.tflite").write_bytes(b"x")
    check_model_name("m.tflite")  # present: read later (preflight), not here


def _validate(text: str) -> None:
    validate(tomllib.loads(text), "r.toml")


@pytest.mark.parametrize(("args", "needle"), [
    ("width = 16", "model_args.{model}.width: unknown (a trained file takes normalize)"),
    ('normalize = "loud"', "model_args.{model}.normalize 'loud': expected mean="),
    ('normalize = "mean=0,std=0"', "model_args.{model}.normalize: std='0' must be positive"),
])
def test_a_file_s_model_args_are_checked(args: str, needle: str, tmp_path: Path) -> None:
    model = tmp_path / "m.tflite"
    model.write_bytes(b"not read while validating")
    with pytest.raises(UserError) as e:
        _validate(recipe_text(model, tmp_path / "d.npz", args))
    assert needle.format(model=model) in str(e.value) and str(e.value).startswith("r.toml: ")


def test_a_missing_file_and_a_bad_clock_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "gone.tflite"
    with pytest.raises(UserError, match=rf"study.models: .*{missing.name}: no such file"):
        _validate(recipe_text(missing, tmp_path / "d.npz"))
    model = tmp_path / "m.tflite"
    model.write_bytes(b"x")
    for clock in ("0", "-80.0"):
        with pytest.raises(UserError, match="measure.mcu_clock_mhz: must be > 0"):
            _validate(recipe_text(model, tmp_path / "d.npz", measure=f"mcu_clock_mhz = {clock}"))
    with pytest.raises(UserError, match="measure.mcu_optimize: expected speed or size, not 'fast'"):
        _validate(recipe_text(model, tmp_path / "d.npz", measure='mcu_optimize = "fast"'))
    recipe = tmp_path / "r.toml"
    recipe.write_text(recipe_text(missing, tmp_path / "d.npz"))
    line = cli_error(monkeypatch, capsys, "study", str(recipe), "--out", str(tmp_path / "run"), "--quiet")
    assert "study.models" in line and "gone.tflite: no such file" in line
    recipe.write_text(recipe_text(model, tmp_path / "d.npz", "normalize = \"raw\"\nbatch = 2"))
    line = cli_error(monkeypatch, capsys, "study", str(recipe), "--out", str(tmp_path / "run"), "--quiet")
    assert f"model_args.{model}.batch: unknown" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("op", "args", "needle"), [
    ("MUL", 'normalize = "raw"', "cannot convert TFLite operator MUL (operator 1)"),
    ("", "", "does not say how its input is normalized"),  # no metadata and no normalize: it cannot be guessed
    ("", 'normalize = "mean=0+0,std=1"', "mean has 2 values; the data has 3 channels"),
])
def test_a_file_the_study_cannot_use_fails_in_preflight(op: str, args: str, needle: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.tflite"
    model.write_bytes(write_tflite(pixel_classifier(op)))
    recipe = tmp_path / "r.toml"
    recipe.write_text(recipe_text(model, write_data(tmp_path / "d.npz"), args))
    line = cli_error(monkeypatch, capsys, "study", str(recipe), "--out", str(tmp_path / "run"), "--device", "cpu",
                     "--quiet")
    assert "study.models" in line and needle in line, line
    # A wrong channel count is said as "--normalize: ..." (the compress flag), naming neither the file nor its
    # model_args key: reported, not pinned here.
    assert str(model) in line or "mean has" in line, line
    assert not (tmp_path / "run" / "results.csv").exists()


def test_raw_normalization_gives_the_pixel_values_exactly() -> None:
    assert parse_normalize("raw") == ([0.0], [RAW_STD]) == parse_normalize(" RAW ")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8)  # CIFAR-like: N x H x W x C uint8
    x[0], x[1] = np.arange(192).reshape(8, 8, 3), (np.arange(192) + 64).reshape(8, 8, 3)  # every value 0-255
    y = np.arange(64) % 4
    data = ds.Data.from_arrays(x[:48], y[:48], x[48:], y[48:], val_size=8)  # its own mean and std
    raw = renormalize(data, parse_normalize("raw"))
    assert raw.mean == [0.0] * 3 and raw.std == [RAW_STD] * 3
    pixels = x[:48].transpose(0, 3, 1, 2).astype(np.float32)
    got = np.concatenate([raw.train_x.numpy(), raw.val_x.numpy()])
    assert np.array_equal(np.sort(got, axis=0), np.sort(pixels, axis=0))  # the split shuffles; values exact
    assert np.array_equal(raw.test_x.numpy(), x[48:].transpose(0, 3, 1, 2).astype(np.float32))
    assert set(np.unique(got)) == set(range(256))
    back = renormalize(raw, (data.mean, data.std))  # and back, through the pixels
    assert np.array_equal(back.test_x.numpy(), data.test_x.numpy())


def _mlperf_text(model: Path) -> str:
    text = (builtin_dir() / "mlperf-ic.toml").read_text()
    return text.replace("../shared/mlperf-tiny/pretrainedResnet.tflite", str(model))


def test_the_mlperf_recipe_is_valid_with_one_dense_control(tmp_path: Path) -> None:
    """Checked against a file written here (../shared holds the real model only on some machines)."""
    model = tmp_path / "resnet.tflite"
    model.write_bytes(b"x")
    r = validate(tomllib.loads(_mlperf_text(model)), "mlperf-ic.toml")
    assert r.models_for("cifar10") == (str(model),) and r.model_args[str(model)] == {"normalize": "raw"}
    assert r.measure.mcu == "cortex-m4" and r.measure.mcu_clock_mhz == 120.0
    controls = [p.name for p in r.pipelines if _is_control([{"recipe_steps": " | ".join(p.steps)}])]
    assert controls == ["dense-ft"]
    epochs = {p.name: [s for s in p.steps if "epochs=15" in s] for p in r.pipelines}
    assert all(epochs[name] for name in epochs if name != "int8")  # each retrained as long as the control


def test_the_mlperf_recipe_loads_from_the_repository_root(monkeypatch: pytest.MonkeyPatch) -> None:
    if not (REPO.parent / "shared" / "mlperf-tiny" / "pretrainedResnet.tflite").is_file():
        pytest.skip("../shared/mlperf-tiny/pretrainedResnet.tflite absent")
    monkeypatch.chdir(REPO)
    assert load_recipe("mlperf-ic").name == "mlperf-ic"


def test_listing_the_builtins_needs_none_of_their_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deepshrink.api.runs import recipes

    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "examples").symlink_to(REPO / "examples")  # beyond's references resolve; no ../shared
    monkeypatch.chdir(tmp_path / "repo")
    assert "mlperf-ic" in {name for name, _, _ in recipes()}
