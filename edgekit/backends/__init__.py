"""Backends: ONNX Runtime, OpenVINO, TensorRT (each imported lazily)."""
from __future__ import annotations

from pathlib import Path


def compile_onnx(onnx_path, backend, out_dir, options: dict | None = None, spec=None, min_top1: float | dict | None = None,
                 max_samples: int = 256):
    """ONNX -> a backend artifact, then a parity check of the compiled artifact against the torch model (the
    samples saved at export; ONNX Runtime on random inputs if there are none). The parity numbers are saved
    in artifact.json; a failure raises EdgekitError with them. This is the entry point for every compile."""
    from edgekit.backends.base import get_backend
    from edgekit.errors import EdgekitError
    from edgekit.guard import refuse_overwrite
    from edgekit.onnxgraph.info import spec_for_onnx
    from edgekit.parity import check_parity, compiled_parity, load_parity_samples, threshold

    b = get_backend(backend) if isinstance(backend, str) else backend
    b.require()
    onnx_path = Path(onnx_path)
    refuse_overwrite([out_dir], [onnx_path], "the artifact folder")  # compile writes model.onnx, source.*.onnx, ... there
    if spec is None:
        spec = spec_for_onnx(onnx_path)  # which also confines its external data to its folder
    else:
        from edgekit.limits import check_external_data

        check_external_data(onnx_path)
    saved = load_parity_samples(onnx_path)  # a broken samples file is refused before anything is written
    # artifact.json vouches for the folder, so it goes first and comes back last, after the parity check: an
    # interrupted compile never leaves an artifact (or an old record beside new files) that looks finished
    if (Path(out_dir) / "artifact.json").is_file():  # (is_file: an --out below a file is compile's own one-line error)
        (Path(out_dir) / "artifact.json").unlink()
    art = b.compile(onnx_path, spec, dict(options or {}), Path(out_dir))
    art.meta["parity"] = compiled_parity(b.load(art), onnx_path, spec, max_samples, saved)
    try:
        check_parity(art.meta["parity"], threshold(art.precision, min_top1), f"the {b.name}-compiled graph of {onnx_path.name}", art.precision)
    except EdgekitError:
        art.save()
        raise
    art.save()
    return art
