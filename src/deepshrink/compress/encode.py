"""The `encode` step (SPEC §5): the model ships as a `.dsz` file (export/formats/dsz.py), Deep Compression's
lossless last stage: Huffman-coded relative indices and codebook indices. It changes no weight; what
it could not exploit (no zeros, too many distinct values) is said in the variant's `notes`.
"""

import copy
from dataclasses import dataclass

from deepshrink.compress.registry import register_step
from deepshrink.errors import UserError
from deepshrink.export.formats.dsz import GAP_WIDTHS
from deepshrink.variant import Deployment, StepContext, Variant


@dataclass(frozen=True)
class EncodeConfig:
    """`encode` or `encode:gap_bits=5`: the width of the relative-index symbols, 1-8 bits, the same for
    every layer; 0 (default) picks per layer the width giving the fewest bytes."""

    gap_bits: int = 0

    def __post_init__(self) -> None:
        if self.gap_bits and self.gap_bits not in GAP_WIDTHS:
            raise UserError(f"encode.gap_bits={self.gap_bits}: must be between 1 and 8 (0 = best per layer)")


@register_step("encode", EncodeConfig)
def apply_encode(v: Variant, cfg: EncodeConfig, ctx: StepContext) -> Variant:
    if v.manifest.info.get("quantized"):
        raise UserError("encode: the model is already quantized for its own file format; encode before quantize "
                        "or instead of it")
    return Variant(v.id, v.model, copy.deepcopy(v.manifest), Deployment("dsz", (("gap_bits", cfg.gap_bits),)),
                   log=v.log, train_seconds=v.train_seconds, epochs=v.epochs, seed=v.seed, info=dict(v.info))
