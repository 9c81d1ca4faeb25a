"""Study recipes: TOML files naming datasets, models, training settings, measurement settings and
pipelines (ordered step lists). Everything is validated before any work starts; a problem is one
`UserError` line naming the file and the key.
"""

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from deepshrink.compress import STEP_CONFIGS, parse_step
from deepshrink.config import coerce
from deepshrink.data import check_name
from deepshrink.data.normalize import parse_normalize
from deepshrink.errors import UserError, malformed
from deepshrink.export.choice import DEFAULT_MARGIN, check_margin
from deepshrink.mcu.toolchain import OPTIMIZE, TARGETS
from deepshrink.measure.latency import RUNTIMES, LatencyConfig
from deepshrink.models import check_model_name, is_trained_file
from deepshrink.train import TrainConfig

# SPEC §5 names every technique; a recipe may name one whose implementation has not landed yet:
# the study records its variants as `failed: ...` instead of refusing the whole recipe.
CANONICAL_STEPS = ("quantize", "prune.unstructured", "prune.structured", "distill", "cluster", "encode")
# `{baseline}` in a step stands for the checkpoint of the variant's baseline (e.g. a distillation
# teacher when the student is a pruned copy); the runner substitutes it.
BASELINE_PLACEHOLDER = "{baseline}"

_TOP_KEYS = {"name": str, "description": str, "expected_minutes": float,
             "study": dict, "train": dict, "measure": dict, "pipeline": list, "model_args": dict, "search": dict}
_STUDY_KEYS: dict[str, Any] = {"datasets": ["mnist"], "models": ["lenet-5"], "seeds": [0], "val_size": 5000,
                               "jobs": 1, "cpus_per_task": 1.0, "gpus_per_task": 0.0}
# `[search]` (SPEC §13): after the baselines, a search per baseline; values are checked by the search's
# own types (search/recipe.py `recipe_search`) before any work, the types and keys here.
SEARCH_KEYS: dict[str, Any] = {"budget": "", "minimize": "", "pareto": "", "trials": 40, "seed": 0,
                               "templates": [""], "sparsity": [0.0], "bits": [0], "prune_epochs": [0],
                               "prune_rounds": [0], "cluster_epochs": [0], "structured": [0.0],
                               "structured_epochs": [0], "students": [""],
                               "executor": "", "jobs": 1}
_PIPELINE_KEYS: dict[str, Any] = {"name": "", "steps": [""], "models": [""], "datasets": [""], "seeds": [0]}
_TRAIN_DEFAULTS = TrainConfig()


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    steps: tuple[str, ...]
    models: tuple[str, ...] = ()  # empty = every model of the study
    datasets: tuple[str, ...] = ()
    # Seeds this pipeline runs under, beside the study's: its extra seeds start from the study's first
    # seed's baseline (the same teacher), so only this pipeline's own training repeats, not the baselines'.
    seeds: tuple[int, ...] = ()

    def applies(self, dataset: str, model: str) -> bool:
        return (not self.models or model in self.models) and (not self.datasets or dataset in self.datasets)


@dataclass(frozen=True)
class MeasureSpec(LatencyConfig):
    """A recipe's `[measure]` section: the latency defaults (defined once, in LatencyConfig) plus what
    only a study sets. `devices` is not a recipe key: it follows `--device`."""

    images: int = 0  # test images used for timing; 0 = the whole test set (the study's method)
    sram_kb: int = 0  # on-chip budget for the energy estimate; 0 = the default
    mcu: str = ""  # a microcontroller target (SPEC §12): every INT8 and compact variant built and emulated
    mcu_clock_mhz: float = 80.0  # the clock its estimated milliseconds assume
    mcu_optimize: str = "speed"  # or "size": the smallest code (`deepshrink mcu --optimize`)
    # Timing-based choices (deployed runtime, ONNX Runtime graph, INT8 mode) keep their incumbent unless a
    # challenger is faster beyond the noise and by this fraction (export/choice.py): what ships must not flip.
    choice_margin: float = DEFAULT_MARGIN

    def latency(self, device: str) -> LatencyConfig:
        keep = {f.name: getattr(self, f.name) for f in dataclasses.fields(LatencyConfig)}
        return LatencyConfig(**{**keep, "devices": ("cpu", "cuda") if device == "cuda" else ("cpu",)})


# The schema of `[measure]` (key -> default, lists for tuples), read off the dataclass.
_MEASURE_KEYS: dict[str, Any] = {f.name: list(f.default) if isinstance(f.default, tuple) else f.default
                                 for f in dataclasses.fields(MeasureSpec) if f.name != "devices"}


@dataclass(frozen=True)
class Recipe:
    name: str
    source: str
    description: str = ""
    expected_minutes: float = 0.0
    datasets: tuple[str, ...] = ("mnist",)
    models: tuple[str, ...] = ("lenet-5",)
    seeds: tuple[int, ...] = (0,)
    val_size: int = 5000
    jobs: int = 1  # default --jobs: parallel processes for independent variants
    cpus_per_task: float = 1.0  # --executor ray: resources of one unit's task (Ray allows fractions)
    gpus_per_task: float = 0.0
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides for every baseline
    train_per: dict[str, dict[str, Any]] = field(default_factory=dict)  # "dataset/model", "model" or "dataset"
    measure: MeasureSpec = field(default_factory=MeasureSpec)
    pipelines: tuple[PipelineSpec, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict)  # the resolved TOML, for provenance
    search: dict[str, Any] = field(default_factory=dict)  # `[search]`: key -> value as typed in SEARCH_KEYS
    model_args: dict[str, dict[str, Any]] = field(default_factory=dict)  # model reference -> its arguments
    # `[study.models_per]` cifar10 = [...]: a dataset's own model list in place of `models`
    models_per: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def models_for(self, dataset: str) -> tuple[str, ...]:
        return self.models_per.get(dataset, self.models)

    def train_overrides(self, dataset: str, model: str) -> dict[str, Any]:
        out = dict(self.train)
        for key in (dataset, model, f"{dataset}/{model}"):  # most specific last, so it wins
            out.update(self.train_per.get(key, {}))
        return out


def builtin_dir() -> Path:
    return Path(str(resources.files("deepshrink") / "recipes"))


def builtin_names() -> list[str]:
    return sorted(p.stem for p in builtin_dir().glob("*.toml"))


def resolve_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise UserError(f"{path}: recipe file not found")
        return path
    builtin = builtin_dir() / f"{name_or_path}.toml"
    if not builtin.is_file():
        raise UserError(f"unknown recipe {name_or_path!r} (built-in: {', '.join(builtin_names())}; or a .toml path)")
    return builtin


def load_recipe(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override (`--set key=value`), and validate a recipe; nothing runs before this passes."""
    path = resolve_path(name_or_path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read recipe ({e})") from None
    for item in overrides:
        apply_override(raw, item)
    with malformed(path, "recipe"):  # a value of a type no check foresaw is still the recipe's fault
        return validate(raw, str(path), default_name=path.stem)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """`train.epochs=3`, `study.models=lenet-5,mlp-50`: typed by the schema, unknown keys fail."""
    key, eq, value = item.partition("=")
    parts = key.strip().split(".")
    if not eq or len(parts) != 2:
        raise UserError(f"--set {item!r}: expected SECTION.KEY=VALUE (e.g. train.epochs=3)")
    section, name = parts
    schema = {"study": _STUDY_KEYS, "measure": _MEASURE_KEYS, "search": SEARCH_KEYS,
              "train": {f.name: getattr(_TRAIN_DEFAULTS, f.name) for f in dataclasses.fields(TrainConfig)}}
    if section not in schema or name not in schema[section]:
        known = ", ".join(f"{s}.{k}" for s in schema for k in schema[s])
        raise UserError(f"--set {key}: unknown key (known: {known})")
    default = schema[section][name]
    typed: Any = coerce(value, tuple(default) if isinstance(default, list) else default, f"--set {key}")
    raw.setdefault(section, {})[name] = list(typed) if isinstance(typed, tuple) else typed


def _check_type(value: Any, default: Any, where: str) -> Any:
    if isinstance(default, list):
        if not isinstance(value, list) or not value:
            raise UserError(f"{where}: expected a non-empty list")
        return tuple(_check_type(v, default[0], f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(value, bool) and isinstance(default, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise UserError(f"{where}: expected {type(default).__name__}, got {value!r}")
    return float(value) if isinstance(default, float) else value


def _table(raw: dict[str, Any], schema: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a table")
    for key in raw:
        if key not in schema:
            raise UserError(f"{where}.{key}: unknown key (known: {', '.join(schema)})")
    return {k: _check_type(v, schema[k], f"{where}.{k}") for k, v in raw.items()}


def _train_table(raw: Any, where: str) -> dict[str, Any]:
    schema = {f.name: getattr(_TRAIN_DEFAULTS, f.name) for f in dataclasses.fields(TrainConfig)}
    values = _table(raw, schema, where)
    try:
        TrainConfig(**values)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    return values


def validate(raw: dict[str, Any], source: str, default_name: str = "recipe") -> Recipe:
    for key, typ in _TOP_KEYS.items():
        if key in raw and not isinstance(raw[key], typ if typ is not float else int | float):
            raise UserError(f"{source}: {key}: expected {typ.__name__}")
    unknown = set(raw) - set(_TOP_KEYS)
    if unknown:
        raise UserError(f"{source}: {sorted(unknown)[0]}: unknown key (known: {', '.join(_TOP_KEYS)})")
    study: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in _STUDY_KEYS.items()}
    study_raw, per_models = raw.get("study", {}), {}
    if isinstance(study_raw, dict):  # else _table names the error
        study_raw = dict(study_raw)
        per_models = study_raw.pop("models_per", {})
    study.update(_table(study_raw, _STUDY_KEYS, f"{source}: study"))
    _check_names(study, source)
    models_per = _models_per(per_models, source)
    train_raw = dict(raw.get("train", {}))
    per_raw = train_raw.pop("per", {})
    train = _train_table(train_raw, f"{source}: train")
    if not isinstance(per_raw, dict):
        raise UserError(f"{source}: train.per: expected a table of tables")
    per = {k: _train_table(v, f"{source}: train.per.{k}") for k, v in per_raw.items()}
    measure = MeasureSpec(**_table(raw.get("measure", {}), _MEASURE_KEYS, f"{source}: measure"))
    _check_measure(measure, source)
    pipelines = _pipelines(raw.get("pipeline", []), source)
    return Recipe(name=str(raw.get("name", default_name)), source=source, description=str(raw.get("description", "")),
                  expected_minutes=float(raw.get("expected_minutes", 0.0)), datasets=study["datasets"],
                  models=study["models"], seeds=study["seeds"], val_size=study["val_size"], jobs=study["jobs"],
                  cpus_per_task=study["cpus_per_task"], gpus_per_task=study["gpus_per_task"], train=train,
                  train_per=per, measure=measure, pipelines=pipelines, raw=raw,
                  model_args=_model_args(raw.get("model_args", {}),
                                         (*study["models"], *(m for ms in models_per.values() for m in ms)), source),
                  models_per=models_per, search=_table(raw.get("search", {}), SEARCH_KEYS, f"{source}: search"))


def _models_per(raw: Any, source: str) -> dict[str, tuple[str, ...]]:
    """`[study.models_per]` mnist = ["lenet-5"]: per dataset, the models it trains instead of study.models."""
    where = f"{source}: study.models_per"
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a table of dataset = [models]")
    out: dict[str, tuple[str, ...]] = {}
    for ds, models in raw.items():
        try:  # a dataset not in study.datasets (narrowed by --set) is fine: its list goes unused
            check_name(ds)
        except UserError as e:
            raise UserError(f"{where}.{ds}: {e}") from None
        out[ds] = _check_type(models, [""], f"{where}.{ds}")
        for name in out[ds]:
            try:
                check_model_name(name)
            except UserError as e:
                raise UserError(f"{where}.{ds}: {e}") from None
    return out


FILE_ARGS = ("normalize",)  # what a study's trained file takes in [model_args."PATH"]


def _model_args(raw: dict[str, Any], models: tuple[str, ...], source: str) -> dict[str, dict[str, Any]]:
    """`[model_args."examples/models.py:resnet8"]` width = 16: keyword arguments of a referenced model; a trained
    file's (`[model_args."m.tflite"]` normalize = "raw"): its preprocessing."""
    for model, args in raw.items():
        if model not in models:
            raise UserError(f"{source}: model_args.{model}: not one of study.models")
        if not isinstance(args, dict):
            raise UserError(f"{source}: model_args.{model}: expected a table of keyword arguments")
        if is_trained_file(model):
            unknown = sorted(set(args) - set(FILE_ARGS))
            if unknown:
                raise UserError(f"{source}: model_args.{model}.{unknown[0]}: unknown (a trained file takes "
                                f"{', '.join(FILE_ARGS)})")
            parse_normalize(str(args.get("normalize", "none")), f"{source}: model_args.{model}.normalize")
    return {m: dict(a) for m, a in raw.items()}


def _check_names(study: dict[str, Any], source: str) -> None:
    for key, check in (("datasets", check_name), ("models", check_model_name)):
        for name in study[key]:
            try:
                check(name)
            except UserError as e:
                raise UserError(f"{source}: study.{key}: {e}") from None
    if study["val_size"] < 1:
        raise UserError(f"{source}: study.val_size: must be >= 1")
    if study["jobs"] < 1:
        raise UserError(f"{source}: study.jobs: must be >= 1")
    for key in ("cpus_per_task", "gpus_per_task"):
        if study[key] < 0:
            raise UserError(f"{source}: study.{key}: must be >= 0")
    if any(s < 0 for s in study["seeds"]):
        raise UserError(f"{source}: study.seeds: seeds must be >= 0")


def _check_measure(m: MeasureSpec, source: str) -> None:
    for rt in m.runtimes:
        if rt not in RUNTIMES:
            raise UserError(f"{source}: measure.runtimes: unknown runtime {rt!r} (known: {', '.join(RUNTIMES)})")
    for key in ("batch", "repeats", "single_calls"):
        if getattr(m, key) < 1:
            raise UserError(f"{source}: measure.{key}: must be >= 1")
    if m.images < 0 or m.sram_kb < 0 or any(t < 0 for t in m.threads):
        raise UserError(f"{source}: measure: images, sram_kb and threads must be >= 0")
    check_margin(m.choice_margin, f"{source}: measure.choice_margin")
    if m.mcu and m.mcu not in TARGETS:
        raise UserError(f"{source}: measure.mcu: unknown target {m.mcu!r} (known: {', '.join(TARGETS)})")
    if not m.mcu_clock_mhz > 0:
        raise UserError(f"{source}: measure.mcu_clock_mhz: must be > 0")
    if m.mcu_optimize not in OPTIMIZE:
        raise UserError(f"{source}: measure.mcu_optimize: expected {' or '.join(OPTIMIZE)}, not {m.mcu_optimize!r}")


def _pipelines(raw: Any, source: str) -> tuple[PipelineSpec, ...]:
    if not isinstance(raw, list):
        raise UserError(f"{source}: pipeline: expected an array of tables ([[pipeline]])")
    out: list[PipelineSpec] = []
    for i, item in enumerate(raw):
        where = f"{source}: pipeline[{i}]"
        values = _table(item, _PIPELINE_KEYS, where)
        if "steps" not in values:
            raise UserError(f"{where}.steps: missing (an ordered list of steps)")
        for j, step in enumerate(values["steps"]):
            check_step(step, f"{where}.steps[{j}]")
        if any(seed < 0 for seed in values.get("seeds", ())):
            raise UserError(f"{where}.seeds: seeds must be >= 0")
        spec = PipelineSpec(values.get("name") or "+".join(values["steps"]), values["steps"],
                            values.get("models", ()), values.get("datasets", ()), values.get("seeds", ()))
        if any(p.name == spec.name and _overlap(p, spec) for p in out):
            raise UserError(f"{where}.name: {spec.name!r} used twice for the same dataset and model")
        out.append(spec)
    return tuple(out)


def _overlap(a: PipelineSpec, b: PipelineSpec) -> bool:
    """A label may repeat across disjoint datasets/models (e.g. a sweep that differs per dataset)."""
    def meet(x: tuple[str, ...], y: tuple[str, ...]) -> bool:
        return not x or not y or bool(set(x) & set(y))

    return meet(a.datasets, b.datasets) and meet(a.models, b.models)


def check_step(text: str, where: str) -> bool:
    """Validate one step through `parse_step`; False when it names a SPEC technique not yet built."""
    # The baseline checkpoint does not exist before the study runs: validate the other keys.
    probe = re.sub(r"(^|[:,])\w+=\{baseline\}(,|$)", lambda m: m.group(1) if m.group(2) else "", text)
    probe = probe.rstrip(":,")
    try:
        parse_step(probe)
    except UserError as e:
        name = probe.partition(":")[0].strip()
        if name in CANONICAL_STEPS and name not in STEP_CONFIGS:
            return False
        raise UserError(f"{where}: {e}") from None
    return True


def describe(name: str) -> tuple[str, str, float]:
    """(name, description, expected minutes) of a built-in recipe, for `deepshrink recipes`: read off the TOML
    alone, so listing does not need the files a recipe names (mlperf-ic's model lives in ../shared)."""
    raw = tomllib.loads(resolve_path(name).read_text())
    return str(raw.get("name", name)), str(raw.get("description", "")), float(raw.get("expected_minutes", 0.0))
