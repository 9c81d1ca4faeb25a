"""A user's ONNX classifier kept as its own graph (`OnnxGraph`), for the steps that need no PyTorch module:
INT8 post-training quantization is ONNX Runtime's `quantize_static` on the original graph
(export/formats/onnx_int8_ort.py), so a graph with ops the converter (onnx_to_torch.py) lacks still gets INT8
PTQ, and the FP32 baseline ships the user's own file rather than a re-export of a conversion.

The module holds the file's bytes as a uint8 buffer (so a checkpoint is the graph itself, reloaded by
`from_onnx_graph`) and runs them in ONNX Runtime when called, for the few checks that call a model
(one forward on zeros, the layer walk). It has no PyTorch layers: techniques that change weights refuse it
before work, and `deepshrink compress` takes this route only when INT8 PTQ is the only step.
"""

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import Tensor, nn

from deepshrink.errors import UserError
from deepshrink.ingest.onnx_file import fixed_batch, read_onnx
from deepshrink.measure.params import LayerStats

REFERENCE = "deepshrink.ingest.onnx_graph:from_onnx_graph"  # what a graph variant's manifest names


class OnnxGraph(nn.Module):
    """An ONNX classifier run by ONNX Runtime: the file's bytes, and its input's name."""

    graph: Tensor

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.register_buffer("graph", torch.frombuffer(bytearray(data), dtype=torch.uint8))
        model = onnx.load_from_string(data)
        inits = {t.name for t in model.graph.initializer}
        self.input_name = next(i.name for i in model.graph.input if i.name not in inits)

    def onnx_bytes(self) -> bytes:
        return self.graph.numpy().tobytes()

    def proto(self) -> onnx.ModelProto:
        return onnx.load_from_string(self.onnx_bytes())

    def layer_stats(self) -> list[LayerStats]:
        """Per weighted node (Conv, Gemm, MatMul with an initializer weight): parameters, and MACs per image
        from the output size shape inference gives (the weight count where it gives none)."""
        model = self.proto()
        inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        positions = _positions(model)
        stats = []
        for i, node in enumerate(model.graph.node):
            if node.op_type not in WEIGHTED_OPS or len(node.input) < 2 or node.input[1] not in inits:
                continue
            w = inits[node.input[1]]
            bias = inits.get(node.input[2]) if len(node.input) > 2 else None
            params = [w] if bias is None else [w, bias]
            per = positions.get(node.output[0], 1) if node.op_type == "Conv" else 1
            stats.append(LayerStats(layer=node.name or f"{node.op_type.lower()}{i}", shape="x".join(map(str, w.shape)),
                                    params_total=sum(p.size for p in params),
                                    params_nonzero=sum(int(np.count_nonzero(p)) for p in params),
                                    macs=w.size * per, macs_nonzero=int(np.count_nonzero(w)) * per))
        return stats

    def forward(self, x: Tensor) -> Tensor:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(self.onnx_bytes(), opts, providers=["CPUExecutionProvider"])
        out = sess.run(None, {self.input_name: x.detach().cpu().numpy().astype(np.float32)})[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32))


WEIGHTED_OPS = {"Conv", "Gemm", "MatMul"}


def _positions(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor -> its spatial positions (H x W ...) where shape inference knows them."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a graph the inference cannot follow: weight counts stand in for MACs
        return {}
    out = {}
    for v in inferred.graph.value_info:
        dims = v.type.tensor_type.shape.dim[2:]
        if dims and all(d.HasField("dim_value") for d in dims):
            out[v.name] = int(np.prod([d.dim_value for d in dims]))
    return out


def graph_of(data: bytes, source: str) -> OnnxGraph:
    """The checked file as an OnnxGraph; a fixed batch size is refused (the study's method times batches
    of 256: the converter route re-exports such files with a dynamic batch)."""
    model = read_onnx(data, source, session=True)
    if (fixed := fixed_batch(model)) is not None:
        raise UserError(f"{source}: input {fixed[0]!r} has a fixed batch size of {fixed[1]}; export it with a "
                        "dynamic batch axis (torch.onnx.export(..., dynamic_axes={NAME: {0: 'batch'}}))")
    return OnnxGraph(data)


def from_onnx_graph(path: str, num_classes: int | None = None,
                    input_shape: tuple[int, int, int] | None = None) -> nn.Module:
    """The graph module of an ONNX classifier file (the reference its checkpoints are rebuilt by)."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{file}: ONNX model not found")
    return graph_of(file.read_bytes(), str(file))
