"""Search under a budget (SPEC §13): the budget and space on their own, then a small real search on
synthetic MNIST: trials measured as shipped, tables written, hand-tuned pipelines first, resumable."""

import csv
import math
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

from deepshrink.compress import parse_step
from deepshrink.errors import UserError
from deepshrink.search import TEMPLATES, SearchOptions, SearchSpace, parse_budget, run_search
from deepshrink.search.space import model_info, seed_params
from deepshrink.search.study import hand_tuned
from deepshrink.search.tables import pareto_numbers

from conftest import cli_error


def test_budget_parses_terms_and_objectives() -> None:
    b = parse_budget("drop<=0.5, bytes<=20000", minimize="bytes")
    assert dict(b.limits) == {"drop": 0.5, "bytes": 20000.0} and b.objectives == ("bytes",)
    assert b.feasible({"drop": 0.4, "bytes": 19000}) and not b.feasible({"drop": 0.6, "bytes": 100})
    assert b.misses({"drop": 0.9, "bytes": 100}).startswith("drop 0.4 over")
    assert not b.feasible({"drop": 0.1})  # a metric not measured misses its ceiling
    assert parse_budget("", pareto="bytes,drop").objectives == ("bytes", "drop")


@pytest.mark.parametrize(("budget", "minimize", "pareto", "needle"), [
    ("speed<=3", "bytes", None, "unknown metric 'speed'"),
    ("drop<0.5", "bytes", None, "is not METRIC<=NUMBER"),
    ("bytes<=-1", "bytes", None, "must be a finite number"),
    ("drop<=1,drop<=2", "bytes", None, "drop given twice"),
    ("drop<=1", None, None, "--minimize METRIC or --pareto"),
    ("drop<=1", "bytes", "bytes,drop", "--minimize METRIC or --pareto"),
    ("drop<=1", None, "bytes", "two different metrics"),
    ("drop<=1", "size", None, "--minimize: unknown metric"),
])
def test_bad_budgets_are_one_line(budget: str, minimize: str | None, pareto: str | None, needle: str) -> None:
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace("*", r"\*")):
        parse_budget(budget, minimize, pareto)


def test_cli_bad_budget_exits_2_before_reading_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    line = cli_error(monkeypatch, capsys, "search", str(tmp_path / "none.safetensors"), "--budget", "drop<=x",
                     "--minimize", "bytes")
    assert "--budget" in line and "drop<=x" in line


def test_space_bad_ranges_and_templates() -> None:
    for kwargs, needle in (({"sparsity": (0.9, 0.5)}, "search.sparsity"), ({"bits": (0, 4)}, "search.bits"),
                           ({"templates": ("magic",)}, "unknown template 'magic'")):
        with pytest.raises(UserError, match=needle):
            SearchSpace(**kwargs)  # type: ignore[arg-type]


class _Dw(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.dw = nn.Conv2d(8, 8, 3, groups=8)
        self.fc = nn.Linear(8, 10)


class _Draw:
    """Every key at its range's top: the most aggressive pipeline a template can draw."""

    def real(self, name: str, lo: float, hi: float, step: float) -> float:
        return hi

    def integer(self, name: str, lo: int, hi: int) -> int:
        return lo

    def choice(self, name: str, options: tuple[object, ...]) -> object:
        return options[-1]


class _Fixed(_Draw):
    """The given keys' values, the top of the range for the rest."""

    def __init__(self, values: dict[str, object]) -> None:
        self.values = values

    def real(self, name: str, lo: float, hi: float, step: float) -> float:
        return float(self.values.get(name, hi))  # type: ignore[arg-type]

    def choice(self, name: str, options: tuple[object, ...]) -> object:
        return self.values.get(name, options[-1])


def test_templates_draw_steps_compress_accepts_and_spare_depthwise_kernels() -> None:
    info = model_info(_Dw())
    assert info.family == "depthwise" and info.depthwise == ("dw",) and info.conv == ("conv",)
    space = SearchSpace(students=("mlp-50",))
    assert space.default_templates(info, ("bytes",)) == ("dc",)
    assert set(space.default_templates(info, ("us_b1", "drop"))) == {"q", "sq", "pq", "sub8", "dc", "dq"}
    for name in space.default_templates(info):
        steps = TEMPLATES[name](_Draw(), info, space)
        assert steps and all(parse_step(s) is not None for s in steps)
    dc = TEMPLATES["dc"](_Draw(), info, space)[0]
    assert "dw=0.5" in dc and "conv=0.98" in dc and "fc=0.98" in dc
    assert "schedule=iterative,rounds=3" in dc  # the _Draw picks the last round count


def test_structured_template_draws_inner_layers_only_where_a_residual_ties_some() -> None:
    """A plain stack's layers are all untied (no choice to draw); resnet8's inner convs are the untied ones,
    and the sq template draws between them and all layers, channels kept in multiples of 8."""
    import importlib.util

    from deepshrink.search.study import seeds

    dw = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Conv2d(8, 8, 3, groups=8), nn.Flatten(), nn.Linear(288, 10))
    assert model_info(dw, torch.rand(1, 1, 10, 10)).inner == ()  # the depthwise conv ties its input's channels
    assert model_info(nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.Linear(8, 2)), torch.rand(1, 4)).inner == ()
    spec = importlib.util.spec_from_file_location("models", Path(__file__).parents[2] / "examples" / "models.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    info = model_info(module.resnet8(), torch.rand(1, 3, 32, 32))
    assert info.inner == ("layer1.conv1.0", "layer2.conv1.0", "layer3.conv1.0")
    steps = TEMPLATES["sq"](_Draw(), info, SearchSpace())
    assert steps[0] == "prune.structured:ratio=0.8,layers=inner,round_to=8"
    assert parse_step(steps[0]).layers == "inner"
    assert seed_params(("prune.structured:ratio=0.5,layers=inner", "quantize:precision=int8"), info,
                       SearchSpace()) == ("sq", {"sq.ratio": 0.5, "sq.layers": "inner"})
    # a speed search on a residual graph runs its inner convs halved after INT8 alone; the seed's steps are
    # the template's own for those params
    found = seeds("cifar10", "examples/models.py:resnet8", info, SearchSpace(), ("q", "sq"))
    assert [f[0] for f in found] == ["INT8 alone", "inner convs halved"]
    params = {k.partition(".")[2]: v for k, v in found[1][2].items() if k != "template"}
    assert TEMPLATES["sq"](_Fixed(params), info, SearchSpace()) == found[1][1]
    assert parse_step(found[1][1][0]).layers == "inner"


class _FoldedResidual(nn.Module):
    """A residual block without batch norm (folded into the weights, as in a converted Keras model)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.inner, self.outer = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), \
            nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.stem(x))
        return self.fc(torch.relu(s + self.outer(torch.relu(self.inner(s)))).mean((2, 3)))


def test_a_folded_graph_refits_its_inner_cuts_and_searches_mcu_metrics_by_channels() -> None:
    """No batch norm: the sq template's inner cut refits the reading layer. A graph is not built in place on
    the microcontroller, so its flash / RAM / instruction searches draw channel cuts + INT8, not .dsz files."""
    info = model_info(_FoldedResidual(), torch.rand(1, 3, 8, 8))
    assert info.inner == ("inner",) and info.folded and not info.in_place
    steps = TEMPLATES["sq"](_Fixed({"layers": "inner"}), info, SearchSpace())
    cfg = parse_step(steps[0])
    assert cfg.layers == "inner" and cfg.reconstruct and cfg.renorm and cfg.importance == "output"
    assert SearchSpace().default_templates(info, ("flash",)) == ("sq",)
    from deepshrink.search.study import seeds

    # its seed is the template's own inner cut (steps left to the template: refitted), not the BN model's
    assert seeds("cifar10", "converted", info, SearchSpace(), ("sq",)) == [
        ("inner convs halved", (), {"template": "sq", "sq.ratio": 0.5, "sq.layers": "inner"})]
    assert "dc" in SearchSpace().default_templates(info, ("bytes",))  # a desktop file: any template
    stack = model_info(nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), torch.rand(1, 4))
    assert stack.in_place and not stack.folded and "dc" in SearchSpace().default_templates(stack, ("flash",))


def test_bytes_objective_floors_each_layer_and_keeps_hand_tuned_fractions_inside() -> None:
    """The floor is the sparsity a layer reaches within FLOOR_DROP points without retraining; a bytes
    search starts each layer's range there, a time search does not; a seed below a floor lowers it."""
    from deepshrink.search.run import _shaped
    from deepshrink.search.sensitivity import FLOOR_DROP

    info = type(model_info(nn.Sequential()))(fc=("fc1", "fc2"), conv=(), depthwise=())
    curve = {"fc1": [(0.0, 98.0), (0.5, 98.0), (0.8, 98.0 - FLOOR_DROP / 2), (0.9, 90.0)],
             "fc2": [(0.0, 98.0), (0.5, 97.9), (0.7, 97.0 - FLOOR_DROP), (0.9, 60.0)]}
    rows = [{"layer": k, "sparsity": s, "accuracy_pct": a} for k, pts in curve.items() for s, a in pts]
    seed = [("beyond/x", ("a",), {"template": "dc", "dc.sparsity.fc1": 0.6})]
    shaped = _shaped(SearchSpace(), rows, info, parse_budget("drop<=1", "bytes"), seed)
    assert shaped.layer_range("fc1", info)[0] == 0.6  # the seed's 0.6 under the 0.8 floor
    assert shaped.layer_range("fc2", info)[0] == 0.5
    timed = _shaped(SearchSpace(), rows, info, parse_budget("drop<=1", "us_b1"), [])
    assert timed.layer_range("fc1", info)[0] == SearchSpace().sparsity[0]
    assert _shaped(SearchSpace(), rows, info, parse_budget("drop<=1", "bytes"), []).layer_range("fc1", info)[0] == 0.8


def test_hand_tuned_pipelines_seed_the_search() -> None:
    """The beyond recipe's Deep Compression LeNet-300-100 is expressed by the dc template, exactly."""
    found = dict(hand_tuned("mnist", "lenet-300-100"))
    info = model_info(nn.Sequential())
    info = type(info)(fc=("fc1", "fc2", "fc3"), conv=(), depthwise=())
    dc = next(steps for label, steps in found.items() if steps[-1] == "encode")
    template, params = seed_params(dc, info, SearchSpace()) or ("", {})
    assert template == "dc" and params["dc.sparsity.fc1"] == 0.95 and params["dc.fc_bits"] == 5
    assert params["dc.prune_rounds"] == 3  # the recipe prunes iteratively, in three rounds


def test_hand_tuned_pipelines_are_found_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The beyond recipe names examples/models.py from the repository root; a search started elsewhere
    failed on it ("model file not found") before trying a trial."""
    here = dict(hand_tuned("mnist", "lenet-300-100"))
    monkeypatch.chdir(tmp_path)
    assert dict(hand_tuned("mnist", "lenet-300-100")) == here and any(s[-1] == "encode" for s in here.values())
    assert hand_tuned("cifar10", str(tmp_path / "mine.py:net")) == []


def test_trials_are_timed_in_every_runtime_but_the_host_c() -> None:
    """us_b1/us_b256 are each artifact's fastest runtime: a trial timed in fewer than the study offers
    (OpenVINO was left out: a full-INT8 resnet8 scored ONNX Runtime's 134 µs, not OpenVINO's ~80)."""
    from deepshrink.measure.latency import RUNTIMES
    from deepshrink.search.trial import TIMING

    assert set(TIMING.runtimes) == set(RUNTIMES) - {"c"} and "openvino" in TIMING.runtimes


def test_int8_alone_seeds_a_speed_search() -> None:
    """A time objective searches the plain INT8 model too, and runs it first when no recipe of the model
    quantizes it alone; a recipe's plain INT8 pipeline is expressed by the q template."""
    from deepshrink.search.study import PLAIN_INT8, seeds

    info = type(model_info(nn.Sequential()))(fc=("fc",), conv=("c1", "c2"), depthwise=())
    templates = SearchSpace().default_templates(info, ("us_b1",))
    assert templates[0] == "q" and "q" not in SearchSpace().default_templates(info, ("bytes",))
    found = seeds("cifar10", "examples/models.py:resnet8", info, SearchSpace(), templates)
    assert found == [("INT8 alone", (PLAIN_INT8,), {"template": "q", "q.method": "ptq"})]
    assert seeds("cifar10", "examples/models.py:resnet8", info, SearchSpace(), ("sq",)) == []
    assert seed_params(("quantize:precision=int8,method=qat",), info, SearchSpace()) == ("q", {"q.method": "qat"})
    assert seed_params(("quantize:precision=int8,bits=4",), info, SearchSpace()) is None


def test_int8_steps_ship_their_smallest_file_unless_time_is_judged() -> None:
    """A bytes search's INT8 steps ship deploy=smallest (a clock would decide the bytes otherwise); a
    speed search keeps the timed choice; a mode a recipe names is kept; sub-8-bit steps have no modes."""
    from deepshrink.search.run import _ask
    from deepshrink.search.space import with_deploy

    steps = ("prune.unstructured:sparsity=0.9", "quantize:precision=int8,method=qat", "quantize",
             "quantize:bits=4", "quantize:deploy=full", "quantize:precision=fp16")
    assert with_deploy(steps, "smallest") == (
        "prune.unstructured:sparsity=0.9", "quantize:precision=int8,method=qat,deploy=smallest",
        "quantize:deploy=smallest", "quantize:bits=4", "quantize:deploy=full", "quantize:precision=fp16")
    for step in with_deploy(steps, "smallest"):
        parse_step(step)  # compress accepts each
    info = type(model_info(nn.Sequential()))(fc=("fc1", "fc2"), conv=(), depthwise=())
    opts = SearchOptions(space=SearchSpace(templates=("q",)))
    for budget, deploy in ((parse_budget("drop<=1", minimize="bytes"), True),
                           (parse_budget("drop<=1,bytes<=9000", minimize="us_b1"), False)):
        _, drawn = _ask(optuna.create_study(), info, ("q",), opts, budget)
        assert ("deploy=smallest" in drawn[-1]) is deploy


def test_pareto_front() -> None:
    pts = {0: (1.0, 5.0), 1: (2.0, 1.0), 2: (2.0, 6.0), 3: (1.0, 5.0), 4: (0.5, 9.0)}
    assert pareto_numbers(pts) == {0, 1, 3, 4}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


SMALL = SearchSpace(templates=("dc", "pq"), prune_epochs=(1,), cluster_epochs=(0,))


def test_search_measures_trials_writes_tables_and_resumes(tmp_path: Path, mnist_dir: Path, checkpoint: Path) -> None:
    out = tmp_path / "search"
    budget = parse_budget("drop<=100", minimize="bytes")  # nothing stopped early on this tiny data
    res = run_search(checkpoint, budget, out, SearchOptions(trials=3, space=SMALL, device="cpu", quiet=True),
                     data_dir=mnist_dir)
    trials = _rows(out / "trials.csv")
    assert [int(r["number"]) for r in trials] == [0, 1, 2]
    assert trials[0]["seeded_from"] == "beyond/deep-compression" and "fc1=0.95" in trials[0]["pipeline"]
    done = [r for r in trials if r["state"] == "COMPLETE"]
    assert done and all(float(r["bytes"]) > 0 and math.isfinite(float(r["drop"])) for r in done)
    assert res.feasible and len(res.chosen) == 1
    best = min((r for r in done if r["feasible"] == "True"), key=lambda r: float(r["bytes"]))
    assert res.picked[0]["number"] == int(best["number"])
    results = {r["variant"]: r for r in _rows(out / "results.csv")}
    chosen = results[res.chosen[0]["variant"]]
    assert (out / chosen["artifact"]).stat().st_size == int(chosen["size_bytes"])  # the file that ships
    assert chosen["pipeline"].replace(" | ", "") and "mnist-lenet-300-100" in results  # beside its baseline
    assert {r["variant"] for r in _rows(out / "latency.csv")} >= {chosen["variant"], "mnist-lenet-300-100"}
    assert any(r["pareto"] == "True" for r in _rows(out / "pareto.csv"))
    assert (out / "sensitivity.csv").exists() and not (out / ".trials").exists()
    report = (out / "report.md").read_text()
    assert "## Search under a budget" in report and f"{res.picked[0]['number']} (chosen)" in report
    assert "beyond/deep-compression" in report and (out / "figures" / "search_pareto.png").exists()
    assert "every measured trial's file that ships (kB) against" in report  # the searched objective, named
    # Resumed: the three trials are kept, one more runs.
    again = run_search(checkpoint, budget, out, SearchOptions(trials=4, space=SMALL, device="cpu", quiet=True),
                       data_dir=mnist_dir)
    assert len(again.trials) == 4 and _rows(out / "trials.csv")[:3] == trials
    with pytest.raises(UserError, match="other settings"):
        run_search(checkpoint, parse_budget("drop<=1", minimize="bytes"), out,
                   SearchOptions(trials=4, space=SMALL, device="cpu", quiet=True), data_dir=mnist_dir)


def test_interrupted_trial_runs_again_and_nothing_fitting_returns_the_closest(tmp_path: Path, mnist_dir: Path,
                                                                               checkpoint: Path) -> None:
    out = tmp_path / "search"
    budget = parse_budget("bytes<=10", minimize="bytes")  # nothing is 10 bytes
    opts = SearchOptions(trials=2, space=SearchSpace(templates=("pq",), prune_epochs=(1,)), device="cpu",
                         quiet=True)
    run_search(checkpoint, budget, out, opts, data_dir=mnist_dir)
    from deepshrink.search.study import open_study

    study = open_study(out, budget, 0)
    left = study.ask()  # as a killed search leaves it: RUNNING
    left.suggest_categorical("template", ["pq"])
    res = run_search(checkpoint, budget, out, SearchOptions(**{**opts.__dict__, "trials": 3}), data_dir=mnist_dir)
    states = [t.state for t in open_study(out, budget, 0).trials]
    assert states.count(optuna.trial.TrialState.FAIL) == 1 and states[-1] == optuna.trial.TrialState.COMPLETE
    assert not res.feasible and res.chosen and all("bytes" in r["misses"] for r in res.picked)


def test_cli_search_and_sensitivity(tmp_path: Path, mnist_dir: Path, checkpoint: Path,
                                    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    from deepshrink.cli import main

    monkeypatch.setattr(sys, "argv", ["deepshrink", "sensitivity", str(checkpoint), "--data-dir", str(mnist_dir),
                                      "--drop", "2", "--out", str(tmp_path / "sens")])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 0
    said = capsys.readouterr().out
    assert "--step prune.unstructured:scope=layer,layers=fc1=" in said
    rows = _rows(tmp_path / "sens" / "sensitivity.csv")
    assert {r["layer"] for r in rows} == {"fc1", "fc2", "fc3"} and (tmp_path / "sens" / "sensitivity.png").exists()
    step = said.split("--step ")[1].split()[0]
    assert parse_step(step).layers  # the suggestion is a step compress takes
    line = cli_error(monkeypatch, capsys, "sensitivity", str(checkpoint), "--drop", "-1")
    assert "--drop" in line


RECIPE_SEARCH = """
name = "s"
[study]
datasets = ["mnist"]
models = ["lenet-300-100"]
val_size = 30
[train]
epochs = 1
[measure]
runtimes = ["onnxruntime"]
threads = [1]
images = 50
[search]
budget = "drop<=90"
minimize = "bytes"
trials = 2
templates = ["pq"]
prune_epochs = [1]
"""


@pytest.mark.parametrize("entry", ["ds.study", "study.run.run_study"])
def test_recipe_search_section_runs_a_search_per_baseline(tmp_path: Path, mnist_dir: Path, entry: str) -> None:
    """The same whichever way the study starts (the CLI calls ds.study)."""
    import deepshrink as ds
    from deepshrink.study.run import run_study

    path = tmp_path / "s.toml"
    path.write_text(RECIPE_SEARCH)
    if entry == "ds.study":
        run_dir, statuses = ds.study(path, out=tmp_path / "run", data_dir=mnist_dir, device="cpu")
    else:
        run_dir, statuses = run_study(str(path), tmp_path / "run", mnist_dir, "cpu", quiet=True)
    assert set(statuses.values()) == {"ok"}
    trials = _rows(run_dir / "search" / "mnist-lenet-300-100" / "trials.csv")
    assert len(trials) == 2 and all(r["template"] == "pq" for r in trials)


@pytest.mark.parametrize(("extra", "needle"), [
    ("colour = 1\n", "search.colour: unknown key"),
    ("sparsity = [0.9]\n", "search.sparsity=[0.9]: two values"),
    ('students = ["x"]\nbits = [9, 9]\n', "search.bits=[9, 9]"),
])
def test_recipe_search_section_errors_name_the_file(tmp_path: Path, mnist_dir: Path, extra: str, needle: str) -> None:
    import deepshrink as ds

    path = tmp_path / "s.toml"
    path.write_text(RECIPE_SEARCH.replace('budget = "drop<=90"\n', f'budget = "drop<=90"\n{extra}'))
    with pytest.raises(UserError) as e:
        ds.study(path, out=tmp_path / "run", data_dir=mnist_dir, device="cpu")
    assert str(e.value).startswith(str(path)) and needle in str(e.value), str(e.value)
    assert not (tmp_path / "run" / "results.csv").exists()  # nothing ran


def test_a_bytes_search_queues_the_hand_tuned_pipeline_stretched_toward_fewer_bytes() -> None:
    """x0.8 and x0.65 of each layer's density, on the sparsity grid, with the most retraining; no
    stretch for a time objective."""
    from deepshrink.search.study import seeds, stretched

    info = type(model_info(nn.Sequential()))(fc=("fc1", "fc2", "fc3"), conv=(), depthwise=())
    found = seeds("mnist", "lenet-300-100", info, SearchSpace(), ("dc",))
    more = stretched(found, SearchSpace(), info, ("bytes",))
    assert [p["dc.sparsity.fc1"] for _, _, p in more] == [0.96, 0.97]  # 0.95: 5 % -> 4 %, 3.25 % kept
    assert all(p["dc.prune_epochs"] == 30 and p["dc.prune_rounds"] == 3 and not steps for _, steps, p in more)
    assert all(p["dc.sparsity.fc2"] > 0.9 for _, _, p in more)
    assert stretched(found, SearchSpace(), info, ("us_b1",)) == []


def test_untrained_pipelines_keep_every_key_but_retraining() -> None:
    from deepshrink.search.foresee import untrained

    dc = ("prune.unstructured:scope=layer,layers=fc1=0.9+fc2=0.8,schedule=iterative,rounds=3,epochs=30",
          "cluster:bits=5,bias_bits=16,epochs=4", "encode")
    assert untrained(dc) == ("prune.unstructured:scope=layer,layers=fc1=0.9+fc2=0.8,schedule=iterative,rounds=3,"
                             "epochs=0", "cluster:bits=5,bias_bits=16,epochs=0", "encode")
    assert untrained(("quantize:precision=int8,method=qat,bits=4",)) == ("quantize:precision=int8,method=ptq,bits=4",)
    assert untrained(("distill:student=mlp-50", "quantize:precision=int8,method=ptq")) is None  # untrained student
    for step in (*untrained(dc), "prune.structured:ratio=0.5,epochs=0"):  # type: ignore[misc]
        parse_step(step)


def test_untrained_figures_stop_a_trial_only_when_they_cannot_win() -> None:
    from deepshrink.search.foresee import hopeless

    b = parse_budget("drop<=0.5,bytes<=20000", minimize="bytes")
    rivals = [(3, {"bytes": 10000.0, "drop": 0.4})]
    assert "cannot beat trial 3" in hopeless({"bytes": 10200.0, "drop": 9.0}, b, rivals, ceilings=True)
    assert hopeless({"bytes": 10050.0, "drop": 9.0}, b, rivals, ceilings=True) == ""  # within the margin
    assert "budget" in hopeless({"bytes": 30000.0, "drop": 0.0}, b, [], ceilings=True)
    assert hopeless({"bytes": 30000.0, "drop": 0.0}, b, [], ceilings=False) == ""  # nothing done: train it
    pareto = parse_budget("drop<=1", pareto="bytes,us_b1")
    rival = [(0, {"bytes": 1000.0, "us_b1": 5.0, "drop": 0.1})]
    assert hopeless({"bytes": 2000.0, "us_b1": 4.0}, pareto, rival, ceilings=True) == ""  # faster: may win
    assert "cannot beat trial 0" in hopeless({"bytes": 2000.0, "us_b1": 6.0}, pareto, rival, ceilings=True)


def test_a_trial_whose_untrained_file_cannot_win_stops_before_training(tmp_path: Path, mnist_dir: Path,
                                                                       checkpoint: Path) -> None:
    from deepshrink.search.study import open_study

    out, budget = tmp_path / "s", parse_budget("drop<=100", minimize="bytes")
    space = SearchSpace(templates=("pq",), sparsity=(0.3, 0.95), prune_epochs=(1,))
    run_search(checkpoint, budget, out, SearchOptions(trials=6, space=space, device="cpu", quiet=True),
               data_dir=mnist_dir)
    rows = _rows(out / "trials.csv")
    stopped = [r for r in rows if r["notes"].startswith("before training")]
    assert stopped and all(r["state"] == "PRUNED" and r["bytes"] == "" for r in stopped)
    trials = open_study(out, budget, 0).trials
    for t in trials:
        if "untrained" in t.user_attrs:  # larger untrained than a trial that fit, finished before it was drawn
            best = min(p.user_attrs["metrics"]["bytes"] for p in trials[:t.number] if p.state.name == "COMPLETE")
            assert t.user_attrs["untrained"]["bytes"] > best


def test_space_options_narrow_the_space_and_bad_ones_are_one_line(monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str],
                                                                  tmp_path: Path) -> None:
    from deepshrink.api.searches import parse_space

    space = parse_space(["structured_epochs=6,12", "structured=0.5, 0.8"])
    assert space.structured_epochs == (6, 12) and space.structured == (0.5, 0.8)
    steps = TEMPLATES["sq"](_Draw(), model_info(_Dw()), space)
    assert steps[0] == "prune.structured:ratio=0.8,round_to=8,epochs=12" and parse_step(steps[0]).epochs == 12
    assert "epochs" not in TEMPLATES["sq"](_Draw(), model_info(_Dw()), SearchSpace())[0]  # the step's default
    for bad, needle in (("speed=1", "--space 'speed=1'"), ("structured_epochs=x", "--space structured_epochs"),
                        ("structured_epochs=-2", "search.structured_epochs")):
        with pytest.raises(UserError, match=needle):
            parse_space([bad])
    line = cli_error(monkeypatch, capsys, "search", str(tmp_path / "none.safetensors"), "--minimize", "us_b1",
                     "--space", "bits")
    assert "--space 'bits'" in line


def test_a_structured_search_reads_no_sensitivity_curves(tmp_path: Path, mnist_dir: Path, checkpoint: Path) -> None:
    out = tmp_path / "sq"
    space = SearchSpace(templates=("sq",), structured_epochs=(0,))
    res = run_search(checkpoint, parse_budget("drop<=100", minimize="bytes"), out,
                     SearchOptions(trials=1, space=space, device="cpu", quiet=True), data_dir=mnist_dir)
    pipeline = res.trials[0]["pipeline"]
    assert pipeline.startswith("prune.structured:ratio=") and ",epochs=0 |" in pipeline
    assert not (out / "sensitivity.csv").exists()  # only per-layer sparsity templates shape ranges by it


def test_hopeless_trials_stop_only_once_a_trial_fits_or_the_closest_are_measured() -> None:
    from types import SimpleNamespace

    from deepshrink.search.run import _stop_below

    budget = parse_budget("drop<=1", minimize="us_b1")
    env = SimpleNamespace(budget=budget, hopeless_below=lambda: 97.0)
    study = optuna.create_study()

    def add(drop: float) -> None:
        study.add_trial(optuna.trial.create_trial(value=1.0, user_attrs={"metrics": {"drop": drop, "us_b1": 1.0}}))

    assert _stop_below(env, study) == -math.inf  # nothing measured: a search fitting nothing returns trials
    for drop in (5.0, 6.0):
        add(drop)
    assert _stop_below(env, study) == -math.inf
    add(7.0)
    assert _stop_below(env, study) == 97.0  # the three closest are measured
    fits = optuna.create_study()
    fits.add_trial(optuna.trial.create_trial(value=1.0, user_attrs={"metrics": {"drop": 0.5, "us_b1": 1.0}}))
    assert _stop_below(SimpleNamespace(budget=budget, hopeless_below=lambda: 97.0), fits) == 97.0


def test_the_search_figure_plots_the_searched_objective() -> None:
    from deepshrink.report.search import _objective

    assert _objective("drop<=1; minimize us_b1") == "us_b1" and _objective("no budget; pareto flash+drop") == "flash"
    assert _objective("drop<=0.7; minimize bytes") == "bytes" and _objective("") == "bytes"


def test_a_pipeline_drawn_twice_is_chosen_once() -> None:
    from deepshrink.search.run import _choose

    budget = parse_budget("drop<=1", minimize="us_b1")

    def row(n: int, ratio: float, drop: float) -> dict:
        return {"number": n, "state": "COMPLETE", "steps": [f"prune.structured:ratio={ratio}"], "feasible": drop <= 1,
                "drop": drop, "us_b1": 50.0 / ratio}

    rows = [row(8, 0.85, 25.0), row(9, 0.85, 25.0), row(10, 0.6, 9.0), row(11, 0.85, 25.0), row(12, 0.5, 4.0)]
    picked, fits = _choose(rows, budget)
    assert not fits and [r["number"] for r in picked] == [12, 10, 8]  # the closest three distinct pipelines


def test_a_search_hands_the_model_its_own_normalization(monkeypatch: pytest.MonkeyPatch) -> None:
    """A converted .tflite takes the raw pixel values (its manifest says so): the search's data must be those, as
    `deepshrink compress` and a study give it (else its MCU build's pixel entry and the data disagree)."""
    from deepshrink.checkpoint import Manifest
    from deepshrink.data.normalize import RAW_STD
    from deepshrink.search import parallel

    from conftest import make_splits

    splits = make_splits(n_train=8, n_val=4, n_test=4, shape=(3, 4, 4), name="cifar10")
    monkeypatch.setattr(parallel, "load_dataset", lambda *a, **k: splits)
    raw = Manifest(model="m", dataset="cifar10", input_shape=[3, 4, 4], num_classes=10, mean=[0.0] * 3,
                   std=[RAW_STD] * 3)
    got = parallel.model_data("cifar10", None, raw)
    assert got.train_x.max() > 200 and torch.equal(got.train_x, got.train_x.round())
    own = Manifest(model="m", dataset="cifar10", input_shape=[3, 4, 4], num_classes=10, mean=splits.mean,
                   std=splits.std)
    assert parallel.model_data("cifar10", None, own) is splits
