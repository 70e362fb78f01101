"""ONNX graph work below the exporter and the backends: what a graph is (`info`: its precision, its ModelSpec),
saving it checked (`save`), and the rewrites — Q/DQ for TensorRT and for CPUs (`qdq`), FP16 (`fp16`).
Nothing here imports torch; onnx is imported where it is used."""
