"""Reading an ONNX file a user (or an earlier run) hands us: parsed, checked, optionally loaded by ONNX
Runtime, with any malformation turned into one UserError naming the file."""

import onnx

from deepshrink.errors import UserError, malformed

MAX_BYTES = 2 << 30  # protobuf's own limit: larger models keep their weights as external data


def read_onnx(data: bytes, source: str, session: bool = False) -> onnx.ModelProto:
    """The model `data` holds, checked by the ONNX checker; with `session`, ONNX Runtime must also load it
    (its graph checks go further than the checker's)."""
    if len(data) >= MAX_BYTES:
        raise UserError(f"{source}: {len(data)} bytes, over protobuf's 2 GB limit for one ONNX file")
    try:
        model = onnx.load_from_string(data)
        onnx.checker.check_model(model)
    except Exception as e:  # protobuf's DecodeError, the checker's ValidationError, ...
        raise UserError(f"{source}: not a readable ONNX model ({type(e).__name__})") from None
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1 or not inputs[0].type.HasField("tensor_type"):
        raise UserError(f"{source}: expected an ONNX classifier with one tensor input, found {len(inputs)} inputs")
    if len(model.graph.output) < 1:
        raise UserError(f"{source}: the ONNX graph has no output")
    if session:
        with malformed(source, "ONNX model (ONNX Runtime refused it)"):
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.log_severity_level = 4  # the refusal is reported once, as our UserError
            ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    return model


def fixed_batch(model: onnx.ModelProto) -> tuple[str, int] | None:
    """(input name, batch size) when the input was exported with a fixed batch (torch.onnx.export's default
    without dynamic_axes), or None when its batch axis is dynamic."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    dims = inputs[0].type.tensor_type.shape.dim if inputs else []
    return (inputs[0].name, int(dims[0].dim_value)) if dims and dims[0].HasField("dim_value") else None
