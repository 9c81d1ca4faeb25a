"""The search space (SPEC §13): pipeline templates, each a function drawing its steps' keys from a
trial, registered by name; a default space per model family; ranges a recipe's `[search]` section (or
the API) narrows or widens, and per-layer sparsity ranges shaped by the sensitivity curves.

A template returns step strings, the syntax `deepshrink compress --step` takes, so a trial's pipeline
is exactly what a user can rerun by hand, and shares the study's step cache with recipes.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import Tensor, nn

from deepshrink.compress.prune.units import candidate_layers, untied_layers
from deepshrink.errors import UserError
from deepshrink.models import weighted_layers
from deepshrink.quant.plan import expressible


class Draw(Protocol):
    """What a template draws its keys from: an Optuna trial's suggest_* (namespaced per template)."""

    def real(self, name: str, lo: float, hi: float, step: float) -> float: ...
    def integer(self, name: str, lo: int, hi: int) -> int: ...
    def choice(self, name: str, options: tuple[Any, ...]) -> Any: ...


@dataclass(frozen=True)
class ModelInfo:
    """What the templates need to know of the model: its layers by kind, and its family."""

    fc: tuple[str, ...]
    conv: tuple[str, ...]
    depthwise: tuple[str, ...]  # convolutions with one input channel per group (9 weights per channel)
    order: tuple[str, ...] = ()  # every weighted layer, in model order
    # the prunable layers no residual addition or depthwise conv ties to another (prune.structured's
    # layers=inner), where some are tied; empty for a plain stack, whose layers are all untied
    inner: tuple[str, ...] = ()
    # no batch norm in a residual graph: folded into the weights (a converted Keras .tflite), so a structured cut
    # refits the layer reading the removed units (prune.structured reconstruct=1: 72 % instead of 20 % validation
    # accuracy before retraining on MLPerf Tiny's ResNet-8 with its inner convs halved) and retrains with batch norm
    # put back (renorm=1)
    folded: bool = False
    # a sequential model of the layers the microcontroller runs in place (a .dsz / .dsq / sparse file built
    # as stored); a graph (residual additions) runs dense INT8 there
    in_place: bool = True

    @property
    def family(self) -> str:
        return "depthwise" if self.depthwise else "cnn" if self.conv else "mlp"

    @property
    def layers(self) -> tuple[str, ...]:
        return self.order or (*self.conv, *self.depthwise, *self.fc)


def model_info(model: nn.Module, example: Tensor | None = None) -> ModelInfo:
    """The model's layers by kind; with an example input, also its untied layers (a dependency graph)."""
    fc: list[str] = []
    conv: list[str] = []
    dw: list[str] = []
    layers = weighted_layers(model)
    for name, m in layers:
        if isinstance(m, nn.Conv2d):
            (dw if m.groups > 1 and m.in_channels == m.groups else conv).append(name)
        else:
            fc.append(name)
    inner: list[str] = []
    if example is not None and layers:
        untied = untied_layers(model, example)
        inner = untied if set(untied) != set(candidate_layers(model, "all")) else []
    folded = bool(inner) and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return ModelInfo(tuple(fc), tuple(conv), tuple(dw), tuple(n for n, _ in layers), tuple(inner), folded,
                     expressible(model))


DEPTHWISE_MAX = 0.5  # 9 weights per channel: 80 % cost 2.5-3 points on examples/models.py dwnet


@dataclass(frozen=True)
class SearchSpace:
    """Ranges every template draws from. `layer_caps`: per-layer sparsity ceilings (the sensitivity
    curves' suggestion, see search.sensitivity); depthwise kernels are capped at `depthwise_max`."""

    templates: tuple[str, ...] = ()  # empty: the model family's default
    sparsity: tuple[float, float] = (0.5, 0.98)
    sparsity_step: float = 0.01
    bits: tuple[int, int] = (3, 6)  # cluster / sub-8-bit weight bits
    # the hand-tuned pipelines use 9; more buys back accuracy: LeNet-300-100 with fc1 at 97 %, 3 rounds,
    # 5-bit clusters: 98.47 % test at 96.5 % and 15 epochs, 98.63 % at 97 % and 30 epochs (13,528 B)
    prune_epochs: tuple[int, ...] = (9, 15, 30)
    # 1: one-shot; more: Han et al.'s iterative prune-retrain rounds over the same epochs (the hand-tuned
    # Deep Compression pipelines use 3: at 95 % on fc1 one-shot trials lost 0.2-0.5 points more)
    prune_rounds: tuple[int, ...] = (1, 3)
    cluster_epochs: tuple[int, ...] = (2, 4, 6)
    structured: tuple[float, float] = (0.2, 0.8)
    # structured retraining epochs; -1: the step's own default (10 for a plain stack, 40 for a coupled graph)
    structured_epochs: tuple[int, ...] = (-1,)
    students: tuple[str, ...] = ()  # distill -> quantize needs a student model (registry name or reference)
    depthwise_max: float = DEPTHWISE_MAX
    layer_caps: dict[str, float] = field(default_factory=dict)
    layer_floors: dict[str, float] = field(default_factory=dict)  # per-layer sparsity floors (bytes objectives)

    def __post_init__(self) -> None:
        for key in ("sparsity", "bits", "structured"):
            if len(getattr(self, key)) != 2:
                raise UserError(f"search.{key}={list(getattr(self, key))}: two values, [low, high]")
        lo, hi = self.sparsity
        if not 0.0 <= lo <= hi < 1.0:
            raise UserError(f"search.sparsity={list(self.sparsity)}: need 0 <= low <= high < 1")
        if not 1 <= self.bits[0] <= self.bits[1] <= 8:
            raise UserError(f"search.bits={list(self.bits)}: need 1 <= low <= high <= 8")
        if not 0.0 < self.structured[0] <= self.structured[1] < 1.0:
            raise UserError(f"search.structured={list(self.structured)}: need 0 < low <= high < 1")
        if not self.prune_epochs or not self.cluster_epochs or min(self.prune_epochs + self.cluster_epochs) < 0:
            raise UserError("search.prune_epochs / cluster_epochs: lists of epoch counts >= 0")
        if not self.structured_epochs or min(self.structured_epochs) < -1:
            raise UserError(f"search.structured_epochs={list(self.structured_epochs)}: epoch counts >= 0 "
                            "(-1: the step's default)")
        if not self.prune_rounds or min(self.prune_rounds) < 1:
            raise UserError(f"search.prune_rounds={list(self.prune_rounds)}: a list of round counts >= 1")
        unknown = [t for t in self.templates if t not in TEMPLATES]
        if unknown:
            raise UserError(f"search.templates: unknown template {unknown[0]!r} (known: {', '.join(TEMPLATES)})")

    def layer_range(self, layer: str, info: ModelInfo) -> tuple[float, float]:
        lo, hi = self.sparsity
        if layer in info.depthwise:
            hi = min(hi, self.depthwise_max)
        hi = min(hi, self.layer_caps.get(layer, hi))
        lo = max(lo, self.layer_floors.get(layer, lo))
        return min(lo, hi), hi

    def default_templates(self, info: ModelInfo, objectives: tuple[str, ...] = ()) -> tuple[str, ...]:
        """The recipe's templates, else those that can win on the objectives (a .dsz is smallest but
        decodes to dense weights on a desktop; INT8 compute is the fast route), a student's when named."""
        if self.templates:
            return self.templates
        table = BY_OBJECTIVE if info.in_place else {**BY_OBJECTIVE, **GRAPH_ON_MCU}
        wanted = [t for o in objectives or ("drop",) for t in table.get(o, ALL)]
        if self.students and any(o in ("us_b1", "us_b256", "drop") for o in objectives or ("drop",)):
            wanted.append("dq")
        return tuple(dict.fromkeys(wanted))


ALL = ("dc", "pq", "sq", "sub8")
# Per objective, the templates that can win on it: bytes and flash favour compact files (a .dsz, or
# packed/sparse INT8 in place on the microcontroller), time favours integer and structurally smaller compute.
BY_OBJECTIVE: dict[str, tuple[str, ...]] = {
    "bytes": ("dc",), "flash": ("dc", "pq", "sub8"), "ram": ("sq", "pq"), "instructions": ("dc", "pq", "sq"),
    "us_b1": ("q", "sq", "pq", "sub8"), "us_b256": ("q", "sq", "pq", "sub8"), "drop": ALL,
}
# A graph's compressed files are not built in place on the microcontroller (mcu/source.py): its MCU figures come
# from channels removed and INT8.
GRAPH_ON_MCU: dict[str, tuple[str, ...]] = {"flash": ("sq",), "ram": ("sq",), "instructions": ("sq",)}
PER_LAYER = frozenset({"dc", "pq"})  # the templates drawing per-layer sparsities (sensitivity-shaped ranges)
Template = Callable[[Draw, ModelInfo, SearchSpace], tuple[str, ...]]
TEMPLATES: dict[str, Template] = {}


def template(name: str) -> Callable[[Template], Template]:
    def deco(fn: Template) -> Template:
        TEMPLATES[name] = fn
        return fn

    return deco


def _round(x: float) -> float:
    return round(x, 4)  # a drawn float prints as 0.93, not 0.9299999999999999, in the step text


def _prune(draw: Draw, info: ModelInfo, space: SearchSpace) -> str:
    """Per-layer unstructured sparsities (Han et al.: each layer its own threshold)."""
    parts = []
    for layer in info.layers:
        lo, hi = space.layer_range(layer, info)
        parts.append(f"{layer}={_round(draw.real(f'sparsity.{layer}', lo, hi, space.sparsity_step))}")
    epochs = draw.choice("prune_epochs", space.prune_epochs)
    rounds = draw.choice("prune_rounds", space.prune_rounds) if len(space.prune_rounds) > 1 else space.prune_rounds[0]
    schedule = f",schedule=iterative,rounds={rounds}" if rounds > 1 else ""
    return f"prune.unstructured:scope=layer,layers={'+'.join(parts)}{schedule},epochs={epochs}"


def _bits(draw: Draw, info: ModelInfo, space: SearchSpace) -> str:
    fc = draw.integer("fc_bits", *space.bits)
    if not info.conv and not info.depthwise:
        return f"bits={fc}"
    return f"fc_bits={fc},conv_bits={draw.integer('conv_bits', max(space.bits[0], 4), 8)}"


@template("dc")
def deep_compression(draw: Draw, info: ModelInfo, space: SearchSpace) -> tuple[str, ...]:
    """prune -> cluster -> encode: a .dsz (Han et al. 2016); biases in float16 or float32."""
    epochs = draw.choice("cluster_epochs", space.cluster_epochs)
    bias = draw.choice("bias_bits", (16, 32))
    return (_prune(draw, info, space), f"cluster:{_bits(draw, info, space)},bias_bits={bias},epochs={epochs}",
            "encode")


@template("q")
def quantize_alone(draw: Draw, info: ModelInfo, space: SearchSpace) -> tuple[str, ...]:
    """INT8 alone: the baseline's own layers in integer compute, no accuracy spent on pruning (full-INT8
    resnet8 in OpenVINO: ~5x FP32 at batch 256, 2.0-2.7x at batch 1, within 0.1 point)."""
    return (f"quantize:precision=int8,method={draw.choice('method', ('ptq', 'qat'))}",)


@template("pq")
def prune_quantize(draw: Draw, info: ModelInfo, space: SearchSpace) -> tuple[str, ...]:
    """prune -> INT8: a sparse integer file (.dsonnx), or the sparse runtime where it is faster."""
    method = draw.choice("method", ("ptq", "qat"))
    return _prune(draw, info, space), f"quantize:precision=int8,method={method}"


# Kept units in multiples of 8: an INT8 resnet8 cut to 12/24/48 channels ran in OpenVINO barely faster
# than 16/32/64, 8/16/32 1.6x faster; fewer distinct widths also leave fewer trials that differ in name only.
STRUCTURED_ROUND_TO = 8


@template("sq")
def structured_quantize(draw: Draw, info: ModelInfo, space: SearchSpace) -> tuple[str, ...]:
    """structured -> INT8: whole neurons and channels removed, then integer compute (the speed route). In a
    residual graph, all layers or the untied inner ones only: resnet8's inner convs halved ran as fast in
    INT8 as every channel halved, the residual stream kept at full width."""
    ratio = _round(draw.real("ratio", *space.structured, 0.05))
    layers = f",layers={draw.choice('layers', ('all', 'inner'))}" if info.inner else ""
    if layers.endswith("inner") and info.folded:
        layers += ",importance=output,reconstruct=True,renorm=True"
    epochs = draw.choice("epochs", space.structured_epochs) if len(space.structured_epochs) > 1 else \
        space.structured_epochs[0]
    return (f"prune.structured:ratio={ratio}{layers},round_to={STRUCTURED_ROUND_TO}"
            f"{f',epochs={epochs}' if epochs >= 0 else ''}", "quantize:precision=int8,method=ptq")


@template("sub8")
def sub_eight_bit(draw: Draw, info: ModelInfo, space: SearchSpace) -> tuple[str, ...]:
    """2-7-bit weights (a .dsq), fine-tuned with QAT."""
    return (f"quantize:precision=int8,method=qat,bits={draw.integer('bits', max(2, space.bits[0]), 7)}",)


@template("dq")
def distill_quantize(draw: Draw, info: ModelInfo, space: SearchSpace) -> tuple[str, ...]:
    """distill into a smaller student -> INT8."""
    if not space.students:
        raise UserError("search template dq: name a student (search.students = [\"mlp-50\"])")
    return f"distill:student={draw.choice('student', space.students)}", "quantize:precision=int8,method=ptq"


def step_keys(text: str) -> tuple[str, dict[str, str]]:
    """`name:k=v,k=v` -> (name, {k: v}), the keys as typed (a `layers=fc1=0.9+fc2=0.8` value kept whole)."""
    name, _, args = text.partition(":")
    return name, dict(kv.split("=", 1) for kv in args.split(",") if "=" in kv)


def with_deploy(steps: tuple[str, ...], mode: str) -> tuple[str, ...]:
    """The pipeline with `deploy=mode` on each 8-bit INT8 quantize step that names no deployment mode."""
    out = []
    for text in steps:
        name, keys = step_keys(text)
        int8 = keys.get("precision", "int8") == "int8" and int(keys.get("bits", 8)) == 8
        out.append(f"{text}{',' if keys else ':'}deploy={mode}" if name == "quantize" and int8
                   and "deploy" not in keys else text)
    return tuple(out)


def _near(value: float, options: tuple[Any, ...]) -> Any:
    return min(options, key=lambda o: abs(o - value))


def seed_params(steps: tuple[str, ...], info: ModelInfo, space: SearchSpace) -> tuple[str, dict[str, Any]] | None:
    """(template, params) nearest a hand-tuned pipeline, for the seeded trials that run that pipeline
    itself (so the search never returns worse than the recipes) and tell the sampler where it lies;
    None for a pipeline no template expresses."""
    parsed = [step_keys(s) for s in steps]
    names, keys = [n for n, _ in parsed], [k for _, k in parsed]
    if names == ["prune.unstructured", "cluster", "encode"] and "layers" in keys[0]:
        fractions = dict(p.split("=") for p in keys[0]["layers"].split("+"))
        if set(fractions) != set(info.layers):
            return None
        params: dict[str, Any] = {f"dc.sparsity.{k}": float(v) for k, v in fractions.items()}
        params["dc.prune_epochs"] = _near(int(keys[0].get("epochs", 9)), space.prune_epochs)
        if len(space.prune_rounds) > 1:
            rounds = int(keys[0].get("rounds", 3)) if keys[0].get("schedule") == "iterative" else 1
            params["dc.prune_rounds"] = _near(rounds, space.prune_rounds)
        params["dc.cluster_epochs"] = _near(int(keys[1].get("epochs", 3)), space.cluster_epochs)
        params["dc.bias_bits"] = _near(int(keys[1].get("bias_bits", 32)), (16, 32))
        params["dc.fc_bits"] = int(keys[1].get("fc_bits", keys[1].get("bits", 5)))
        if info.conv or info.depthwise:
            params["dc.conv_bits"] = int(keys[1].get("conv_bits", keys[1].get("bits", 5)))
        return "dc", params
    if names == ["quantize"] and keys[0].get("precision", "int8") == "int8" and int(keys[0].get("bits", 8)) == 8:
        return "q", {"q.method": keys[0].get("method", "ptq")}
    if names == ["prune.structured", "quantize"]:
        params = {"sq.ratio": float(keys[0].get("ratio", 0.5))}
        if info.inner:
            params["sq.layers"] = "inner" if keys[0].get("layers") == "inner" else "all"
        if len(space.structured_epochs) > 1:
            params["sq.epochs"] = _near(int(keys[0].get("epochs", -1)), space.structured_epochs)
        return "sq", params
    return None
