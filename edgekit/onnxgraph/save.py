"""Writing a graph: checked with the full ONNX checker first, saved atomically, carrying its ModelSpec."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from edgekit.io import atomic_path
from edgekit.onnxgraph.edit import prune_initializers
from edgekit.onnxgraph.info import SPEC_KEY, graph_summary
from edgekit.spec import ModelSpec


def check_and_save(proto, path, invalid: Callable[[str], Exception]) -> None:
    """Run the full checker, then save `proto` to `path` atomically. An invalid graph raises invalid(the checker's
    first line): the caller knows whose fault that is (the user's model, or an edgekit rewrite)."""
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise invalid(str(e).splitlines()[0][:300]) from e
    with atomic_path(Path(path), suffix=".onnx") as tmp:
        onnx.save(proto, str(tmp))


def save_with_spec(proto, spec: ModelSpec, path, invalid: Callable[[str], Exception]) -> dict:
    """Drop unused initializers, attach the spec (so the file describes itself), check and save; returns the
    facts the report needs (path, size, node/op counts, Q/DQ, precision)."""
    import onnx

    path = Path(path)
    prune_initializers(proto.graph)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {SPEC_KEY: spec.model_dump_json()})
    proto.producer_name = "edgekit"
    check_and_save(proto, path, invalid)
    return {"path": str(path), "size_bytes": path.stat().st_size, **graph_summary(proto)}
