"""Run a deploy bundle in your application: `load(bundle_dir)` -> a Predictor with the preprocessing applied.

Depends only on numpy and the chosen runtime (TensorRT or ONNX Runtime): the implementation lives in
edgekit/agent/predictor.py, which the bundle also carries, so on a device without edgekit

    import sys; sys.path.insert(0, "path/to/bundle")
    from edgekit_agent.predictor import load

gives the same predictor."""
from __future__ import annotations

from edgekit.agent.predictor import Predictor, make_feed, read_manifest  # noqa: F401


def load(bundle_dir, variant: str | None = None, runtime: str = "auto", **runner_options) -> Predictor:
    """The predictor for one variant of a bundle (default: the recommended, else the first).

    runtime: "auto" (TensorRT when importable with a GPU, else ONNX Runtime), "tensorrt" or "onnxruntime".
    TensorRT uses the bundle's engines/<variant>.engine when present, else builds one into the engine cache."""
    from pathlib import Path

    from edgekit.agent import predictor
    from edgekit.errors import EdgekitError

    bundle_dir = Path(bundle_dir)
    try:
        return predictor.load(str(bundle_dir), variant, runtime, **runner_options)
    except FileNotFoundError as e:
        raise EdgekitError(str(e), "pass the bundle folder written by `edgekit deploy` (RUN_DIR/bundle)") from e
    except KeyError as e:
        raise EdgekitError(str(e.args[0]), "pass one of the bundle's variant names, or none for the default") from e
    except ImportError as e:
        raise EdgekitError(f"runtime '{runtime}' is not installed here ({e})",
                           "pip install onnxruntime, or on a Jetson use JetPack's TensorRT; runtime='auto' picks what exists") from e
    except ValueError as e:
        raise EdgekitError(str(e), "use runtime='auto', 'tensorrt' or 'onnxruntime'") from e
