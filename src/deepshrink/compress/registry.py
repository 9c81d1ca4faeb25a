"""The step registry: one frozen config dataclass per technique and one `apply` verb that dispatches
on the config's type (torchao's handler map). Steps parse from `NAME:key=value,key=value`.

Techniques register here when their subpackage is imported; `deepshrink.compress` imports them all.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

from deepshrink.config import coerce
from deepshrink.errors import UserError
from deepshrink.variant import StepContext, Variant

Handler = Callable[[Variant, Any, StepContext], Variant]

STEP_CONFIGS: dict[str, type] = {}  # step name -> config class
_HANDLERS: dict[type, Handler] = {}  # config class -> apply handler
_STEP_NAMES: dict[type, str] = {}

def register_step(name: str, config_cls: type) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        STEP_CONFIGS[name] = config_cls
        _HANDLERS[config_cls] = fn
        _STEP_NAMES[config_cls] = name
        return fn

    return deco


def step_names() -> list[str]:
    return sorted(STEP_CONFIGS)


def parse_step(text: str) -> Any:
    """`prune.unstructured:sparsity=0.9,schedule=iterative` -> PruneUnstructuredConfig(...)."""
    name, _, args = text.strip().partition(":")
    if name not in STEP_CONFIGS:
        raise UserError(f"unknown step {name!r} in {text!r} (known: {', '.join(sorted(STEP_CONFIGS)) or 'none'})")
    cls = STEP_CONFIGS[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    defaults = cls()
    kwargs: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in args.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            raise UserError(f"step {text!r}: expected key=value, got {part!r}")
        if key not in fields:
            raise UserError(f"step {name}: unknown key {key!r} (known: {', '.join(fields)})")
        kwargs[key] = coerce(value, getattr(defaults, key), f"{name}.{key}")
    return cls(**kwargs)


def format_step(cfg: Any) -> str:
    """Canonical step syntax with only the non-default keys, for the `pipeline` column."""
    name = _STEP_NAMES[type(cfg)]
    defaults = type(cfg)()
    keys = [f"{f.name}={getattr(cfg, f.name)}" for f in dataclasses.fields(cfg)
            if getattr(cfg, f.name) != getattr(defaults, f.name)]
    return f"{name}:{','.join(keys)}" if keys else name


def apply(v: Variant, cfg: Any, ctx: StepContext) -> Variant:
    """Apply one step; the returned variant's manifest pipeline gains the step."""
    handler = _HANDLERS.get(type(cfg))
    if handler is None:
        raise UserError(f"no technique registered for {type(cfg).__name__}")
    out = handler(v, cfg, ctx)
    out.manifest.pipeline = [*v.manifest.pipeline, format_step(cfg)]
    return out
