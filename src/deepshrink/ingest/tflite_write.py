"""Writing a TfModel as a .tflite flatbuffer: small models for tests and the fuzzer's seeds without
TensorFlow, and the reader's round trip (read_tflite(write_tflite(m)) equals m). Options are written for the
operators SPEC §12.1 names (the reader keeps no options type, so the table each op takes is listed here)."""

import flatbuffers
import numpy as np
import tflite

from deepshrink.ingest.tflite_file import IDENTIFIER, SCHEMA_VERSION, TfModel, TfOperator, TfTensor, option_getters

OPTIONS = {
    "CONV_2D": "Conv2DOptions", "DEPTHWISE_CONV_2D": "DepthwiseConv2DOptions",
    "FULLY_CONNECTED": "FullyConnectedOptions", "ADD": "AddOptions", "AVERAGE_POOL_2D": "Pool2DOptions",
    "MAX_POOL_2D": "Pool2DOptions", "RESHAPE": "ReshapeOptions", "SOFTMAX": "SoftmaxOptions",
    # Operators the converters refuse, written with their options so tests see the refusal name them.
    "MUL": "MulOptions", "CONCATENATION": "ConcatenationOptions",
}
_ENUMS = {"padding": tflite.Padding, "fused_activation_function": tflite.ActivationFunctionType,
          "weights_format": tflite.FullyConnectedOptionsWeightsFormat, "quantized_bias_type": tflite.TensorType}
_TYPES = {"float32": tflite.TensorType.FLOAT32, "float16": tflite.TensorType.FLOAT16, "int8": tflite.TensorType.INT8,
          "uint8": tflite.TensorType.UINT8, "int16": tflite.TensorType.INT16, "int32": tflite.TensorType.INT32,
          "int64": tflite.TensorType.INT64, "bool": tflite.TensorType.BOOL}


def write_tflite(model: TfModel) -> bytes:
    """The flatbuffer of `model` (one subgraph; buffer 0 the empty one every TFLite file starts with)."""
    b = flatbuffers.Builder(1024)
    buffers = [_buffer(b, None)]
    tensors = [_tensor(b, t, buffers) for t in model.tensors]
    codes = list(dict.fromkeys((op.op, op.version) for op in model.operators))  # first use order
    ops = [_operator(b, op, codes.index((op.op, op.version))) for op in model.operators]
    inputs, outputs = _ints(b, model.inputs), _ints(b, model.outputs)
    tensor_vec, op_vec = _tables(b, tensors), _tables(b, ops)
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tensor_vec)
    tflite.SubGraphAddInputs(b, inputs)
    tflite.SubGraphAddOutputs(b, outputs)
    tflite.SubGraphAddOperators(b, op_vec)
    graph = tflite.SubGraphEnd(b)
    code_vec, graphs, buffer_vec = _tables(b, [_opcode(b, *c) for c in codes]), _tables(b, [graph]), _tables(b, buffers)
    description = b.CreateString(model.description)
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, SCHEMA_VERSION)
    tflite.ModelAddOperatorCodes(b, code_vec)
    tflite.ModelAddSubgraphs(b, graphs)
    tflite.ModelAddDescription(b, description)
    tflite.ModelAddBuffers(b, buffer_vec)
    b.Finish(tflite.ModelEnd(b), file_identifier=IDENTIFIER)
    return bytes(b.Output())


def _ints(b: flatbuffers.Builder, values: tuple[int, ...]) -> int:
    return int(b.CreateNumpyVector(np.asarray(values, dtype=np.int32)))


def _tables(b: flatbuffers.Builder, offsets: list[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return int(b.EndVector())


def _buffer(b: flatbuffers.Builder, data: np.ndarray | None) -> int:
    raw = None if data is None else b.CreateNumpyVector(np.frombuffer(data.astype(data.dtype.newbyteorder("<"))
                                                                       .tobytes(), np.uint8))
    tflite.BufferStart(b)
    if raw is not None:
        tflite.BufferAddData(b, raw)
    return int(tflite.BufferEnd(b))


def _tensor(b: flatbuffers.Builder, t: TfTensor, buffers: list[int]) -> int:
    name, shape = b.CreateString(t.name), _ints(b, t.shape)
    scale = b.CreateNumpyVector(np.asarray(t.scale, np.float32))
    zero_point = b.CreateNumpyVector(np.asarray(t.zero_point, np.int64))
    tflite.QuantizationParametersStart(b)
    tflite.QuantizationParametersAddScale(b, scale)
    tflite.QuantizationParametersAddZeroPoint(b, zero_point)
    tflite.QuantizationParametersAddQuantizedDimension(b, t.quantized_dimension)
    quant = tflite.QuantizationParametersEnd(b)
    buffers.append(_buffer(b, t.data))  # one buffer per tensor, as TFLite's converter writes them
    tflite.TensorStart(b)
    tflite.TensorAddShape(b, shape)
    tflite.TensorAddType(b, _TYPES[t.dtype])
    tflite.TensorAddBuffer(b, len(buffers) - 1)
    tflite.TensorAddName(b, name)
    tflite.TensorAddQuantization(b, quant)
    return int(tflite.TensorEnd(b))


def _opcode(b: flatbuffers.Builder, op: str, version: int) -> int:
    custom = b.CreateString(op.split(":", 1)[1]) if op.startswith("CUSTOM:") else None
    code = getattr(tflite.BuiltinOperator, "CUSTOM" if custom is not None else op)
    tflite.OperatorCodeStart(b)
    tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, tflite.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES))
    tflite.OperatorCodeAddBuiltinCode(b, code)
    tflite.OperatorCodeAddVersion(b, version)
    if custom is not None:
        tflite.OperatorCodeAddCustomCode(b, custom)
    return int(tflite.OperatorCodeEnd(b))


def _operator(b: flatbuffers.Builder, op: TfOperator, code: int) -> int:
    inputs, outputs = _ints(b, op.inputs), _ints(b, op.outputs)
    options = _options(b, op)
    tflite.OperatorStart(b)
    tflite.OperatorAddOpcodeIndex(b, code)
    tflite.OperatorAddInputs(b, inputs)
    tflite.OperatorAddOutputs(b, outputs)
    if options is not None:
        tflite.OperatorAddBuiltinOptionsType(b, getattr(tflite.BuiltinOptions, OPTIONS[op.op]))
        tflite.OperatorAddBuiltinOptions(b, options)
    return int(tflite.OperatorEnd(b))


def _options(b: flatbuffers.Builder, op: TfOperator) -> int | None:
    """The options table, each key written by the generated Add function of the getter the reader names it by."""
    if not op.options:
        return None
    if op.op not in OPTIONS:
        raise ValueError(f"write_tflite writes options for {', '.join(OPTIONS)} only, not {op.op}")
    cls = OPTIONS[op.op]
    getters = {key: getter for getter, key, _ in option_getters(getattr(tflite, cls))}
    values = {getters[k]: getattr(_ENUMS[k], v) if k in _ENUMS else v for k, v in op.options.items()}
    vectors = {g: _ints(b, v) for g, v in values.items() if isinstance(v, tuple)}  # before the table starts
    getattr(tflite, f"{cls}Start")(b)
    for getter, value in values.items():
        getattr(tflite, f"{cls}Add{getter}")(b, vectors.get(getter, value))
    return int(getattr(tflite, f"{cls}End")(b))
