"""Backends: ONNX Runtime, OpenVINO, TensorRT (each imported lazily)."""
