"""TensorFlow Lite Micro's side of bench_mcu.py, run in the bench's own TensorFlow virtual environment (never
imported by deepshrink): the same FP32 weights (deepshrink's FP32 ONNX export) rebuilt as a Keras model,
converted by TensorFlow's own converter to a full-integer .tflite calibrated on the same images, then run
by the tflite-micro Python interpreter on the same test images.

    python tflm_side.py MODEL.onnx DATA.npz OUT.tflite  -> prints one JSON line; the recording allocator's
    arena report goes to stderr (the caller parses it)

DATA.npz: calib (N, C, H, W float32, normalized), test_x, test_y.
"""

import json
import sys

import numpy as np
import onnx
import tensorflow as tf
from onnx import numpy_helper
from tflite_micro import runtime


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _pad(x: tf.Tensor, pads: list[int]) -> tf.Tensor:
    if not any(pads):
        return x
    t, left, b, r = pads
    return tf.keras.layers.ZeroPadding2D(((t, b), (left, r)))(x)


def _conv(x: tf.Tensor, node: onnx.NodeProto, w: np.ndarray, b: np.ndarray | None) -> tf.Tensor:
    a = _attrs(node)
    x = _pad(x, list(a.get("pads", [0, 0, 0, 0])))
    group, (o, ig, kh, kw) = int(a.get("group", 1)), w.shape
    strides = tuple(a.get("strides", [1, 1]))
    bias = b if b is not None else np.zeros(o, np.float32)
    if group > 1 and ig == 1 and group == o:
        layer = tf.keras.layers.DepthwiseConv2D((kh, kw), strides)
        y = layer(x)
        layer.set_weights([w.transpose(2, 3, 0, 1), bias])
        return y
    if group != 1:
        raise SystemExit(f"grouped convolution (group={group}) is not rebuilt here")
    layer = tf.keras.layers.Conv2D(o, (kh, kw), strides)
    y = layer(x)
    layer.set_weights([w.transpose(2, 3, 1, 0), bias])
    return y


def keras_model(path: str) -> tf.keras.Model:
    """The ONNX graph (Conv, Relu, MaxPool, Add, GlobalAveragePool, Flatten, Gemm) as a Keras model, NHWC."""
    m = onnx.load(path)
    consts = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    inp = next(i for i in m.graph.input if i.name not in consts)
    c, h, w = (d.dim_value for d in inp.type.tensor_type.shape.dim[1:])
    x_in = tf.keras.Input((h, w, c), batch_size=1)  # a fixed batch: Flatten converts to RESHAPE, not SHAPE + PACK
    env = {inp.name: x_in}
    for node in m.graph.node:
        ins = [env.get(i) for i in node.input]
        op = node.op_type
        if op == "Conv":
            y = _conv(ins[0], node, consts[node.input[1]], consts.get(node.input[2]) if len(node.input) > 2 else None)
        elif op == "Relu":
            y = tf.keras.layers.ReLU()(ins[0])
        elif op == "MaxPool":
            a = _attrs(node)
            y = tf.keras.layers.MaxPooling2D(tuple(a["kernel_shape"]), tuple(a.get("strides", [1, 1])))(
                _pad(ins[0], list(a.get("pads", [0, 0, 0, 0]))))
        elif op == "Add":
            y = tf.keras.layers.Add()([ins[0], ins[1]])
        elif op == "GlobalAveragePool":
            y = tf.keras.layers.GlobalAveragePooling2D(keepdims=True)(ins[0])
        elif op in ("Flatten", "Reshape"):
            x = ins[0]
            if len(x.shape) == 4 and x.shape[1] * x.shape[2] > 1:
                x = tf.keras.layers.Permute((3, 1, 2))(x)  # ONNX flattens C x H x W
            y = tf.keras.layers.Flatten()(x)
        elif op == "Gemm":
            wt = consts[node.input[1]]
            wt = wt if _attrs(node).get("transB", 0) else wt.T
            layer = tf.keras.layers.Dense(wt.shape[0])
            y = layer(ins[0])
            layer.set_weights([wt.T, consts[node.input[2]]])
        elif op == "Identity":
            y = ins[0]
        else:
            raise SystemExit(f"operator {op} is not rebuilt here")
        env[node.output[0]] = y
    return tf.keras.Model(x_in, env[m.graph.output[0].name])


def main() -> None:
    onnx_path, data_path, out = sys.argv[1:4]
    data = np.load(data_path)
    calib, test_x, test_y = (data[k] for k in ("calib", "test_x", "test_y"))
    model = keras_model(onnx_path)
    # The caller checks these against ONNX Runtime's FP32 logits: the weights arrived intact.
    np.save(out + ".keras.npy", model.predict(test_x[:256].transpose(0, 2, 3, 1), verbose=0))

    def representative():  # the same calibration images deepshrink's PTQ uses
        for i in range(len(calib)):
            yield [calib[i : i + 1].transpose(0, 2, 3, 1)]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    flat = conv.convert()
    with open(out, "wb") as f:
        f.write(flat)
    interp = runtime.Interpreter.from_bytes(flat, arena_size=4 << 20)
    inp = interp.get_input_details(0)
    scale, zp = inp["quantization_parameters"]["scales"][0], inp["quantization_parameters"]["zero_points"][0]
    correct = 0
    for i in range(len(test_x)):
        q = np.clip(np.round(test_x[i : i + 1].transpose(0, 2, 3, 1) / scale) + zp, -128, 127).astype(np.int8)
        interp.set_input(q, 0)
        interp.invoke()
        correct += int(np.argmax(interp.get_output(0)) == test_y[i])
    interp.print_allocations()  # the recording allocator's report, on stderr
    print(json.dumps({"tflm_accuracy_pct": 100.0 * correct / len(test_x), "tflm_flatbuffer_bytes": len(flat),
                      "tflm_images": len(test_x)}))


if __name__ == "__main__":
    main()
