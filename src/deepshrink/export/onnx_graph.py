"""A user's ONNX classifier kept as its own graph (`OnnxGraph`), for the steps that need no PyTorch module:
INT8 post-training quantization is ONNX Runtime's `quantize_static` on the original graph (qdq_graph.py),
so a graph with ops the converter (onnx_torch.py) lacks still gets INT8 PTQ, and the FP32 baseline ships
the user's own file rather than a re-export of a conversion.

The module holds the file's bytes as a uint8 buffer (so a checkpoint is the graph itself, reloaded by
`from_onnx_graph`) and runs them in ONNX Runtime when called, for the few checks that call a model
(one forward on zeros, the layer walk). It has no PyTorch layers: techniques that change weights refuse it
before work, and `deepshrink compress` takes this route only when INT8 PTQ is the only step.
"""

from pathlib import Path

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from deepshrink.errors import UserError
from deepshrink.export.onnx_file import fixed_batch, read_onnx

REFERENCE = "deepshrink.export.onnx_graph:from_onnx_graph"  # what a graph variant's manifest names


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

    def forward(self, x: Tensor) -> Tensor:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(self.onnx_bytes(), opts, providers=["CPUExecutionProvider"])
        out = sess.run(None, {self.input_name: x.detach().cpu().numpy().astype(np.float32)})[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32))


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
