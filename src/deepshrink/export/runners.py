"""How each runtime runs an exported model: a factory (threads, device) -> runner (batch -> logits)."""

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deepshrink.measure.latency import Runner, RunnerFactory


def ort_runner(path: Path, config_entries: dict[str, str] | None = None) -> RunnerFactory:
    """ONNX Runtime runner; `config_entries` are session config keys (e.g. QDQ fusion switches)."""
    def make(threads: int, device: str) -> Runner:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        for key, value in (config_entries or {}).items():
            opts.add_session_config_entry(key, value)
        providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        sess = ort.InferenceSession(str(path), opts, providers=providers)
        name = sess.get_inputs()[0].name

        def run(x: np.ndarray) -> np.ndarray:
            return np.asarray(sess.run(None, {name: x})[0])

        return run

    return make


def qdq_runner(path: Path, fold_weights: bool = False) -> RunnerFactory:
    """ONNX Runtime runner; `fold_weights` lets it fold DequantizeLinear of int8 initializers into
    float weights at load (QDQ fusion off), which is how a weight-only file gets FP32 speed."""
    return ort_runner(path, {"session.disable_quant_qdq": "1"} if fold_weights else None)


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
