"""How each runtime runs an exported model: a factory (threads, device) -> runner (batch -> logits)."""

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deepshrink.export.weight_decode import loadable
from deepshrink.measure.latency import Runner, RunnerFactory


def ort_runner(path: Path, config_entries: dict[str, str] | None = None) -> RunnerFactory:
    """ONNX Runtime runner; `config_entries` are session config keys. INT8-stored weights computed in
    float are decoded once when the model is loaded (weight_decode.py), so they run at FP32's speed."""
    model: list[str | bytes] = []  # decoded on the first session, kept for the next ones

    def make(threads: int, device: str) -> Runner:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        for key, value in (config_entries or {}).items():
            opts.add_session_config_entry(key, value)
        providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        if not model:
            model.append(loadable(path))
        sess = ort.InferenceSession(model[0], opts, providers=providers)
        name = sess.get_inputs()[0].name

        def run(x: np.ndarray) -> np.ndarray:
            return np.asarray(sess.run(None, {name: x})[0])

        return run

    return make


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
