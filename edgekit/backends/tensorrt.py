"""TensorRT backend: ONNX -> engine on this machine's GPU, cached by (ONNX, TensorRT version, GPU, options).

The plan, build, cache and runner live in edgekit/agent/ (trt_plan.py, trt.py), so a Jetson running the deploy agent builds
engines with exactly the same code. This module adapts them to the Backend/Runner contract. Engines are not
portable: to get one for a Jetson, use `edgekit deploy RUN_DIR --target ssh://...`, which builds it there."""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from pydantic import Field

from edgekit.backends.base import Artifact, Backend, Runner
from edgekit.errors import EdgekitError, reading
from edgekit.io import atomic_path, atomic_write_json, ensure_dir, file_sha256
from edgekit.schema import Strict
from edgekit.spec import ModelSpec


class TensorRTRunner(Runner):
    def __init__(self, spec: ModelSpec, engine_path: Path, settings: dict | None = None):
        super().__init__(spec, settings)
        from edgekit.agent.trt import EngineRunner

        self.engine = EngineRunner(str(engine_path))

    def _run(self, feed: dict) -> dict[str, np.ndarray]:
        return self.engine.run(feed)

    def bind(self, feed: dict):
        self.spec.check_feed(feed)
        return self.engine.bind(feed)

    def layer_info(self, feed: dict | None = None) -> dict:
        return self.engine.layer_info(feed)


class BatchRange(Strict):
    min: int = Field(1, ge=1)
    opt: int = Field(1, ge=1)
    max: int = Field(8, ge=1)


class TensorRTOptions(Strict):
    """A recipe target's `options` for TensorRT: the engine build options (edgekit.agent.trt_plan.DEFAULT_OPTIONS)."""
    precision: Optional[Literal["auto", "fp32", "fp16", "int8"]] = None
    workspace_mb: int = Field(1024, ge=1)
    batch: BatchRange = Field(default_factory=BatchRange)
    optimization_level: int = Field(3, ge=0, le=5)
    tf32: bool = True
    fp16_fallback: bool = False
    timing_cache: bool = True
    builder: Literal["python", "trtexec"] = "python"
    cache_dir: Optional[str] = None
    threads: Optional[int] = Field(None, description="ignored: CPU threads mean nothing to a GPU engine")


class TensorRTBackend(Backend):
    name = "tensorrt"
    Options = TensorRTOptions
    install_hint = ("on a Jetson, install JetPack (python3-libnvinfer); on x86 with an NVIDIA GPU, pip install 'edgekit[tensorrt]'; "
                    "for a Jetson from this machine use `edgekit deploy RUN_DIR --target ssh://user@jetson`")

    def available(self) -> tuple[bool, str]:
        from edgekit.agent.predictor import tensorrt_available

        return tensorrt_available()

    def compile(self, onnx_path: Path, spec: ModelSpec, options: dict, out_dir: Path) -> Artifact:
        """Build (or take from the cache) the engine for this ONNX; writes model.engine, layers.json and artifact.json."""
        self.require()
        import tensorrt

        from edgekit.agent import trt, trt_plan
        from edgekit.agent.cudart import CudaRuntime
        from edgekit.agent.predictor import _trtexec, default_engine_cache
        from edgekit.onnxgraph.info import graph_info

        onnx_path, out_dir = Path(onnx_path), Path(out_dir)
        opts = dict(options or {})
        cache_dir = opts.pop("cache_dir", None)
        opts.pop("threads", None)  # CPU threads mean nothing to a GPU engine (the common compile options carry it)
        if opts.get("precision") in ("auto", None):
            opts["precision"] = None  # what the ONNX carries
        unknown = sorted(set(opts) - set(trt_plan.DEFAULT_OPTIONS))
        if unknown:
            raise EdgekitError(f"unknown TensorRT option(s) {unknown}", f"supported: {', '.join(trt_plan.DEFAULT_OPTIONS)}")
        try:
            plan = trt_plan.build_plan(tensorrt.__version__, graph_info(onnx_path), opts, [i.model_dump() for i in spec.inputs])
        except trt_plan.PlanError as e:
            raise EdgekitError(e.message, e.hint) from e
        ensure_dir(out_dir)  # a bad --out fails now, not after a build of minutes
        gpu = CudaRuntime().devices()[0]
        t0 = time.perf_counter()
        try:
            engine, meta = trt.get_or_build(trt.EngineCache(cache_dir or default_engine_cache()), str(onnx_path),
                                            file_sha256(onnx_path), plan, gpu, _trtexec())
        except trt.BuildError as e:
            lines = " | ".join(e.key_lines[-3:]) or "no error lines in the TensorRT log"
            raise EdgekitError(f"TensorRT engine build failed for {onnx_path.name}: {lines}",
                               "try precision fp32 or a larger workspace_mb; run with -v for the full TensorRT log") from e
        dst = out_dir / "model.engine"
        with atomic_path(dst, suffix=".engine") as tmp:  # a full disk must not leave a truncated engine behind
            shutil.copyfile(engine, tmp)
        runner = TensorRTRunner(spec, dst)
        layers = runner.layer_info(spec.example_inputs(plan["batch"]["opt"]))
        atomic_write_json(out_dir / "layers.json", layers)
        art = Artifact(self.name, dst, spec, plan["precision"], options={**opts, "plan": plan},
                       meta={"tensorrt": tensorrt.__version__, "gpu": gpu, "cache_key": meta["key"], "cached": meta["cached"],
                             "build_seconds": meta["build_seconds"], "compile_seconds": round(time.perf_counter() - t0, 3),
                             "size_bytes": dst.stat().st_size, "source_onnx": str(onnx_path.resolve()),
                             "layer_precision_counts": layers["counts"]})
        return art  # saved (artifact.json) by the caller, once it has checked parity

    def load(self, artifact: Artifact, **settings) -> Runner:
        self.require()
        plan = artifact.options.get("plan", {})
        import tensorrt

        if plan.get("tensorrt") and plan["tensorrt"] != tensorrt.__version__:
            raise EdgekitError(f"{artifact.path} was built with TensorRT {plan['tensorrt']}, this machine has {tensorrt.__version__}",
                               "engines are not portable between TensorRT versions: recompile it here")
        with reading(artifact.path, "TensorRT engine", "rebuild it on this machine with `edgekit compile --backend tensorrt`"):
            return TensorRTRunner(artifact.spec, artifact.path, settings)


def read_layers(artifact_dir) -> dict:
    """Per-layer precision saved beside a compiled engine."""
    from edgekit.io import load_json

    return load_json(Path(artifact_dir) / "layers.json", "layer precisions")
