"""Backends: ONNX Runtime, OpenVINO, TensorRT (each imported lazily)."""
from __future__ import annotations

from pathlib import Path


def compile_onnx(onnx_path, backend, out_dir, options: dict | None = None, spec=None, min_top1: float | None = None,
                 max_samples: int = 256):
    """ONNX -> a backend artifact, then a parity check of the compiled artifact against the torch model (the
    samples saved at export; ONNX Runtime on random inputs if there are none). The parity numbers are saved
    in artifact.json; a failure raises EdgekitError with them. This is the entry point for every compile."""
    from edgekit.backends.base import get_backend
    from edgekit.errors import EdgekitError
    from edgekit.onnxgraph.info import spec_for_onnx
    from edgekit.parity import MIN_TOP1, check_parity, compiled_parity

    b = get_backend(backend) if isinstance(backend, str) else backend
    b.require()
    onnx_path = Path(onnx_path)
    spec = spec or spec_for_onnx(onnx_path)
    art = b.compile(onnx_path, spec, dict(options or {}), Path(out_dir))
    art.meta["parity"] = compiled_parity(b.load(art), onnx_path, spec, max_samples)
    try:
        check_parity(art.meta["parity"], min_top1 if min_top1 is not None else MIN_TOP1[art.precision], f"{b.name} compile of {onnx_path.name}")
    except EdgekitError:
        art.save()
        raise
    art.save()
    return art
