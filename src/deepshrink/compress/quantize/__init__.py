"""The `quantize` step (SPEC §5): FP64/FP32/FP16 casts, INT8 post-training (static, calibrated) and
quantization-aware, and sub-8-bit weights with learned clipping (LSQ).

What ships is always a real reduced-precision file (export/formats and export/exporters): an
integer QDQ ONNX model run by ONNX Runtime, an FP16/FP64 ONNX model, or a bit-packed weight file
whose decoded weights are what gets measured. The variant's checkpoint keeps float weights (for
INT8 the float weights the integer file is quantized from; for sub-8-bit and FP16 the exact
dequantized values), and the manifest's `info.quantized` marks it so it is not quantized twice.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from deepshrink.compress.quantize.qat import (
    FakeQuantNet,
    FreezeObservers,
    KeepZeros,
    KeepZerosGraph,
    fake_quantize_weights,
    mse_scales,
    remove_fake_quant,
)
from deepshrink.compress.registry import register_step
from deepshrink.config import default_train
from deepshrink.errors import UserError
from deepshrink.export.exporters.int8 import DEPLOY_CHOICES
from deepshrink.models import weight_of, weighted_layers
from deepshrink.quant.plan import expressible, observe_ranges
from deepshrink.quant.scales import quantize_weight
from deepshrink.registry import Registry
from deepshrink.train import Callback, fit
from deepshrink.variant import Deployment, StepContext, Variant

PRECISIONS = ("fp64", "fp32", "fp16", "int8")
METHODS = ("ptq", "qat")


@dataclass(frozen=True)
class QuantizeConfig:
    precision: str = "int8"  # fp64 | fp32 | fp16 | int8
    method: str = "ptq"  # ptq | qat (int8 only)
    bits: int = 8  # weight bits for int8; < 8 ships bit-packed weights with float activations
    epochs: int = 3  # QAT fine-tuning epochs
    lr: float = 0.005  # QAT learning rate (a fine-tune: ~1/10 of the baseline's)
    calib: int = 512  # training images for PTQ calibration and QAT's initial ranges
    # int8 deployment: full | mixed | weights | auto (the default: the fastest at batch 256 and 1, chosen by
    # timing, so an INT8 variant is never slower than FP32; integer convolutions lose on x86 CPUs here)
    deploy: str = "auto"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UserError(f"quantize.precision={self.precision!r}: unknown (known: {', '.join(PRECISIONS)})")
        if self.method not in METHODS:
            raise UserError(f"quantize.method={self.method!r}: unknown (known: {', '.join(METHODS)})")
        if not 2 <= self.bits <= 8:
            raise UserError(f"quantize.bits={self.bits}: must be between 2 and 8")
        if self.epochs < 1:
            raise UserError(f"quantize.epochs={self.epochs}: QAT needs at least 1 epoch")
        if self.calib < 1:
            raise UserError(f"quantize.calib={self.calib}: calibration needs at least 1 image")
        if not self.lr > 0:
            raise UserError(f"quantize.lr={self.lr}: must be > 0")
        if self.deploy not in DEPLOY_CHOICES:
            raise UserError(f"quantize.deploy={self.deploy!r}: unknown (known: {', '.join(DEPLOY_CHOICES)})")
        if self.precision != "int8" and (self.method != "ptq" or self.bits != 8):
            raise UserError(f"quantize.method/bits: only apply to precision=int8 (got precision={self.precision})")


Quantizer = Callable[[Variant, QuantizeConfig, StepContext], tuple[Deployment, dict[str, Any]]]
QUANTIZERS: Registry[Quantizer] = Registry("quantizer")


def _key(cfg: QuantizeConfig, model: nn.Module) -> str:
    """The quantizer: by precision, method and bits; INT8 of a graph the compact writers cannot
    express (residuals, depthwise, global pooling) goes through ONNX Runtime (export/formats/onnx_int8_ort.py)."""
    if cfg.precision != "int8":
        return cfg.precision
    if not expressible(model) and (cfg.bits == 8 or cfg.method == "qat"):
        return f"{cfg.method}{'' if cfg.bits == 8 else '-subbyte'}-graph"
    return f"{cfg.method}{'' if cfg.bits == 8 else '-subbyte'}"


@QUANTIZERS.register("fp32")
def _fp32(v: Variant, cfg: QuantizeConfig, ctx: StepContext) -> tuple[Deployment, dict[str, Any]]:
    return Deployment("fp32"), {}


@QUANTIZERS.register("fp64")
def _fp64(v: Variant, cfg: QuantizeConfig, ctx: StepContext) -> tuple[Deployment, dict[str, Any]]:
    return Deployment("fp64"), {}


@QUANTIZERS.register("fp16")
@torch.no_grad()
def _fp16(v: Variant, cfg: QuantizeConfig, ctx: StepContext) -> tuple[Deployment, dict[str, Any]]:
    for p in v.model.parameters():  # the checkpoint then holds exactly the half-precision values
        p.copy_(p.half().float())
    return Deployment("fp16"), {}


def _ranges_option(ranges: dict[str, tuple[float, float]]) -> tuple[tuple[str, float, float], ...]:
    return tuple((name, lo, hi) for name, (lo, hi) in ranges.items())


@QUANTIZERS.register("ptq")
def _ptq(v: Variant, cfg: QuantizeConfig, ctx: StepContext) -> tuple[Deployment, dict[str, Any]]:
    ranges = observe_ranges(v.model, ctx.data.train_x[: cfg.calib])
    opts = (("mode", cfg.deploy), ("ranges", _ranges_option(ranges)))
    return Deployment("int8", opts), {"quant_calibration": f"minmax over {min(cfg.calib, len(ctx.data.train_x))} "
                                                            "training images"}


def _qat_fit(v: Variant, cfg: QuantizeConfig, ctx: StepContext) -> tuple[FakeQuantNet, float]:
    torch.manual_seed(ctx.seed)
    net = FakeQuantNet(v.model, cfg.bits, ctx.data.train_x[: cfg.calib])
    train = default_train(v.manifest.dataset, v.manifest.model, epochs=cfg.epochs, lr=cfg.lr, seed=ctx.seed)
    callbacks: list[Callback] = [FreezeObservers(at=cfg.epochs if cfg.epochs > 1 else 2), KeepZeros(v.model)]
    log = fit(net, ctx.data, train, callbacks=callbacks, progress=ctx.progress,
              label=f"qat int{cfg.bits} {v.manifest.model}", device=ctx.device)
    net.cpu()
    v.log, v.train_seconds, v.epochs = log, v.train_seconds + log.seconds, v.epochs + cfg.epochs
    return net, log.seconds


@QUANTIZERS.register("qat")
def _qat(v: Variant, cfg: QuantizeConfig, ctx: StepContext) -> tuple[Deployment, dict[str, Any]]:
    net, seconds = _qat_fit(v, cfg, ctx)
    # The integer file uses the QAT observers' frozen ranges as they are (no re-calibration);
    # weight scales are max|w|/127 of the tuned weights, the same rule the fake-quant forward used.
    opts = (("mode", cfg.deploy), ("ranges", _ranges_option(net.ranges())))
    return Deployment("int8", opts), {"quant_calibration": "qat observer ranges (EMA, frozen last epoch)",
                                      "qat_seconds": round(seconds, 2)}


@QUANTIZERS.register("ptq-graph")
def _ptq_graph(v: Variant, cfg: QuantizeConfig, ctx: StepContext) -> tuple[Deployment, dict[str, Any]]:
    n = min(cfg.calib, len(ctx.data.train_x))
    return Deployment("int8", (("mode", cfg.deploy), ("calib", n))), {
        "quant_calibration": f"minmax over {n} training images (onnxruntime quantize_static)"}


def _fit_graph(v: Variant, cfg: QuantizeConfig, ctx: StepContext, steps: dict[str, torch.Tensor] | None) -> float:
    """Fine-tune any graph with its weights on their grid (parametrized layers, so the graph trains as
    it is; `steps` fixed per-channel steps, else max|w|/qmax); the seconds it took."""
    torch.manual_seed(ctx.seed)
    keep = KeepZerosGraph(v.model)
    names = fake_quantize_weights(v.model, cfg.bits, steps)
    train = default_train(v.manifest.dataset, v.manifest.model, epochs=cfg.epochs, lr=cfg.lr, seed=ctx.seed)
    try:
        log = fit(v.model, ctx.data, train, callbacks=[keep], progress=ctx.progress,
                  label=f"qat int{cfg.bits} {v.manifest.model}", device=ctx.device)
    finally:
        v.model.cpu()
        remove_fake_quant(v.model, names)
    v.log, v.train_seconds, v.epochs = log, v.train_seconds + log.seconds, v.epochs + cfg.epochs
    return log.seconds


@QUANTIZERS.register("qat-graph")
def _qat_graph(v: Variant, cfg: QuantizeConfig, ctx: StepContext) -> tuple[Deployment, dict[str, Any]]:
    """INT8 QAT of any graph: weights trained on their INT8 grid, then activations calibrated as PTQ does."""
    seconds = _fit_graph(v, cfg, ctx, None)
    deployment, info = _ptq_graph(v, cfg, ctx)
    return deployment, {**info, "quant_calibration": "qat weights (int8 grid), activations " +
                        info["quant_calibration"], "qat_seconds": round(seconds, 2)}


@QUANTIZERS.register("qat-subbyte-graph")
def _qat_subbyte_graph(v: Variant, cfg: QuantizeConfig, ctx: StepContext) -> tuple[Deployment, dict[str, Any]]:
    """Sub-8-bit QAT of any graph: per-channel MSE-optimal steps fixed at the start (LSQ's learned steps
    need the sequential wrapper), weights trained on that grid, then bit-packed."""
    qmax = 2 ** (cfg.bits - 1) - 1
    steps = {name: mse_scales(weight_of(v.model, name), qmax) for name, _ in weighted_layers(v.model)}
    seconds = _fit_graph(v, cfg, ctx, steps)
    return _pack(v.model, cfg.bits, steps), {"quant_calibration": "per-channel MSE-optimal steps, weights QAT",
                                             "qat_seconds": round(seconds, 2)}


@torch.no_grad()
def _pack(model: nn.Module, bits: int, steps: dict[str, torch.Tensor]) -> Deployment:
    """Snap the weights onto their grid so the checkpoint holds exactly what the .dsq file decodes to."""
    qmax = 2 ** (bits - 1) - 1
    for name, _ in weighted_layers(model):
        w, s = weight_of(model, name), steps[name]
        w.copy_(quantize_weight(w, s, qmax) * s.reshape(-1, *([1] * (w.dim() - 1))))
    return Deployment("dsq", (("bits", bits), ("steps", tuple((k, tuple(s.tolist())) for k, s in steps.items()))))


@QUANTIZERS.register("ptq-subbyte")
def _ptq_subbyte(v: Variant, cfg: QuantizeConfig, ctx: StepContext) -> tuple[Deployment, dict[str, Any]]:
    qmax = 2 ** (cfg.bits - 1) - 1
    steps = {name: mse_scales(weight_of(v.model, name), qmax) for name, _ in weighted_layers(v.model)}
    return _pack(v.model, cfg.bits, steps), {"quant_calibration": "per-channel MSE-optimal clipping"}


@QUANTIZERS.register("qat-subbyte")
def _qat_subbyte(v: Variant, cfg: QuantizeConfig, ctx: StepContext) -> tuple[Deployment, dict[str, Any]]:
    net, seconds = _qat_fit(v, cfg, ctx)
    return _pack(v.model, cfg.bits, net.step_sizes()), {"quant_calibration": "LSQ learned per-channel steps",
                                                        "qat_seconds": round(seconds, 2)}


@register_step("quantize", QuantizeConfig)
def apply_quantize(v: Variant, cfg: QuantizeConfig, ctx: StepContext) -> Variant:
    if v.manifest.info.get("quantized"):
        raise UserError(f"quantize: the input model is already quantized ({v.manifest.info.get('quant_precision')}); "
                        "quantize its float checkpoint instead")
    t0 = time.perf_counter()
    deployment, info = QUANTIZERS.get(_key(cfg, v.model))(v, cfg, ctx)
    label = cfg.precision if cfg.bits == 8 else f"int{cfg.bits}-weights"
    v.deployment = deployment
    if cfg.precision not in ("fp32", "fp64"):
        v.manifest.info.update({"quantized": True, "quant_precision": label})
    opts = deployment.opts()
    if ranges := opts.get("ranges"):
        # The calibration travels with the checkpoint: the microcontroller target rebuilds the all-INT8
        # model from it whatever mode the desktop ships (deepshrink.mcu.source).
        v.manifest.info["int8_ranges"] = [list(r) for r in ranges]
    elif deployment.name == "int8" and "calib" in opts:
        # A graph ONNX Runtime quantizes: its calibration images (the first N training images) travel
        # instead, and the target quantizes the checkpoint again on them, as this step did.
        v.manifest.info["int8_calib"] = int(opts["calib"])
    v.info.update({"quant_precision": label, "quant_method": cfg.method if cfg.precision == "int8" else "cast",
                   "quant_bits": cfg.bits if cfg.precision == "int8" else int(cfg.precision[2:]),
                   "quant_seconds": round(time.perf_counter() - t0, 2), **info})
    return v
