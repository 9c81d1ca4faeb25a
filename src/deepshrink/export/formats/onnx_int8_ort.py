"""INT8 for any graph: the FP32 ONNX export (the exporter folds batch norm into the convolutions in
eval mode) quantized by ONNX Runtime's own `quantize_static` (QDQ: int8 per-channel symmetric weights,
uint8 per-tensor activations, MinMax calibration on training images). Models that deepshrink's own
sequential writer (onnx_int8.py) cannot express — residual additions, concatenations, depthwise
convolutions, global pooling — take this route; ONNX Runtime leaves ops it cannot quantize in float.

Then two lossless passes keep the file small: constants the exporter shares through Identity nodes
become initializers again (so every bias is quantized to int32 with its layer), and tensor and node
names are shortened as onnx_int8.py names them (`short_name`; a ResNet's names are ~10 % of its INT8 bytes).
"""

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from deepshrink.export.formats.onnx_float import export_onnx
from deepshrink.export.formats.onnx_int8 import short_name
from deepshrink.ingest.onnx_graph import OnnxGraph


def _inline_identity_constants(m: onnx.ModelProto) -> None:
    inits = {t.name: t for t in m.graph.initializer}
    keep = []
    for node in m.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            copy = numpy_helper.from_array(numpy_helper.to_array(inits[node.input[0]]), node.output[0])
            m.graph.initializer.append(copy)
        else:
            keep.append(node)
    del m.graph.node[:]
    m.graph.node.extend(keep)


def shorten_names(m: onnx.ModelProto) -> None:
    """Rename every tensor but the graph's inputs and outputs, and drop node names and doc strings."""
    fixed = {v.name for v in (*m.graph.input, *m.graph.output)}
    names: dict[str, str] = {}

    def rename(name: str) -> str:
        if not name or name in fixed:
            return name
        return names.setdefault(name, short_name(len(names) + 1))

    for t in m.graph.initializer:
        t.name = rename(t.name)
    for node in m.graph.node:
        node.name, node.doc_string = "", ""
        node.input[:] = [rename(i) for i in node.input]
        node.output[:] = [rename(o) for o in node.output]
    del m.graph.value_info[:]


class _Reader:
    """The calibration images, in batches, as `quantize_static` asks for them."""

    def __init__(self, x: np.ndarray, name: str = "input", batch: int = 64) -> None:
        self.batches = iter([{name: x[i : i + batch]} for i in range(0, len(x), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)

    def rewind(self) -> None:  # part of the reader protocol; one pass is all MinMax needs
        pass


_MOVES = {"QuantizeLinear", "DequantizeLinear", "Flatten", "Reshape", "Identity", "Transpose", "Squeeze",
          "Unsqueeze", "Shape", "Gather", "Concat", "MaxPool"}  # no arithmetic on the values (MaxPool: order-exact)


def float_ops(m: onnx.ModelProto) -> list[str]:
    """Ops ONNX Runtime runs in float once it has fused the QDQ pairs it has integer kernels for (e.g.
    HardSwish becomes HardSigmoid x Mul in float), as `OpType xN`: what its optimized graph keeps that is
    neither an integer kernel (QLinear*, QGemm, ...) nor a data move."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        opts.log_severity_level = 4
        ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        optimized = onnx.load(opts.optimized_model_filepath)
    left: dict[str, int] = {}
    for node in optimized.graph.node:
        if node.op_type not in _MOVES and not node.op_type.startswith(("QLinear", "QGemm", "MatMulInteger",
                                                                       "ConvInteger", "DynamicQuantize")):
            left[node.op_type] = left.get(node.op_type, 0) + 1
    return [f"{op} x{k}" for op, k in sorted(left.items())]


def quantize_graph(model: nn.Module, example: torch.Tensor, calib: torch.Tensor,
                   keep_activations: bool = False) -> onnx.ModelProto:
    """The INT8 QDQ model of any exportable graph, or of a user's own graph (OnnxGraph: the file as it came),
    calibrated on `calib`. The quantizer drops a Relu/Clip whose work the next QuantizeLinear's range does
    (a uint8 zero point of 0 clips at 0); `keep_activations` keeps them, as `weights_only` needs.

    A pooling or a ReLU straight on the network input is one the quantizer leaves in float (it quantizes
    those only behind an already quantized tensor): such a graph is quantized again with the input quantized
    first (`ForceQuantizeNoInputCheck`), so they run in integers like the rest (ONNX Runtime fuses an average
    pooling into QLinearAveragePool; a ReLU becomes the input quantization's clamp) and the whole graph runs
    on an integer-only target."""
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        if isinstance(model, OnnxGraph):
            m, name = model.proto(), model.input_name
        else:
            m, name = onnx.load(str(export_onnx(model, fp32, example))), "input"
        _inline_identity_constants(m)
        onnx.save(m, str(fp32))
        x = calib.numpy().astype(np.float32)
        q = _quantize_static(fp32, Path(tmp) / "int8.onnx", x, name, keep_activations, force=False)
        if _float_on_input(q):
            q = _quantize_static(fp32, Path(tmp) / "int8.onnx", x, name, keep_activations, force=True)
    shorten_names(q)
    onnx.checker.check_model(q)
    return q


def _quantize_static(fp32: Path, out: Path, x: np.ndarray, name: str, keep_activations: bool,
                     force: bool) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    options = {"WeightSymmetric": True, "ActivationSymmetric": False,
               "QDQKeepRemovableActivations": keep_activations}
    if force:
        options["ForceQuantizeNoInputCheck"] = True
    quiet = logging.root.manager.disable
    logging.disable(logging.WARNING)  # its advice to pre-process goes to the root logger, once per call
    try:
        quantize_static(str(fp32), str(out), _Reader(x, name), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        calibrate_method=CalibrationMethod.MinMax, extra_options=options)
    finally:
        logging.disable(quiet)
    return onnx.load(str(out))


# Operators the quantizer quantizes only behind an already quantized tensor: on the float input it leaves them.
_AFTER_QUANTIZED = {"AveragePool", "GlobalAveragePool", "MaxPool", "GlobalMaxPool", "Relu", "Clip"}


def _float_on_input(q: onnx.ModelProto) -> bool:
    """Whether a pooling or activation reads the float network input (the quantizer left it in float)."""
    inputs = {i.name for i in q.graph.input} - {t.name for t in q.graph.initializer}
    return any(n.op_type in _AFTER_QUANTIZED and n.input[0] in inputs for n in q.graph.node)


def weights_only(q: onnx.ModelProto) -> onnx.ModelProto:
    """The QDQ model with its activations' QuantizeLinear -> DequantizeLinear pairs taken out: INT8-stored
    weights (and biases) behind DequantizeLinear of initializers, float compute, which the runners decode
    once at load (weight_decode.py) to run at FP32's speed. Same bytes of weights as the all-INT8 model.
    `q` must come from quantize_graph(keep_activations=True): without its Q/DQ pairs, a graph whose Relu
    the quantizer folded into a range would lose the Relu (an MNIST LeNet-5 fell to 74.9 %)."""
    out = onnx.ModelProto()
    out.CopyFrom(q)
    inits = {t.name for t in out.graph.initializer}
    quant = {n.output[0]: n for n in out.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits}
    bypass = {n.output[0]: quant[n.input[0]].input[0] for n in out.graph.node
              if n.op_type == "DequantizeLinear" and n.input[0] in quant}
    for name, src in bypass.items():  # a requantization (DQ -> Q -> DQ) leads back to the float tensor
        while src in bypass:
            src = bypass[src]
        bypass[name] = src
    keep = [n for n in out.graph.node if n.output[0] not in bypass and n.output[0] not in quant]
    for n in keep:
        for i, name in enumerate(n.input):
            if name in bypass:
                n.input[i] = bypass[name]
    # a graph output that was a dequantized activation: the float tensor before it takes its name
    for name in {o.name for o in out.graph.output} & set(bypass):
        for n in keep:
            n.output[:] = [name if o == bypass[name] else o for o in n.output]
            n.input[:] = [name if i == bypass[name] else i for i in n.input]
    del out.graph.node[:]
    out.graph.node.extend(keep)
    used = {name for n in keep for name in n.input}
    kept = [t for t in out.graph.initializer if t.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    onnx.checker.check_model(out)
    return out
