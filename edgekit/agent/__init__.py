"""The device side of edgekit: what runs on a Jetson (or any SSH target) from a deploy bundle.

Everything in this package needs only the Python standard library (3.10+) and numpy, plus the device's
runtime (TensorRT bindings or ONNX Runtime), imported where used. It never imports the rest of edgekit:
`edgekit deploy` copies this folder verbatim into the bundle as the package `edgekit_agent` and runs it with
`python3 -m edgekit_agent`. measure.py, the measurement core (latency protocol, parity, classification metrics),
lives here for that reason: the host's bench/evaluate/parity code imports the same file the device runs."""

PROTOCOL = 1  # bumped when the manifest or the agent's JSON-lines events change incompatibly
