"""Compression techniques, one subpackage each (quantize/, prune/, distill/, cluster/; encode.py), all behind one verb:
`parse_step("NAME:key=value,...")` gives the technique's frozen config, `apply(variant, config, ctx)`
runs it. Adding a technique: a subpackage with a config dataclass and a function decorated with
`@register_step(name, Config)`, imported below.
"""

from deepshrink.compress import cluster, distill, encode, finetune, prune, quantize  # noqa: F401  (each registers)
from deepshrink.compress.registry import STEP_CONFIGS, apply, format_step, parse_step, register_step, step_names

__all__ = ["STEP_CONFIGS", "apply", "format_step", "parse_step", "register_step", "step_names"]
