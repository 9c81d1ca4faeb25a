"""Checkpoints reload without pickle, and a manifest that disagrees with its tensors is refused."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from deepshrink.checkpoint import Manifest, load_checkpoint, paths_for, save_checkpoint
from deepshrink.errors import UserError
from deepshrink.models import create_model


def _manifest() -> Manifest:
    return Manifest(model="lenet-5", dataset="mnist", input_shape=[1, 28, 28], num_classes=10, mean=[0.1],
                    std=[0.3])


def test_roundtrip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = create_model("lenet-5", "mnist")
    path = save_checkpoint(m, _manifest(), tmp_path / "ck")
    loaded, man = load_checkpoint(path)
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(loaded(x), m.eval()(x))
    assert man.shapes["fc1.weight"] == [120, 256]


def test_structurally_smaller_model_reloads(tmp_path: Path) -> None:
    m = create_model("lenet-300-100", "mnist")
    m.fc1 = torch.nn.Linear(784, 60)
    m.fc2 = torch.nn.Linear(60, 20)
    m.fc3 = torch.nn.Linear(20, 10)
    man = Manifest(model="lenet-300-100", dataset="mnist", input_shape=[1, 28, 28], num_classes=10, mean=[0.0],
                   std=[1.0])
    loaded, _ = load_checkpoint(save_checkpoint(m, man, tmp_path / "small"))
    assert loaded.fc1.weight.shape == (60, 784)


def test_manifest_tensor_mismatch(tmp_path: Path) -> None:
    path = save_checkpoint(create_model("lenet-5", "mnist"), _manifest(), tmp_path / "ck")
    save_file({"fc1.weight": torch.zeros(3, 3)}, str(path))
    with pytest.raises(UserError, match="tensors do not match manifest"):
        load_checkpoint(path)


@pytest.mark.parametrize("content, message", [
    (b"{not json", "not a valid JSON manifest"),
    (json.dumps({"format": "other"}).encode(), "not a deepshrink checkpoint manifest"),
])
def test_bad_manifest(tmp_path: Path, content: bytes, message: str) -> None:
    path = save_checkpoint(create_model("lenet-5", "mnist"), _manifest(), tmp_path / "ck")
    paths_for(path)[1].write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_checkpoint(path)


def test_corrupt_weights(tmp_path: Path) -> None:
    path = save_checkpoint(create_model("lenet-5", "mnist"), _manifest(), tmp_path / "ck")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserError, match="not a readable safetensors file"):
        load_checkpoint(path)


def test_a_checkpoint_of_the_release_before_the_restructuring_still_loads(tmp_path: Path) -> None:
    """Its manifest names the ONNX converter as `deepshrink.export.onnx_torch:from_onnx` (models.MOVED)."""
    import shutil

    import numpy as np
    import onnxruntime as ort

    folder = tmp_path / "old"
    shutil.copytree(Path(__file__).parent / "fixtures" / "release-e202e4c", folder)
    meta = json.loads((folder / "model.json").read_text())
    assert meta["model"] == "deepshrink.export.onnx_torch:from_onnx"
    meta["model_args"]["path"] = str(folder / "tiny.onnx")  # written as an absolute path where it was made
    (folder / "model.json").write_text(json.dumps(meta))
    model, manifest = load_checkpoint(folder / "model.safetensors")
    x = np.random.RandomState(1).rand(5, 1, 4, 4).astype(np.float32)
    sess = ort.InferenceSession(str(folder / "tiny.onnx"), providers=["CPUExecutionProvider"])
    want = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    assert manifest.num_classes == 3 and np.allclose(got, want, atol=1e-5)
