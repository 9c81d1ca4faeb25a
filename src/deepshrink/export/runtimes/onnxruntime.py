"""ONNX Runtime, the reference runtime of every ONNX file: a runner factory (threads, device) -> runner (batch
-> logits). The file is loaded as the load-time rewrites leave it: INT8-stored weights of float layers decoded
once (weight_decode.py), and the conv + max-pool pairs the timing choice fused (conv_pool.py, export/choice.py)."""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from deepshrink.export.runtimes import conv_pool
from deepshrink.export.runtimes.weight_decode import loadable
from deepshrink.measure.latency import Runner, RunnerFactory


@dataclass
class OrtRunner:
    """ONNX Runtime runner factory of one file; `config_entries` are session config keys; `fused` conv +
    max-pool pairs are run as polyphase convolutions (conv_pool.py), as choice.py chose by timing, and
    `fused_b1` (when it differs) at batch 1, where the rewrite gains less. INT8-stored weights computed in
    float are decoded once when the model is loaded (weight_decode.py), so they run at FP32's speed."""

    path: Path
    config_entries: dict[str, str] = field(default_factory=dict)
    fused: int = 0
    fused_b1: int | None = None
    _models: dict[int, str | bytes] = field(default_factory=dict, init=False, repr=False, compare=False)

    def loaded(self, fused: int | None = None) -> str | bytes:
        """What a session loads: the file, decoded and with its first `fused` pairs rewritten (default: the
        batched graph's); each form built once."""
        k = self.fused if fused is None else fused
        if k not in self._models:
            model = loadable(self.path)
            if k:
                proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(model)
                model = conv_pool.fuse(proto, k).SerializeToString()
            self._models[k] = model
        return self._models[k]

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
        single = sess
        if self.fused_b1 is not None and self.fused_b1 != self.fused:
            single = ort.InferenceSession(self.loaded(self.fused_b1), opts, providers=providers)
        name = sess.get_inputs()[0].name

        def run(x: np.ndarray) -> np.ndarray:
            return np.asarray((single if len(x) == 1 else sess).run(None, {name: x})[0])

        return run


def ort_runner(path: Path, config_entries: dict[str, str] | None = None) -> RunnerFactory:
    return OrtRunner(path, dict(config_entries or {}))
