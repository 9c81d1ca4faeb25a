"""Shared by the microcontroller tests: small INT8 QDQ models (quantized by ONNX Runtime, as deepshrink's
graph route does) and the generated C built for this host, compared with ONNX Runtime."""

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

import deepshrink as ds
from deepshrink.export.formats.onnx_int8_ort import quantize_graph
from deepshrink.mcu import toolchain
from deepshrink.mcu.arena import plan
from deepshrink.mcu.emit import Sources, emit
from deepshrink.mcu.graph import Graph, read_graph
from deepshrink.mcu.lower import lower
from deepshrink.mcu.measure import HostLibrary, integer_logits, ort_quantize
from deepshrink.mcu.program import Program
from deepshrink.measure.latency import LatencyConfig

LIGHT = LatencyConfig(runtimes=("onnxruntime",), threads=(1,), repeats=1, single_calls=5)


@dataclass
class Generated:
    graph: Graph
    prog: Program
    arena: int
    sources: Sources
    model: onnx.ModelProto


def qdq_model(net: nn.Module, shape: tuple[int, ...], n: int = 64, seed: int = 0) -> tuple[onnx.ModelProto, np.ndarray]:
    """(INT8 QDQ model of `net` calibrated on random images, those images): ONNX Runtime's quantizer."""
    torch.manual_seed(seed)
    net.eval()
    x = torch.randn(n, *shape)
    return quantize_graph(net, x[:1], x), x.numpy()


def generate(model: onnx.ModelProto, channels: int = 1, prefix: str = "ds") -> Generated:
    graph = read_graph(model, "test.onnx")
    prog = lower(graph)
    arena = plan(prog.buffers)
    lut = np.zeros((channels, 256), np.int8)
    return Generated(graph, prog, arena, emit(prog, arena, lut, "test", prefix), model)


def int8_lenet(root: Path, data: Path) -> Path:
    """A LeNet-5 trained one epoch on the MNIST folder in `data` and quantized (PTQ): its shipped INT8 file."""
    base = ds.train("lenet-5", "mnist", epochs=1, out=root / "train", data_dir=data, device="cpu", latency=LIGHT).row
    row = ds.compress(root / "train" / base["checkpoint"], ["quantize:precision=int8,method=ptq"], out=root / "q",
                      data_dir=data, device="cpu", latency=LIGHT).row
    return root / "q" / row["artifact"]


def write(gen: Generated, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.h").write_text(gen.sources.header)
    (folder / "model.c").write_text(gen.sources.body)
    return folder


def host_logits(gen: Generated, folder: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C logits, ONNX Runtime logits) of float images x, both int8, the C built with the system cc. Each
    build gets a folder of its own: dlopen of a path already loaded returns the old library."""
    folder = Path(tempfile.mkdtemp(dir=folder))
    write(gen, folder)
    lib_path, warnings = toolchain.build_host(folder, folder)
    assert "warning" not in warnings, warnings
    lib = HostLibrary(lib_path, gen.graph.tensors[gen.graph.output].size, gen.graph.input.size)
    xq = ort_quantize(gen.graph, x)
    return lib.quantized(xq)[0], integer_logits(gen.model, x, gen.graph.offset)


class Head(nn.Module):
    """`body`, flattened, then a small classifier: every test graph ends in quantized logits."""

    def __init__(self, body: nn.Module, features: int, classes: int = 5) -> None:
        super().__init__()
        self.body = body
        self.fc = nn.Linear(features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.body(x), 1))


def features(body: nn.Module, shape: tuple[int, ...]) -> int:
    with torch.no_grad():
        return int(torch.flatten(body.eval()(torch.zeros(1, *shape)), 1).shape[1])
