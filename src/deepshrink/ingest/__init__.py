"""Models a user brings, read and checked: an ONNX file (`onnx_file.py`), converted to a PyTorch module
(`onnx_to_torch.py`) or kept as its own graph (`onnx_graph.py`), and state dicts (`state_dict.py`). Every
reader turns a malformed file into one UserError naming it."""
