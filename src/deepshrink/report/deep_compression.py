"""Deep Compression laid out as Han, Mao & Dally (ICLR 2016) lay it out in their Tables 2 (LeNet-300-100)
and 3 (LeNet-5, the Caffe one: our `lenet-5-caffe`): per layer of each `.dsz` file, the weights, the share
kept, bits per kept weight and per position index before and after Huffman coding, and bytes, with Han's
published row beside ours. Ours are read from the files' headers (export/formats/dsz.py `describe`), never
estimated: bits after Huffman are the coded stream's bytes (code table included) x 8 / kept weights.
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepshrink.export.formats.dsz import describe
from deepshrink.report.rundata import Row, RunData
from deepshrink.report.seeds import groups, pm


@dataclass(frozen=True)
class HanLayer:
    """One row of Han's table: kept %, weight bits (P+Q, +H), index bits (P+Q, +H), compress rate after H."""

    weights: str
    kept_pct: float
    weight_bits: float
    weight_bits_huffman: float
    index_bits: float
    index_bits_huffman: float
    rate_pct: float  # P+Q+H size as a % of the 32-bit layer


# Han et al. 2016, Table 2 (ip1..ip3) and Table 3 (conv1, conv2, ip1, ip2); their ipN are our fcN.
HAN: dict[str, dict[str, HanLayer]] = {
    "lenet-300-100": {
        "fc1": HanLayer("235K", 8, 6, 4.4, 5, 3.7, 2.32),
        "fc2": HanLayer("30K", 9, 6, 4.4, 5, 4.3, 3.04),
        "fc3": HanLayer("1K", 26, 6, 4.3, 5, 3.2, 12.70),
        "total": HanLayer("266K", 8, 6, 5.1, 5, 3.7, 2.49),
    },
    "lenet-5-caffe": {
        "conv1": HanLayer("0.5K", 66, 8, 7.2, 5, 1.5, 67.45),
        "conv2": HanLayer("25K", 12, 8, 7.2, 5, 3.9, 5.28),
        "fc1": HanLayer("400K", 8, 5, 4.5, 5, 4.5, 2.45),
        "fc2": HanLayer("5K", 19, 5, 5.2, 5, 3.7, 6.13),
        "total": HanLayer("431K", 8, 5.3, 4.1, 5, 4.4, 2.55),
    },
}
COLUMNS = ["variant", "layer", "weights", "kept %", "weight bits (P+Q)", "weight bits (P+Q+H)",
           "index bits (P+Q)", "index bits (P+Q+H)", "bytes", "% of 32-bit"]


@dataclass(frozen=True)
class LayerBits:
    weights: int
    kept: int
    weight_bits: float
    weight_huffman_bytes: int
    index_bits: float
    index_huffman_bytes: int
    bytes: int


def _layer(r: dict[str, Any]) -> LayerBits:
    coded = r["kind"] == "coded"  # else "raw": over 256 distinct values, float32 each
    book = int(r["codebook"]) if coded else 0
    return LayerBits(weights=math.prod(int(d) for d in str(r["shape"]).split("x")), kept=int(r["nonzero"]),
                     weight_bits=max(1, math.ceil(math.log2(book))) if coded else 32.0,
                     weight_huffman_bytes=int(r["index_bytes"] if coded else r["value_bytes"]),
                     index_bits=float(r["gap_bits"]), index_huffman_bytes=int(r["position_bytes"]),
                     bytes=int(r["position_bytes"]) + int(r["value_bytes"]))


def layer_bits(path: Path) -> dict[str, LayerBits]:
    """Per weight tensor of a `.dsz` (layer name -> its numbers), plus "total" over them."""
    rows = [r for r in describe(path.read_bytes(), str(path)) if r["kind"] != "dense"]
    out = {str(r["tensor"]).removesuffix(".weight"): _layer(r) for r in rows}
    if out:
        ls = list(out.values())
        kept = sum(x.kept for x in ls)
        out["total"] = LayerBits(sum(x.weights for x in ls), kept,
                                 sum(x.weight_bits * x.kept for x in ls) / max(kept, 1),
                                 sum(x.weight_huffman_bytes for x in ls),
                                 sum(x.index_bits * x.kept for x in ls) / max(kept, 1),
                                 sum(x.index_huffman_bytes for x in ls), sum(x.bytes for x in ls))
    return out


def _cells(seeds: list[LayerBits]) -> list[str]:
    def per_kept(nbytes: int, kept: int) -> float | None:
        return 8 * nbytes / kept if kept else None

    return [pm([s.weights for s in seeds], 0), pm([100 * s.kept / s.weights for s in seeds], 1),
            pm([s.weight_bits for s in seeds], 1), pm([per_kept(s.weight_huffman_bytes, s.kept) for s in seeds], 1),
            pm([s.index_bits for s in seeds], 1), pm([per_kept(s.index_huffman_bytes, s.kept) for s in seeds], 1),
            pm([s.bytes for s in seeds], 0), pm([100 * s.bytes / (4 * s.weights) for s in seeds], 2)]


def _han_cells(h: HanLayer) -> list[str]:
    return [h.weights, f"{h.kept_pct:g}", f"{h.weight_bits:g}", f"{h.weight_bits_huffman:g}", f"{h.index_bits:g}",
            f"{h.index_bits_huffman:g}", "", f"{h.rate_pct:g}"]


def dsz_groups(data: RunData) -> dict[tuple[str, ...], list[Row]]:
    """Finished `.dsz` rows of Han's models on MNIST by (model, label), seeds in order."""
    mine = [r for r in data.results if r.get("deployment") == "dsz" and r.get("dataset") == "mnist"
            and (r.get("base_model") or r.get("model", "")) in HAN]
    return groups(mine, key=lambda r: (r.get("base_model") or r.get("model", ""), r.get("label") or r["variant"]))


def deep_compression_rows(data: RunData) -> list[list[str]]:
    """Per `.dsz` variant of LeNet-300-100 / LeNet-5-Caffe: its layers (mean ± std over seeds), each with
    Han's row under it, then the total."""
    rows: list[list[str]] = []
    if data.run_dir is None:
        return rows
    for (model, label), seeds in dsz_groups(data).items():
        bits = [layer_bits(data.run_dir / r["artifact"]) for r in seeds]
        name = f"{label} ({len(seeds)} seed{'s' if len(seeds) > 1 else ''})"
        for layer in [k for k in bits[0] if k != "total"] + ["total"]:
            got = [b[layer] for b in bits if layer in b]
            rows.append([name, layer, *_cells(got)])
            if layer in HAN[model]:
                rows.append(["Han et al. 2016", layer, *_han_cells(HAN[model][layer])])
    return rows
