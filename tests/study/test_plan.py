"""The study plan: variants, trees, units, and cache keys that follow every upstream change."""

from pathlib import Path

from deepshrink.study import plan as runner
from deepshrink.study.recipe import load_recipe

from smoke_recipe import RECIPE, _recipe


def test_cache_keys_change_with_upstream_config_only() -> None:
    base = runner.baseline_key("mnist", "lenet-5", {"epochs": 3}, "fp", 5000)
    assert base == runner.baseline_key("mnist", "lenet-5", {"epochs": 3}, "fp", 5000)
    assert base != runner.baseline_key("mnist", "lenet-5", {"epochs": 4}, "fp", 5000)
    assert base != runner.baseline_key("mnist", "lenet-5", {"epochs": 3}, "other", 5000)
    s1 = runner.step_key(base, "prune.unstructured:sparsity=0.8", "fp", 0)
    s2 = runner.step_key(s1, "quantize:precision=int8", "fp", 0)
    assert s1 == runner.step_key(base, "prune.unstructured:sparsity=0.8", "fp", 0)
    assert s1 != runner.step_key(base, "prune.unstructured:sparsity=0.9", "fp", 0)
    other_base = runner.baseline_key("mnist", "lenet-5", {"epochs": 4}, "fp", 5000)
    # Downstream keys follow any change upstream, through the whole chain.
    assert s2 != runner.step_key(runner.step_key(other_base, "prune.unstructured:sparsity=0.8", "fp", 0),
                                 "quantize:precision=int8", "fp", 0)
    assert s2 != runner.step_key(s1, "quantize:precision=int8", "fp", 1)


def test_plan_is_deterministic_and_filters_pipelines(tmp_path: Path) -> None:
    text = RECIPE.replace('models = ["lenet-300-100"]', 'models = ["lenet-300-100", "lenet-5"]') + \
        '[[pipeline]]\nname = "only5"\nsteps = ["test.scale:factor=2.0"]\nmodels = ["lenet-5"]\n'
    works = runner.plan(load_recipe(str(_recipe(tmp_path, text))))
    assert [w.label for w in works if w.model == "lenet-5"][-1] == "only5"
    assert "only5" not in [w.label for w in works if w.model == "lenet-300-100"]
    groups = runner.trees(works)
    assert sorted(len(g) for g in groups) == [1, 1, 1, 2, 2]




def test_units_put_baselines_first_and_mark_pending_ones(tmp_path: Path) -> None:
    works = runner.plan(load_recipe(str(_recipe(tmp_path))))
    units = runner.units(works)
    assert [u.tree for u in units[:1]] == [()] and all(u.tree for u in units[1:])
    assert {w.vid for u in units for w in u.works} == {w.vid for w in works}
    base = units[0].base
    assert runner.pending(works, set()) == {base.base_group}
    assert runner.pending(works, {w.vid for w in works}) == frozenset()


def test_pipeline_seeds_repeat_only_that_pipeline_from_the_first_seeds_baseline() -> None:
    from deepshrink.study.plan import plan, units
    from deepshrink.study.recipe import validate

    r = validate({"study": {"datasets": ["mnist"], "models": ["lenet-5"], "seeds": [0]},
                  "pipeline": [{"name": "fp16", "steps": ["quantize:precision=fp16"]},
                               {"name": "kd", "steps": ["distill:alpha=0.5"], "seeds": [0, 1, 2]}]}, "t.toml")
    works = plan(r)
    assert [w.vid for w in works] == ["mnist-lenet-5", "mnist-lenet-5--fp16", "mnist-lenet-5--kd",
                                      "mnist-lenet-5--kd--seed1", "mnist-lenet-5--kd--seed2"]
    assert {w.base_group for w in works} == {("mnist", "lenet-5", 0)}  # no extra baselines
    assert [w.seed for w in works if w.label == "kd"] == [0, 1, 2]
    trees = [u.tree for u in units(works) if u.tree]
    assert all(len({w.seed for w in t}) == 1 for t in trees) and len(trees) == 4  # one step seed per tree


def test_paper_recipe_validates_with_seeded_distillation_rows() -> None:
    from deepshrink.study.plan import plan
    from deepshrink.study.recipe import load_recipe

    works = plan(load_recipe("paper"))
    labels = {w.label for w in works if w.seed == 2}
    assert labels == {"student", "student-best", "distill", "distill-best", "distill-T1", "distill-T4",
                      "distill-T8", "distill-T16"}
    assert not [w for w in works if w.seed != 0 and not w.steps]  # the baselines stay one seed


def test_local_units_merge_the_trees_of_one_baseline_and_seed_largest_first() -> None:
    """A local pool gets one unit per baseline and one for its pipelines' extra seeds, so each unit times
    its baseline once; split again only while there are fewer units than jobs."""
    from deepshrink.study.plan import plan, units
    from deepshrink.study.recipe import validate

    r = validate({"study": {"datasets": ["mnist"], "models": ["lenet-5"], "seeds": [0]},
                  "pipeline": [{"name": "fp16", "steps": ["quantize:precision=fp16"]},
                               {"name": "fp64", "steps": ["quantize:precision=fp64"]},
                               {"name": "kd", "steps": ["distill:alpha=0.5"], "seeds": [0, 1, 2]}]}, "t.toml")
    works = plan(r)
    merged = [u.tree for u in units(works, parallel=1) if u.tree]
    assert [[w.label for w in t] for t in merged] == [["fp16", "fp64", "kd"], ["kd", "kd"]]
    assert [sorted({w.seed for w in t}) for t in merged] == [[0], [1, 2]]
    split = [u.tree for u in units(works, parallel=4) if u.tree]
    assert len(split) == 4 and sorted(w.vid for t in split for w in t) == sorted(w.vid for w in works if w.steps)
    assert len([u for u in units(works) if u.tree]) == 5  # a cluster: one unit per tree
