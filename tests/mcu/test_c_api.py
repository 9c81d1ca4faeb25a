"""The generated C as an embedded engineer reads and links it (CMSIS-NN style): strict C99 with designated
initializers, no token pasting, every layer, array and buffer named; `--prefix` names every exported symbol
and macro, so two models link into one program and compute what one alone computes; the caller may own the
arena."""

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from deepshrink.errors import UserError
from deepshrink.mcu import McuOptions, toolchain
from deepshrink.mcu.emit import emit
from deepshrink.mcu.graph import read_graph
from deepshrink.mcu.lower import lower
from deepshrink.mcu.measure import HostLibrary, ort_quantize
from deepshrink.mcu.names import Namer, c_identifier
from deepshrink.mcu.run import Built, generate

from conftest import cli_error, real_data_dir, requires_real_data, write_mnist_folder
from mcu_helpers import Head, features, int8_lenet, qdq_model, write
from mcu_helpers import generate as generate_test_model

STRICT = ("-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Werror")
EXPORTED = ("infer", "infer_arena", "infer_pixels")


@pytest.fixture(scope="module")
def synthetic_lenet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a LeNet-5 trained one epoch on synthetic MNIST and quantized, the data folder)."""
    root = tmp_path_factory.mktemp("c-api")
    write_mnist_folder(root / "data" / "mnist")
    return int8_lenet(root, root / "data"), root / "data"


def _struct_bodies(body: str) -> dict[str, str]:
    """Each `static const ds_*_t NAME = { ... };` of model.c: name -> initializer text."""
    return dict(re.findall(r"^static const ds_\w+_t (\w+) = \{(.*?)^\};", body, re.M | re.S))


def _top_level_items(init: str) -> list[str]:
    """An initializer's items at its outermost level (nested braces kept whole)."""
    items, depth, cur = [], 0, ""
    for ch in init:
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            items.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return [i for i in [*items, cur.strip()] if i]


@pytest.mark.parametrize("cc", ["gcc", "clang"])
def test_lenet5_c_is_strict_c99_without_token_pasting_and_with_designated_initializers(
        synthetic_lenet: tuple[Path, Path], tmp_path: Path, cc: str) -> None:
    if shutil.which(cc) is None:
        pytest.fail(f"{cc} not found (make setup installs it)")
    artifact, data = synthetic_lenet
    generate(artifact, tmp_path, None, data)
    body, header = (tmp_path / "model.c").read_text(), (tmp_path / "model.h").read_text()
    proc = subprocess.run([cc, *STRICT, "-O2", "-c", str(tmp_path / "model.c"), "-o", str(tmp_path / "m.o")],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    assert "##" not in body and "##" not in header
    assert not re.search(r"^\s*#\s*define\s+\w+\(", body, re.M), "a function-like macro in model.c"
    structs = _struct_bodies(body)
    assert {"conv1", "conv2", "fc1", "fc2", "fc3"} <= set(structs), sorted(structs)
    for name, init in structs.items():
        for item in _top_level_items(init):
            assert re.match(r"\.\w+ = ", item), f"{name}: positional initializer {item!r}"
    for name in ("conv1_weights", "conv1_bias", "conv1_mult", "fc3_weights", "conv1_out", "CONV1_OUT_OFFSET"):
        assert re.search(rf"\b{name}\b", body), name
    assert "DS_AT" not in body
    comments = body.replace("\n * ", " ")  # a layer's comment wraps where it is long
    assert re.search(r"^/\* conv1: 6x1x5x5 int8 weights \(per-channel scales\), max pool 2x2 fused; out int8 "
                     r"12x12x6 HWC, scale [\d.]+, zp -?\d+ \*/$", comments, re.M)


def _file_scope_definitions(body: str) -> list[str]:
    """The names model.c defines at file scope without `static` (functions and objects; not a prototype)."""
    out = []
    for line in body.splitlines():
        if line.endswith(");"):
            continue
        if m := re.match(r"^(?!static|typedef|extern|#|/\*| \*|\s|\}|\{|$)[\w\s\*]*?\b(\w+)\s*[\(\[=;]", line):
            out.append(m.group(1))
    return out


def _two_models(artifact: Path, data: Path, folder: Path, prefixes: tuple[str, str]) -> tuple[Built, Built]:
    a = generate(artifact, folder / "a", None, data, prefix=prefixes[0])
    return a, generate(artifact, folder / "b", None, data, a.data, prefixes[1])


DRIVER = """#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "a/model.h"
#include "b/model.h"

/* The caller's arena for net_b_infer_arena, aligned as NET_B_ARENA_ALIGN asks. */
static int32_t arena[(NET_B_ARENA_BYTES + 3) / 4 + 1];

/* argv: images (raw pixels), the same quantized, count, output: per image four logit vectors (net_a and
 * net_b from pixels, net_a_infer and net_b_infer_arena from the quantized input), then net_a's class. */
int main(int argc, char **argv)
{
    static uint8_t pixels[NET_A_INPUT_SIZE];
    static int8_t q[NET_A_INPUT_SIZE], out[4][NET_A_NUM_CLASSES];
    FILE *fp, *fq, *fo;
    int n, i, cls;
    if (argc != 5 || NET_A_INPUT_SIZE != NET_B_INPUT_SIZE || NET_A_NUM_CLASSES != NET_B_NUM_CLASSES) {
        return 2;
    }
    fp = fopen(argv[1], "rb");
    fq = fopen(argv[2], "rb");
    fo = fopen(argv[4], "wb");
    n = atoi(argv[3]);
    for (i = 0; i < n; i++) {
        if (fread(pixels, 1, sizeof pixels, fp) != sizeof pixels || fread(q, 1, sizeof q, fq) != sizeof q) {
            return 3;
        }
        cls = net_a_infer_pixels(pixels, out[0]);
        if (net_b_infer_pixels(pixels, out[1]) != cls || net_a_infer(q, out[2]) != cls ||
            net_b_infer_arena(arena, q, out[3]) != cls || net_b_infer_arena(0, q, out[3]) != -1) {
            return 4;
        }
        net_b_infer_arena(arena, q, out[3]);
        fwrite(out, 1, sizeof out, fo);
        fputc(cls, fo);
    }
    fclose(fp);
    fclose(fq);
    fclose(fo);
    return 0;
}
"""


def _link_and_run(a: Built, folder: Path, pixels: np.ndarray) -> np.ndarray:
    """Both models and the driver as one program, run on `pixels`: (n, 4, classes) logits."""
    (folder / "main.c").write_text(DRIVER)
    exe = folder / "both"
    proc = subprocess.run([toolchain.host_compiler(), *STRICT, "-O2", "-I", str(folder), "-o", str(exe),
                           str(folder / "a" / "model.c"), str(folder / "b" / "model.c"), str(folder / "main.c"), "-lm"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    xq = ort_quantize(a.graph, a.data.splits.test_x[: len(pixels)].numpy())  # the images `pixels` holds
    (folder / "pixels.bin").write_bytes(np.ascontiguousarray(pixels).tobytes())
    (folder / "q.bin").write_bytes(np.ascontiguousarray(xq).tobytes())
    run = subprocess.run([str(exe), str(folder / "pixels.bin"), str(folder / "q.bin"), str(len(pixels)),
                          str(folder / "out.bin")], capture_output=True)
    assert run.returncode == 0, run.returncode
    classes = a.graph.tensors[a.graph.output].size
    raw = np.frombuffer((folder / "out.bin").read_bytes(), np.int8).reshape(len(pixels), 4 * classes + 1)
    return raw[:, :-1].reshape(len(pixels), 4, classes)


def _check_two_prefixes(artifact: Path, data: Path, folder: Path, n: int) -> None:
    a, _ = _two_models(artifact, data, folder, ("net_a", "net_b"))
    for side, p in (("a", "net_a"), ("b", "net_b")):
        body = (folder / side / "model.c").read_text()
        header = (folder / side / "model.h").read_text()
        assert set(_file_scope_definitions(body)) == {f"{p}_{e}" for e in EXPORTED}, _file_scope_definitions(body)
        macros = re.findall(r"^#\s*(?:define|ifndef)\s+(\w+)", header, re.M)
        assert macros and all(m.startswith(p.upper() + "_") for m in macros), macros
    pixels = a.data.pixels[:n]
    out = _link_and_run(a, folder, pixels)
    assert np.array_equal(out[:, 0], out[:, 1]) and np.array_equal(out[:, 2], out[:, 3])
    assert np.array_equal(out[:, 0], out[:, 2])  # the pixel table is the model's own input quantization
    lib_path, _ = toolchain.build_host(folder / "a", folder / "a", "net_a")
    alone = HostLibrary(lib_path, out.shape[2], a.graph.input.size)
    assert np.array_equal(alone.pixels(pixels)[0], out[:, 0]) and np.array_equal(alone.arena(
        ort_quantize(a.graph, a.data.splits.test_x[:n].numpy()))[0], out[:, 0])


def test_two_prefixes_link_into_one_program_and_agree(synthetic_lenet: tuple[Path, Path], tmp_path: Path) -> None:
    artifact, data = synthetic_lenet
    _check_two_prefixes(artifact, data, tmp_path, 100)


@requires_real_data
def test_two_prefixes_agree_on_1000_mnist_test_images(tmp_path: Path) -> None:
    """A LeNet-5 trained one epoch on the real MNIST, generated twice (net_a, net_b) and linked into one
    program: both compute the same logits on 1,000 test images, as the model alone does."""
    data = real_data_dir()
    assert data is not None
    artifact = int8_lenet(tmp_path / "train", data)
    _check_two_prefixes(artifact, data, tmp_path / "c", 1000)


def test_one_prefix_twice_does_not_link(synthetic_lenet: tuple[Path, Path], tmp_path: Path) -> None:
    """Without distinct prefixes the exported symbols collide: why --prefix exists."""
    artifact, data = synthetic_lenet
    _two_models(artifact, data, tmp_path, ("ds", "ds"))
    objects = []
    for side in ("a", "b"):
        obj = tmp_path / f"{side}.o"
        subprocess.run([toolchain.host_compiler(), "-std=c99", "-c", str(tmp_path / side / "model.c"), "-o",
                        str(obj)], check=True)
        objects.append(str(obj))
    (tmp_path / "main.c").write_text("int main(void)\n{\n    return 0;\n}\n")
    proc = subprocess.run([toolchain.host_compiler(), *objects, str(tmp_path / "main.c"), "-o", str(tmp_path / "x")],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "ds_infer" in proc.stderr


@pytest.mark.parametrize("bad", ["Net", "1net", "net-a", "", "net a", "ds.x"])
def test_prefix_must_be_a_lowercase_c_identifier(bad: str) -> None:
    with pytest.raises(UserError, match="--prefix"):
        McuOptions(prefix=bad)
    assert McuOptions(prefix="net_a2").prefix == "net_a2"


def test_cli_refuses_a_bad_prefix_in_one_line(synthetic_lenet: tuple[Path, Path], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    artifact, _ = synthetic_lenet
    assert "--prefix" in cli_error(monkeypatch, capsys, "mcu", str(artifact), "--prefix", "9lives", "--out",
                                   str(tmp_path / "out"))
    assert not (tmp_path / "out" / "model.c").exists()


def test_emit_refuses_a_buffer_the_planner_did_not_place() -> None:
    model, _ = qdq_model(Head(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), 2 * 4 * 4), (1, 6, 6))
    prog = lower(read_graph(model, "t.onnx"))  # no arena.plan: every offset is still -1
    with pytest.raises(RuntimeError, match="not placed"):
        emit(prog, 1024, np.zeros((1, 256), np.int8), "t")


def test_layers_are_named_by_kind_and_ordinal_or_by_their_graph_names() -> None:
    body = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 1, 1), nn.Conv2d(4, 4, 1),
                         nn.ReLU(), nn.AvgPool2d(2, 1), nn.Conv2d(4, 4, 1), nn.AdaptiveAvgPool2d(1))
    torch.manual_seed(0)
    model, _ = qdq_model(Head(body, features(body, (2, 6, 6))), (2, 6, 6))
    c = generate_test_model(model, channels=2).sources.body
    for name in ("conv1", "pool1", "conv2", "avgpool1", "conv3", "gavgpool1", "fc1"):
        assert re.search(rf"^static const ds_\w+_t {name} = \{{", c, re.M), name
    assert "pool1_out" in c and "gavgpool1_acc" in c and "conv1_col" in c
    named = onnx.ModelProto()
    named.CopyFrom(model)
    convs = iter(["/features/Conv-1", "/features/Conv_1", "/3/Conv"])
    for node in named.graph.node:
        node.name = next(convs) if node.op_type == "Conv" else "classifier.fc" if node.op_type == "Gemm" else ""
    c = generate_test_model(named, channels=2).sources.body
    for name in ("features_conv_1", "features_conv_1_2", "node_3_conv", "pool1"):  # the second made unique
        assert re.search(rf"^static const ds_\w+_t {name} = \{{", c, re.M), name
    assert "classifier_fc_weights" in c


def test_graph_names_become_unique_c_identifiers() -> None:
    assert c_identifier("/features/0/Conv") == "features_0_conv"
    assert c_identifier("/0/Conv") == "node_0_conv" and c_identifier("ds_conv") == "node_ds_conv"
    assert c_identifier("///") == ""
    names = Namer()
    assert names.layer("conv", "") == "conv1" and names.layer("maxpool", "") == "pool1"
    assert names.layer("conv", "int") == "int_2"  # a C keyword is never a name
    assert names.layer("conv", "conv1") == "conv1_2" and names.unique("input") == "input_2"


def test_harness_and_emulator_run_a_model_under_any_prefix(tmp_path: Path) -> None:
    """The host harness, the firmware's main and the emulator call the model by its prefix."""
    if toolchain.cross_compiler() is None:
        pytest.fail(f"{toolchain.CROSS} not found: {toolchain.INSTALL_HINT}")
    from deepshrink.mcu.emulate import Firmware

    model, x = qdq_model(Head(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2)), 4 * 5 * 5), (1, 12, 12))
    gen = generate_test_model(model, prefix="net_b")
    write(gen, tmp_path)
    assert "int net_b_infer_arena(void *arena" in gen.sources.header and "ds_infer" not in gen.sources.body
    lib_path, _ = toolchain.build_host(tmp_path, tmp_path, "net_b")
    xq = ort_quantize(gen.graph, x[:3])
    lib = HostLibrary(lib_path, 5, gen.graph.input.size)
    expected = lib.quantized(xq)[0]
    assert np.array_equal(lib.arena(xq)[0], expected)
    elf, warnings = toolchain.build_target(tmp_path, tmp_path / "fw", "cortex-m4", "net_b")
    assert "warning" not in warnings, warnings
    fw = Firmware.load(elf, "net_b")
    assert fw.entry == "net_b_infer" and all(np.array_equal(fw.infer(xq[i], 5)[0], expected[i]) for i in range(3))
