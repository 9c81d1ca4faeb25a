"""What the fuzzer feeds: every reader of a file a user or an earlier run hands deepshrink, each with
valid seed files in its canonical format. A reader may accept an input or refuse it with `UserError`;
anything else it raises (or a hang) is a crash.

Adding a reader (e.g. `.dsz`) is one registration:

    def _dsz_seeds(tmp: Path) -> list[bytes]:
        return [dsz.encode(small_model()), ...]          # valid files, small: the fuzzer mutates them

    @target("dsz", _dsz_seeds)
    def _read_dsz(data: bytes, tmp: Path) -> object:
        return dsz.decode(data, "fuzz.dsz")               # or write `data` under `tmp` and read the path
"""

import gzip
import io
import pickle
import struct
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save as save_safetensors
from torch import nn

from deepshrink.checkpoint import Manifest, load_checkpoint, save_checkpoint
from deepshrink.compress.distill.teacher import _read_cached
from deepshrink.data import cifar, folder, idx, npz
from deepshrink.export.exporters.dsparse import sparse_weight_keys
from deepshrink.export.exporters.dsz import coded_weight_keys
from deepshrink.export.formats import dsonnx, dsparse, dsq, dsz
from deepshrink.export.formats.onnx_float import export_onnx
from deepshrink.ingest.onnx_file import read_onnx
from deepshrink.ingest.tflite_file import TfModel, TfOperator, TfTensor, read_tflite
from deepshrink.ingest.tflite_to_torch import convert_tflite
from deepshrink.ingest.tflite_write import write_tflite
from deepshrink.models import create_model
from deepshrink.study.recipe import load_recipe

Seeds = Callable[[Path], list[bytes]]
Read = Callable[[bytes, Path], object]


@dataclass(frozen=True)
class Target:
    name: str
    seeds: Seeds  # valid inputs, written into `tmp` if they need files beside them
    read: Read  # reads one input (bytes, a scratch folder); UserError is the only allowed failure


TARGETS: dict[str, Target] = {}


def target(name: str, seeds: Seeds) -> Callable[[Read], Read]:
    """Register a reader under `name` with its seed generator."""
    def deco(read: Read) -> Read:
        if name in TARGETS:
            raise ValueError(f"fuzz target {name!r} registered twice")
        TARGETS[name] = Target(name, seeds, read)
        return read

    return deco


def _tiny_model(seed: int = 0, sparsity: float = 0.0) -> nn.Module:
    """mlp-50 on 1x8x8 inputs, 3 classes: every format's code paths, a few kB."""
    torch.manual_seed(seed)
    model = create_model("mlp-50", (1, 8, 8), 3)
    if sparsity:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p[p.abs() < p.abs().flatten().quantile(sparsity)] = 0.0
    return model.eval()


def _write(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


# ---- data files --------------------------------------------------------------------------------------

def _idx_bytes(arr: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape) + \
        arr.astype(np.uint8).tobytes()


def _idx_seeds(tmp: Path) -> list[bytes]:
    rng = np.random.default_rng(0)
    images, labels = _idx_bytes(rng.integers(0, 255, (3, 5, 5))), _idx_bytes(np.array([0, 1, 2]))
    return [images, labels, gzip.compress(images), gzip.compress(labels)]


@target("idx", _idx_seeds)
def _read_idx(data: bytes, tmp: Path) -> object:
    # Named as the seed it came from was (gzip magic or not), so each path of the reader sees mutants.
    return idx.read_idx(_write(tmp, "x-idx3-ubyte.gz" if data[:2] == b"\x1f\x8b" else "x-idx3-ubyte", data))


def _cifar_python_seeds(tmp: Path) -> list[bytes]:
    x = np.random.default_rng(0).integers(0, 255, (2, 3072), dtype=np.uint8)
    batch = {b"batch_label": b"b", b"labels": [3, 7], b"data": x, b"filenames": [b"a.png", b"b.png"]}
    return [pickle.dumps(batch, protocol=p) for p in (2, 4)]


@target("cifar-python", _cifar_python_seeds)
def _read_cifar_python(data: bytes, tmp: Path) -> object:
    return cifar.load_batch(data, "data_batch_1")


def _cifar_binary_seeds(tmp: Path) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for mode in ("w", "w:gz"):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode=mode) as tf:
            for name in [*cifar.TRAIN_BATCHES, cifar.TEST_BATCH]:
                rec = np.concatenate([[1], rng.integers(0, 255, 3072)]).astype(np.uint8).tobytes()
                info = tarfile.TarInfo(f"{cifar.BIN_DIR}/{name}.bin")
                info.size = len(rec)
                tf.addfile(info, io.BytesIO(rec))
        out.append(buf.getvalue())
    return out


@target("cifar-binary", _cifar_binary_seeds)
def _read_cifar_binary(data: bytes, tmp: Path) -> object:
    return cifar.load_binary(_write(tmp, "cifar-10-binary.tar.gz", data))


def _npz_seeds(tmp: Path) -> list[bytes]:
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 255, (4, 6, 6), dtype=np.uint8), "y_train": np.array([0, 1, 0, 1]),
              "x_test": rng.random((2, 6, 6, 1)).astype(np.float32), "y_test": np.array([1, 0])}
    out = []
    for save in (np.savez, np.savez_compressed):
        buf = io.BytesIO()
        save(buf, **arrays)
        out.append(buf.getvalue())
    return out


@target("npz", _npz_seeds)
def _read_npz(data: bytes, tmp: Path) -> object:
    return npz.load_npz(_write(tmp, "data.npz", data))


def _image_seeds(tmp: Path) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for fmt, mode in (("PNG", "L"), ("BMP", "RGB"), ("GIF", "L"), ("PNG", "RGB")):
        arr = rng.integers(0, 255, (6, 6) if mode == "L" else (6, 6, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr, mode).save(buf, fmt)
        out.append(buf.getvalue())
    return out


@target("folder", _image_seeds)
def _read_folder(data: bytes, tmp: Path) -> object:
    """One mutated image in an ImageFolder tree whose other images are valid and match it in size."""
    root = tmp / "images"
    for split, cls in (("train", "a"), ("train", "b"), ("test", "a")):
        (root / split / cls).mkdir(parents=True, exist_ok=True)
    _write(root / "train" / "a", "0.png", data)
    try:
        with Image.open(io.BytesIO(data)) as probe:  # the rest of the tree agrees with the image's size and mode
            size, mode = probe.size, probe.mode
    except Exception:
        size, mode = (6, 6), "L"
    if size[0] * size[1] > 4096 or mode not in ("L", "RGB", "P"):
        size, mode = (6, 6), "L"
    other = io.BytesIO()
    Image.new(mode, size).save(other, "PNG")
    _write(root / "train" / "b", "1.png", other.getvalue())
    _write(root / "test" / "a", "2.png", other.getvalue())
    return folder.load_folder(root)


# ---- models and checkpoints --------------------------------------------------------------------------

_MODEL_SOURCE = b'''"""A user's model file."""
from torch import nn


def net(num_classes, input_shape):
    c, h, w = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 16), nn.ReLU(), nn.Linear(16, num_classes))


class Net(nn.Module):
    def __init__(self, num_classes=3, width=8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, width, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.body(x))
'''


@target("model-reference", lambda tmp: [_MODEL_SOURCE])
def _read_model_reference(data: bytes, tmp: Path) -> object:
    path = _write(tmp, "user_model.py", data)
    return [create_model(f"{path}:{name}", (1, 8, 8), 3) for name in ("net", "Net")]


def _checkpoint_files(tmp: Path) -> tuple[bytes, bytes]:
    folder_ = tmp / "seed-ckpt"
    manifest = Manifest(model="mlp-50", dataset="npz:x.npz", input_shape=[1, 8, 8], num_classes=3, mean=[0.1],
                        std=[0.3], pipeline=["prune.unstructured:sparsity=0.5"], train={"epochs": 1})
    weights = save_checkpoint(_tiny_model(), manifest, folder_ / "model")
    return weights.read_bytes(), weights.with_suffix(".json").read_bytes()


@target("checkpoint-manifest", lambda tmp: [_checkpoint_files(tmp)[1]])
def _read_manifest(data: bytes, tmp: Path) -> object:
    if not (tmp / "ckpt.safetensors").exists():
        _write(tmp, "ckpt.safetensors", _checkpoint_files(tmp)[0])
    _write(tmp, "ckpt.json", data)
    return load_checkpoint(tmp / "ckpt.safetensors")


@target("safetensors", lambda tmp: [_checkpoint_files(tmp)[0]])
def _read_safetensors(data: bytes, tmp: Path) -> object:
    if not (tmp / "ckpt.json").exists():
        _write(tmp, "ckpt.json", _checkpoint_files(tmp)[1])
    _write(tmp, "ckpt.safetensors", data)
    return load_checkpoint(tmp / "ckpt.safetensors")


def _onnx_bytes(model: nn.Module) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        return export_onnx(model, Path(tmp) / "m.onnx", torch.zeros(1, 1, 8, 8)).read_bytes()


@target("onnx", lambda tmp: [_onnx_bytes(_tiny_model())])
def _read_onnx(data: bytes, tmp: Path) -> object:
    return read_onnx(data, "fuzz.onnx", session=True)


_MLPERF_KWS = Path(__file__).resolve().parents[2].parent / "shared" / "mlperf-tiny" / "kws_ref_model.tflite"


def _tiny_tflite() -> bytes:
    """DEPTHWISE_CONV_2D (per-channel int8 weights, int32 bias) -> RESHAPE -> SOFTMAX, written without TensorFlow."""
    def t(i: int, shape: tuple[int, ...], dtype: str = "int8", scales: int = 1, dim: int = 0,
          data: np.ndarray | None = None) -> TfTensor:
        scale = np.full(scales, 0.02, np.float32) if dtype == "int8" or scales > 1 else np.zeros(0, np.float32)
        return TfTensor(i, f"t{i}", shape, dtype, scale, np.zeros(len(scale), np.int64), dim, data)

    tensors = (t(0, (1, 3, 3, 2)), t(1, (1, 2, 2, 2), scales=2, dim=3, data=np.arange(8, dtype=np.int8)),
               t(2, (2,), "int32", scales=2, data=np.array([3, -3], np.int32)), t(3, (1, 3, 3, 2)),
               t(4, (2,), "int32", data=np.array([1, 18], np.int32)), t(5, (1, 18)), t(6, (1, 18)))
    dw = {"padding": "SAME", "stride_w": 1, "stride_h": 1, "depth_multiplier": 1, "fused_activation_function": "RELU6"}
    ops = (TfOperator(0, "DEPTHWISE_CONV_2D", 3, (0, 1, 2), (3,), dw),
           TfOperator(1, "RESHAPE", 1, (3, 4), (5,), {"new_shape": (1, 18)}),
           TfOperator(2, "SOFTMAX", 2, (5,), (6,), {"beta": 1.0}))
    return write_tflite(TfModel("tiny.tflite", 3, "fuzz seed", tensors, ops, (0,), (6,)))


def _tflite_seeds(tmp: Path) -> list[bytes]:
    # The smallest MLPerf Tiny model where ../shared has it; the generated one always.
    return [_tiny_tflite(), *([_MLPERF_KWS.read_bytes()] if _MLPERF_KWS.is_file() else [])]


@target("tflite", _tflite_seeds)
def _read_tflite(data: bytes, tmp: Path) -> object:
    return read_tflite(data, "fuzz.tflite")


def _float_tflite(residual: bool) -> bytes:
    """A float classifier on 4 x 4 x 2 images: CONV_2D (stride 2, uneven SAME pads, RELU6) -> DEPTHWISE_CONV_2D
    (multiplier 2) -> RESHAPE -> FULLY_CONNECTED (no bias) -> SOFTMAX; or (`residual`) x + CONV_2D(x) ->
    AVERAGE_POOL_2D -> MAX_POOL_2D (SAME) -> FULLY_CONNECTED on the 4-D map."""
    rng, none, no_zp = np.random.default_rng(int(residual)), np.zeros(0, np.float32), np.zeros(0, np.int64)

    def t(i: int, shape: tuple[int, ...], consts: tuple[int, ...]) -> TfTensor:
        data = rng.standard_normal(shape).astype(np.float32) if i in consts else None
        return TfTensor(i, f"t{i}", shape, "float32", none, no_zp, 0, data)

    conv = {"stride_h": 2, "stride_w": 2, "dilation_h_factor": 1, "dilation_w_factor": 1}
    pool = {"fused_activation_function": "NONE", "stride_h": 1, "stride_w": 1}
    if residual:
        shapes = [(1, 4, 4, 2), (2, 1, 1, 2), (2,), (1, 4, 4, 2), (1, 4, 4, 2), (1, 2, 2, 2), (1, 2, 2, 2), (3, 8),
                  (3,), (1, 3)]
        tensors = [t(i, s, (1, 2, 7, 8)) for i, s in enumerate(shapes)]
        ops = [("CONV_2D", (0, 1, 2), 3, {**conv, "stride_h": 1, "stride_w": 1, "padding": "VALID"}),
               ("ADD", (0, 3), 4, {"fused_activation_function": "RELU"}),
               ("AVERAGE_POOL_2D", (4,), 5, {**pool, "padding": "VALID", "stride_h": 2, "stride_w": 2,
                                             "filter_height": 2, "filter_width": 2}),
               ("MAX_POOL_2D", (5,), 6, {**pool, "padding": "SAME", "filter_height": 3, "filter_width": 3}),
               ("FULLY_CONNECTED", (6, 7, 8), 9, {"fused_activation_function": "RELU_N1_TO_1"})]
    else:
        shapes = [(1, 4, 4, 2), (3, 3, 3, 2), (3,), (1, 2, 2, 3), (1, 2, 2, 6), (6,), (1, 1, 1, 6), (2,), (1, 6),
                  (3, 6), (1, 3), (1, 3)]
        tensors = [t(i, s, (1, 2, 4, 5, 9)) for i, s in enumerate(shapes)]
        tensors[7] = TfTensor(7, "t7", (2,), "int32", none, no_zp, 0, np.array([1, 6], np.int32))  # RESHAPE's
        ops = [("CONV_2D", (0, 1, 2), 3, {**conv, "padding": "SAME", "fused_activation_function": "RELU6"}),
               ("DEPTHWISE_CONV_2D", (3, 4, 5), 6, {**conv, "padding": "VALID", "depth_multiplier": 2}),
               ("RESHAPE", (6, 7), 8, {}), ("FULLY_CONNECTED", (8, 9, -1), 10, {}),
               ("SOFTMAX", (10,), 11, {"beta": 1.0})]
    operators = tuple(TfOperator(k, op, 1, ins, (out,), opts) for k, (op, ins, out, opts) in enumerate(ops))
    return write_tflite(TfModel("float.tflite", 3, "fuzz seed", tuple(tensors), operators, (0,), (len(shapes) - 1,)))


@target("tflite_float", lambda tmp: [_float_tflite(False), _float_tflite(True)])
def _read_tflite_float(data: bytes, tmp: Path) -> object:
    return convert_tflite(read_tflite(data, "fuzz.tflite"))


# ---- deepshrink's compact files ----------------------------------------------------------------------

def _dsparse_seeds(tmp: Path) -> list[bytes]:
    model = _tiny_model(sparsity=0.6)
    return [dsparse.encode(model.state_dict(), sparse_weight_keys(model), codec) for codec in ("lzma", "none", "zlib")]


@target("dsparse", _dsparse_seeds)
def _read_dsparse(data: bytes, tmp: Path) -> object:
    return dsparse.decode(data, "fuzz.dsparse")


def _dsz_seeds(tmp: Path) -> list[bytes]:
    model = _tiny_model(sparsity=0.7)
    with torch.no_grad():  # a clustered model: few distinct non-zero values per layer
        for p in model.parameters():
            p.copy_(torch.round(p * 8) / 8)
    return [dsz.encode(model.state_dict(), coded_weight_keys(model), gap_bits) for gap_bits in (0, 4)]


@target("dsz", _dsz_seeds)
def _read_dsz(data: bytes, tmp: Path) -> object:
    return dsz.decode(data, "fuzz.dsz")


@target("dsonnx", lambda tmp: [dsonnx.encode(_onnx_bytes(_tiny_model(sparsity=0.7)), codec)
                               for codec in ("lzma", "none")])
def _read_dsonnx(data: bytes, tmp: Path) -> object:
    return dsonnx.decode(data, "fuzz.dsonnx")


def _dsq_seeds(tmp: Path) -> list[bytes]:
    model = _tiny_model()
    steps = {f"{name}.weight": torch.full((m.weight.shape[0],), 0.01) for name, m in model.named_modules()
             if isinstance(m, nn.Linear)}
    return [dsq.encode(model.state_dict(), bits, steps) for bits in (2, 4, 7)]


@target("dsq", _dsq_seeds)
def _read_dsq(data: bytes, tmp: Path) -> object:
    return dsq.decode(data, "fuzz.dsq")


# ---- recipes and caches ------------------------------------------------------------------------------

_RECIPE = b'''name = "fuzz"
description = "tiny"
expected_minutes = 0.1
[study]
datasets = ["mnist", "npz:data.npz"]
models = ["lenet-300-100", "mlp-50"]
seeds = [0, 1]
val_size = 30
jobs = 2
[train]
epochs = 1
batch_size = 64
[train.per.mnist]
epochs = 2
[measure]
runtimes = ["onnxruntime"]
threads = [1]
repeats = 1
single_calls = 5
images = 50
[[pipeline]]
name = "prune+int8"
steps = ["prune.unstructured:sparsity=0.5,epochs=1", "quantize:precision=int8,method=ptq"]
models = ["mlp-50"]
[[pipeline]]
steps = ["distill:temperature=2,alpha=0.5,epochs=1,teacher={baseline}", "prune.structured:ratio=0.5"]
'''


@target("recipe", lambda tmp: [_RECIPE])
def _read_recipe(data: bytes, tmp: Path) -> object:
    return load_recipe(str(_write(tmp, "recipe.toml", data)))


@target("teacher-logits", lambda tmp: [save_safetensors({"train": torch.randn(6, 3)})])
def _read_teacher_logits(data: bytes, tmp: Path) -> object:
    # A bad cache file is recomputed, never an error: the reader returns None for it.
    got = _read_cached(_write(tmp, "logits.safetensors", data), (6, 3))
    assert got is None or tuple(got.shape) == (6, 3)
    return got

