"""How each runtime runs an exported model: a factory (threads, device) -> runner (batch -> logits)."""

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from deepshrink.export import conv_pool
from deepshrink.export.weight_decode import loadable
from deepshrink.measure.latency import Runner, RunnerFactory


@dataclass
class OrtRunner:
    """ONNX Runtime runner factory of one file; `config_entries` are session config keys; `fused` conv +
    max-pool pairs are run as polyphase convolutions (conv_pool.py), as deploy.py chose by timing. INT8-stored
    weights computed in float are decoded once when the model is loaded (weight_decode.py), so they run at
    FP32's speed."""

    path: Path
    config_entries: dict[str, str] = field(default_factory=dict)
    fused: int = 0
    _model: list[str | bytes] = field(default_factory=list, init=False, repr=False, compare=False)  # loaded once

    def loaded(self) -> str | bytes:
        """What the sessions load: the file, decoded and rewritten as configured."""
        if not self._model:
            model = loadable(self.path)
            if self.fused:
                proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(model)
                model = conv_pool.fuse(proto, self.fused).SerializeToString()
            self._model.append(model)
        return self._model[0]

    def __call__(self, threads: int, device: str) -> Runner:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        for key, value in self.config_entries.items():
            opts.add_session_config_entry(key, value)
        providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        sess = ort.InferenceSession(self.loaded(), opts, providers=providers)
        name = sess.get_inputs()[0].name

        def run(x: np.ndarray) -> np.ndarray:
            return np.asarray(sess.run(None, {name: x})[0])

        return run


def ort_runner(path: Path, config_entries: dict[str, str] | None = None) -> RunnerFactory:
    return OrtRunner(path, dict(config_entries or {}))


def torch_runner(model: nn.Module, dtype: torch.dtype = torch.float32) -> RunnerFactory:
    def make(threads: int, device: str) -> Runner:
        # The caller's model stays put: convert a copy when a conversion is needed (CSR kernels
        # cannot be deep-copied, and hold no parameters to convert).
        moves = any(p.dtype != dtype or p.device.type != device for p in model.parameters())
        m = (copy.deepcopy(model) if moves else model).eval().to(device=device, dtype=dtype)

        @torch.inference_mode()
        def run(x: np.ndarray) -> np.ndarray:
            out = m(torch.from_numpy(x).to(device))
            if device == "cuda":
                torch.cuda.synchronize()
            return out.float().cpu().numpy()

        return run

    return make
