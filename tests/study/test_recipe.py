"""Recipes: built-ins load, every validation error is one line naming the file and key, `--set`
overrides are typed, steps are checked through `parse_step` only."""

import subprocess
import sys
from pathlib import Path

import pytest

from deepshrink.errors import UserError
from deepshrink.study.recipe import apply_override, builtin_dir, builtin_names, load_recipe

GOOD = """
name = "t"
[study]
datasets = ["mnist"]
models = ["lenet-5"]
[train]
epochs = 2
[[pipeline]]
name = "d"
steps = ["distill:temperature=4"]
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "r.toml"
    p.write_text(text)
    return p


def test_builtins_load_and_are_kept_once() -> None:
    assert {"quick", "paper", "beyond"} <= set(builtin_names())
    for name in ("quick", "paper", "beyond"):
        r = load_recipe(name)
        assert r.pipelines and r.description and r.expected_minutes > 0
    # Package data is the only copy: a second one (e.g. a top-level recipes/) would drift.
    repo = Path(__file__).resolve().parents[2]
    assert not (repo / "recipes").exists()
    assert builtin_dir().is_dir() and all(p.parent == builtin_dir() for p in builtin_dir().glob("*.toml"))


def test_paper_covers_every_reference_experiment() -> None:
    labels = {p.name for p in load_recipe("paper").pipelines}
    assert {"fp64", "fp16", "int8", "prune50", "prune90", "prune-dense", "prune-dense-conv", "student", "distill",
            "distill+int8", "prune80+int8", "prune-dense-conv+int8", "distill-T1", "fw-distill-pruned+int8",
            "fw-prune-distilled+int8"} <= labels
    assert set(load_recipe("paper").datasets) == {"mnist", "cifar10"}


@pytest.mark.parametrize(("text", "expect"), [
    (GOOD + "bogus = 1\n", "bogus: unknown key"),
    (GOOD.replace("[train]", "[train]\nepoch = 3"), "train.epoch: unknown key"),
    (GOOD.replace("epochs = 2", 'epochs = "two"'), "train.epochs: expected int"),
    (GOOD.replace("epochs = 2", "epochs = -1"), "train.epochs=-1"),
    (GOOD.replace('["lenet-5"]', '["lenet-7"]'), "study.models: unknown model 'lenet-7'"),
    (GOOD.replace('["mnist"]', '["imagenet"]'), "study.datasets: unknown dataset"),
    (GOOD.replace("distill:temperature=4", "sharpen:x=1"), "pipeline[0].steps[0]: unknown step 'sharpen'"),
    (GOOD.replace("distill:temperature=4", "distill:temperature=-1"), "pipeline[0].steps[0]: distill.temperature"),
    (GOOD.replace("distill:temperature=4", "distill:colour=red"), "pipeline[0].steps[0]: step distill: unknown key"),
    (GOOD + "[[pipeline]]\nname = \"d\"\nsteps = [\"distill\"]\n", "pipeline[1].name: 'd' used twice"),
    (GOOD + "[[pipeline]]\nname = \"e\"\n", "pipeline[1].steps: missing"),
    (GOOD + "[measure]\nruntimes = [\"tflite\"]\n", "measure.runtimes: unknown runtime"),
    (GOOD + "[measure]\nchoice_margin = 1.0\n", "measure.choice_margin: must be >= 0 and < 1"),
    (GOOD + "[measure]\nchoice_margin = -0.01\n", "measure.choice_margin: must be >= 0 and < 1"),
    (GOOD + "[measure]\nchoice_margin = \"3%\"\n", "measure.choice_margin: expected float"),
    (GOOD + "[[pipeline\n", "not valid TOML"),
])
def test_validation_errors_are_one_line_naming_file_and_key(tmp_path: Path, text: str, expect: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(UserError) as e:
        load_recipe(str(path))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(path)) and expect in msg, msg


def test_unimplemented_spec_step_passes_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deepshrink.compress import STEP_CONFIGS

    monkeypatch.delitem(STEP_CONFIGS, "encode")  # every SPEC technique has landed: pretend one has not
    r = load_recipe(str(_write(tmp_path, GOOD.replace("distill:temperature=4", "encode"))))
    assert r.pipelines[0].steps == ("encode",)


def test_baseline_placeholder_validates_other_keys(tmp_path: Path) -> None:
    text = GOOD.replace("distill:temperature=4", "distill:student=input,teacher={baseline},temperature=2")
    assert load_recipe(str(_write(tmp_path, text))).pipelines[0].steps[0].endswith("temperature=2")
    bad = GOOD.replace("distill:temperature=4", "distill:teacher={baseline},alpha=7")
    with pytest.raises(UserError, match="alpha"):
        load_recipe(str(_write(tmp_path, bad)))


def test_set_overrides_are_typed(tmp_path: Path) -> None:
    path = str(_write(tmp_path, GOOD))
    r = load_recipe(path, ["train.epochs=5", "study.models=lenet-5,mlp-50", "measure.repeats=2", "train.lr=0.1"])
    assert r.train["epochs"] == 5 and r.train["lr"] == 0.1
    assert r.models == ("lenet-5", "mlp-50") and r.measure.repeats == 2
    for bad, expect in (("train.epochs=many", "expected int"), ("train.nope=1", "unknown key"),
                        ("epochs=3", "SECTION.KEY=VALUE"), ("study.models=alexnet", "unknown model")):
        with pytest.raises(UserError, match=expect):
            load_recipe(path, [bad])


def test_train_per_overrides_most_specific_wins(tmp_path: Path) -> None:
    text = GOOD + '[train.per."lenet-5"]\nepochs = 4\n[train.per."mnist/lenet-5"]\nepochs = 6\n'
    r = load_recipe(str(_write(tmp_path, text)))
    assert r.train_overrides("mnist", "lenet-5")["epochs"] == 6
    assert r.train_overrides("cifar10", "lenet-5")["epochs"] == 4
    assert r.train_overrides("cifar10", "mlp-50")["epochs"] == 2


def test_apply_override_creates_missing_section() -> None:
    raw: dict = {}
    apply_override(raw, "measure.threads=1,0")
    assert raw == {"measure": {"threads": [1, 0]}}


def test_cli_bad_recipe_exits_2_with_one_line(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD + "bogus = 1\n")
    res = subprocess.run([sys.executable, "-m", "deepshrink", "study", str(path), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "bogus" in res.stderr
    assert not (tmp_path / "o" / "results.csv").exists()


def test_choice_margin_defaults_to_10_percent_and_is_settable(tmp_path: Path) -> None:
    assert load_recipe(str(_write(tmp_path, GOOD))).measure.choice_margin == 0.10
    assert load_recipe(str(_write(tmp_path, GOOD)), ["measure.choice_margin=0"]).measure.choice_margin == 0.0
    with pytest.raises(UserError, match="choice_margin"):
        load_recipe(str(_write(tmp_path, GOOD)), ["measure.choice_margin=1.5"])


def test_cli_bad_choice_margin_exits_2(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD)
    res = subprocess.run([sys.executable, "-m", "deepshrink", "study", str(path), "--out", str(tmp_path / "o"),
                          "--set", "measure.choice_margin=2"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "choice_margin" in res.stderr


def test_cli_recipes_lists_builtins() -> None:
    res = subprocess.run([sys.executable, "-m", "deepshrink", "recipes"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "quick" in res.stdout and "paper" in res.stdout and "min" in res.stdout


def test_models_per_dataset_replace_the_study_models_for_that_dataset() -> None:
    from deepshrink.study.plan import plan
    from deepshrink.study.recipe import validate

    r = validate({"study": {"datasets": ["mnist", "cifar10"], "models": ["lenet-5", "lenet-300-100"],
                            "models_per": {"cifar10": ["mlp-50"]}},
                  "pipeline": [{"name": "fp16", "steps": ["quantize:precision=fp16"]}]}, "t.toml")
    assert r.models_for("mnist") == ("lenet-5", "lenet-300-100") and r.models_for("cifar10") == ("mlp-50",)
    assert {(w.dataset, w.model) for w in plan(r)} == {("mnist", "lenet-5"), ("mnist", "lenet-300-100"),
                                                       ("cifar10", "mlp-50")}
    narrowed = validate({"study": {"datasets": ["mnist"], "models_per": {"cifar10": ["mlp-50"]}}}, "t.toml")
    assert narrowed.models_for("mnist") == ("lenet-5",)  # --set study.datasets=mnist leaves cifar10's unused
    for bad, key in (({"imagenet": ["lenet-5"]}, "models_per.imagenet"), ({"mnist": []}, "models_per.mnist"),
                     ({"mnist": ["nope"]}, "models_per.mnist"), (["mnist"], "models_per")):
        with pytest.raises(UserError, match=key):
            validate({"study": {"datasets": ["mnist"], "models_per": bad}}, "t.toml")


def test_beyond_runs_every_variant_under_three_seeds_with_deep_compression_on_hans_models() -> None:
    from deepshrink.study.plan import plan

    works = plan(load_recipe("beyond"))
    by_label: dict[tuple[str, str, str], set[int]] = {}
    for w in works:
        by_label.setdefault((w.dataset, w.model, w.label), set()).add(w.seed)
    assert all(seeds == {0, 1, 2} for seeds in by_label.values())
    dc = {m for d, m, label in by_label if label == "deep-compression"}
    assert dc == {"lenet-300-100", "lenet-5", "lenet-5-caffe"}
    assert all(w.steps[-1] == "encode" for w in works if w.label == "deep-compression")
    assert {m for d, m, _ in by_label if d == "cifar10"} == {"examples/models.py:dwnet"}
    assert {"obd95", "magnitude95", "w4", "w2"} <= {label for _, _, label in by_label}
