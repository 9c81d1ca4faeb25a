"""Models a user brings, read and checked: an ONNX file (`onnx_file.py`), converted to a PyTorch module
(`onnx_to_torch.py`) or kept as its own graph (`onnx_graph.py`), state dicts (`state_dict.py`), and a TFLite
flatbuffer (`tflite_file.py`; `tflite_write.py` writes one back, for tests). Every reader turns a malformed
file into one UserError naming it."""
