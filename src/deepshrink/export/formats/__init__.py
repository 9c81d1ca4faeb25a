"""File formats, bytes in and out only: the container codec every compressed file shares (container.py) and
Huffman coding (huffman.py); `.dsparse`, `.dsq`, `.dsz` and `.dsonnx`, each one `encode` / `decode` pair;
and the ONNX writers (onnx_float.py: float; onnx_int8.py: deepshrink's own minimal QDQ writer of sequential
models; onnx_int8_ort.py: any graph through ONNX Runtime's quantizer). Byte layouts: docs/formats.md."""
