"""The float ONNX writer: a PyTorch module exported with a dynamic batch axis (FP32, FP16 or FP64)."""

import copy
import os
import warnings
from pathlib import Path

import onnx
import torch
from onnx import numpy_helper
from torch import nn


def export_onnx(model: nn.Module, path: Path, example: torch.Tensor, dtype: torch.dtype = torch.float32) -> Path:
    """ONNX with a dynamic batch axis, checked by onnx.checker before it is kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    model = copy.deepcopy(model).eval().to(dtype)  # the caller's model keeps its dtype
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but exports these graphs in ~0.2 s and compactly;
        # the dynamo exporter takes seconds per model and adds metadata bytes to every file.
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example.to(dtype),), str(tmp), dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17)
    exported = onnx.load(str(tmp))
    if fold_pads(exported):
        onnx.save(exported, str(tmp))
    onnx.checker.check_model(exported)
    os.replace(tmp, path)
    return path


def fold_pads(model: onnx.ModelProto) -> bool:
    """Fold each zero Pad of the spatial axes that feeds one Conv alone into the Conv's own pads (TFLite's uneven
    SAME padding: ingest.tflite_to_torch.TfPad), so ONNX Runtime's quantizer and the microcontroller target see
    one convolution. Whether any was folded."""
    g = model.graph
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in g.node if n.op_type == "Constant"}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    folded = []
    for pad in g.node:
        convs = readers.get(pad.output[0], []) if pad.op_type == "Pad" else []
        pads = consts.get(pad.input[1]) if len(pad.input) > 1 else None
        if len(convs) != 1 or convs[0].op_type != "Conv" or pads is None or pads.shape != (8,) or \
                any(pads[[0, 1, 4, 5]]) or (len(pad.input) > 2 and pad.input[2]) or \
                any(a.name == "mode" and a.s != b"constant" for a in pad.attribute):
            continue
        conv = convs[0]
        attr = next((a for a in conv.attribute if a.name == "pads"), None)
        old = list(attr.ints) if attr is not None else [0, 0, 0, 0]
        new = [old[0] + int(pads[2]), old[1] + int(pads[3]), old[2] + int(pads[6]), old[3] + int(pads[7])]
        if attr is not None:
            conv.attribute.remove(attr)
        conv.attribute.append(onnx.helper.make_attribute("pads", new))
        conv.input[0] = pad.input[0]
        folded.append(pad)
    for pad in folded:
        g.node.remove(pad)
        if len(readers[pad.input[1]]) == 1:  # its pads' Constant, read by nothing else now
            g.node.remove(next(n for n in g.node if n.op_type == "Constant" and n.output[0] == pad.input[1]))
    return bool(folded)
