"""A smoke recipe for study tests, and the test-only step it uses (registered in this process only:
spawned workers do not see it, so pool tests use real steps)."""

import dataclasses
from pathlib import Path

import torch

from deepshrink.compress import STEP_CONFIGS, register_step
from deepshrink.variant import StepContext, Variant

CALLS: list[str] = []
SEEDS: list[int] = []  # the step seed of each call


@dataclasses.dataclass(frozen=True)
class ScaleConfig:
    """A test-only step: scales every weight; `fail=true` raises like a NaN loss would."""

    factor: float = 0.5
    fail: bool = False


if "test.scale" not in STEP_CONFIGS:
    @register_step("test.scale", ScaleConfig)
    def _scale(v: Variant, cfg: ScaleConfig, ctx: StepContext) -> Variant:
        CALLS.append(f"{v.id}:{cfg.factor}" + (":fail" if cfg.fail else ""))
        SEEDS.append(ctx.seed)
        if cfg.fail:
            raise FloatingPointError("non-finite loss at epoch 1")
        with torch.no_grad():
            for p in v.model.parameters():
                p.mul_(cfg.factor if p.dim() > 1 else 1.0)
        return v


RECIPE = """
name = "smoke"
description = "tiny"
expected_minutes = 0.1
[study]
datasets = ["mnist"]
models = ["lenet-300-100"]
val_size = 30
[train]
epochs = 1
batch_size = 64
[measure]
runtimes = ["onnxruntime"]
threads = [1]
repeats = 1
single_calls = 5
images = 50
[[pipeline]]
name = "half"
steps = ["test.scale:factor=0.5"]
[[pipeline]]
name = "half+quarter"
steps = ["test.scale:factor=0.5", "test.scale:factor=0.25"]
[[pipeline]]
name = "broken"
steps = ["test.scale:fail=true"]
"""


def _recipe(tmp_path: Path, text: str = RECIPE) -> Path:
    path = tmp_path / "smoke.toml"
    path.write_text(text)
    return path


# The same tiny study with real steps only: the one spawned workers (pool, Ray) can run.
REAL_RECIPE = RECIPE.split("[[pipeline]]")[0] + """
[[pipeline]]
name = "fp16"
steps = ["quantize:precision=fp16"]
[[pipeline]]
name = "ptq"
steps = ["quantize:precision=int8,method=ptq,calib=64"]
[[pipeline]]
name = "pruned"
steps = ["prune.unstructured:sparsity=0.5,epochs=1,rounds=1"]
[[pipeline]]
name = "pruned+ptq"
steps = ["prune.unstructured:sparsity=0.5,epochs=1,rounds=1", "quantize:precision=int8,method=ptq,calib=64"]
"""
