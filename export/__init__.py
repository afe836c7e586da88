"""Training and ONNX export of the digit model (needs the `train` extra: torch, onnx)."""
