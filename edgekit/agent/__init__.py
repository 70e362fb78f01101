"""The device side of edgekit: what runs on a Jetson (or any SSH target) from a deploy bundle.

Everything in this package needs only the Python standard library (3.10+) and numpy, plus the device's
runtime (TensorRT bindings or ONNX Runtime), imported where used. It never imports the rest of edgekit:
`edgekit deploy` copies this folder verbatim into the bundle as the package `edgekit_agent`, next to a
copy of edgekit/latency.py, and runs it with `python3 -m edgekit_agent`."""

PROTOCOL = 1  # bumped when the manifest or the agent's JSON-lines events change incompatibly
