"""ONNX Runtime: runs anywhere. compile() optimizes the graph once and saves the optimized model (so load() skips
optimization); CPU execution provider, CUDA when onnxruntime-gpu finds a GPU."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from pydantic import Field

from edgekit.backends.base import Artifact, Backend, Runner, compile_precision, contiguous, cpu_int8_source
from edgekit.errors import EdgekitError, reading
from edgekit.io import atomic_path, ensure_dir
from edgekit.schema import Strict

_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64, "tensor(int32)": np.int32}
LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _providers(ort, requested=None) -> list[str]:
    have = ort.get_available_providers()
    if requested:
        missing = [p for p in requested if p not in have]
        if missing:
            raise EdgekitError(f"ONNX Runtime providers {missing} are not available here (have {have})", "install onnxruntime-gpu for CUDA, or drop the providers option")
        return list(requested)
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if "CUDAExecutionProvider" in have else ["CPUExecutionProvider"]


def _session_options(ort, threads: int, level: str):
    from edgekit.limits import check_threads

    check_threads(threads, "threads")  # a runaway count is refused before ONNX Runtime starts a thread
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1  # one request at a time: parallelism is inside ops
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if level not in LEVELS:
        raise EdgekitError(f"unknown ONNX Runtime optimization level '{level}'", f"choose one of {', '.join(LEVELS)}")
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
    return so


class OnnxRuntimeRunner(Runner):
    def __init__(self, session, spec, settings):
        super().__init__(spec, settings)
        self.session = session
        self._outputs = [o.name for o in session.get_outputs()]
        self._device = "cuda" if settings["providers"][0] == "CUDAExecutionProvider" else "cpu"

    def _run(self, feed):
        res = self.session.run(self._outputs, contiguous(feed))
        return dict(zip(self._outputs, res))

    def bind(self, feed):
        """I/O binding: inputs placed once (on the GPU for CUDA), outputs pre-allocated, so a timed call is the model only."""
        import onnxruntime as ort

        io = self.session.io_binding()
        keep = []  # OrtValues must outlive the binding
        for name, arr in self._bind_feed(feed).items():
            keep.append(ort.OrtValue.ortvalue_from_numpy(arr, self._device, 0))
            io.bind_ortvalue_input(name, keep[-1])
        batch = len(next(iter(feed.values())))
        types = {o.name: _NUMPY.get(o.type) for o in self.session.get_outputs()}
        for out in self.spec.outputs:
            shape = [batch if d is None else d for d in out.shape]
            if types.get(out.name) is None:  # an unusual type: let ORT allocate it
                io.bind_output(out.name, self._device)
                continue
            keep.append(ort.OrtValue.ortvalue_from_shape_and_type(shape, types[out.name], self._device, 0))
            io.bind_ortvalue_output(out.name, keep[-1])
        run_options = ort.RunOptions()

        def call():
            self.session.run_with_iobinding(io, run_options)
        call.keep = keep
        return call


class OnnxRuntimeOptions(Strict):
    """A recipe target's `options` for ONNX Runtime (what compile() reads)."""
    threads: Optional[int] = Field(None, ge=1, description="intra-op threads (default: usable cores)")
    optimization: Literal["disabled", "basic", "extended", "all"] = "all"
    providers: Optional[list[str]] = Field(None, description="execution providers (default: CUDA if present, else CPU)")
    precision: Literal["auto", "fp32", "fp16", "int8"] = "auto"
    qdq_rewrite: bool = True


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    install_hint = "pip install onnxruntime (or onnxruntime-gpu for CUDA)"
    Options = OnnxRuntimeOptions

    def available(self):
        return self.importable("onnxruntime", lambda ort: f"onnxruntime {ort.__version__}, providers {', '.join(ort.get_available_providers())}")

    def compile(self, onnx_path, spec, options, out_dir):
        """Options: threads (default: usable cores), optimization (disabled|basic|extended|all, default all),
        providers (default CUDA if present, else CPU), precision (auto|fp32|fp16|int8: fp16 converts the ONNX first),
        qdq_rewrite (default true: an INT8 graph's activations become uint8 and BatchNorms are folded first, see
        edgekit.onnxgraph.qdq.prepare_int8_for_cpu; false compiles the Q/DQ graph as it is)."""
        import onnxruntime as ort

        self.require()
        onnx_path, out = Path(onnx_path), Path(out_dir)
        ensure_dir(out)
        carried, have = compile_precision(onnx_path, options, "converted from")
        if have != carried:  # fp16 from an fp32 graph: ORT runs what the file says, so the file becomes FP16
            from edgekit.onnxgraph.fp16 import to_fp16_onnx

            to_fp16_onnx(onnx_path, out / "source.fp16.onnx")
            onnx_path = out / "source.fp16.onnx"
        rewrite = None
        if have == "int8" and options.get("qdq_rewrite", True):
            # uint8 activations and folded BatchNorms: what ORT's QDQ fusions need on x86
            onnx_path, rewrite = cpu_int8_source(onnx_path, out)
        opts = {"threads": int(options.get("threads") or default_threads()), "optimization": options.get("optimization", "all"),
                "providers": _providers(ort, options.get("providers")), "qdq_rewrite": rewrite is not None}
        path = out / "model.onnx"
        t0 = time.perf_counter()
        so = _session_options(ort, opts["threads"], opts["optimization"])
        # a damaged or foreign graph is the user's file, not a bug; a failed write is atomic_path's (disk full)
        with reading(onnx_path, "ONNX model"), atomic_path(path, suffix=".onnx") as tmp:
            so.optimized_model_filepath = str(tmp)
            so.log_severity_level = 3  # ORT warns that an "all"-level file is hardware specific: recorded in meta["note"]
            ort.InferenceSession(str(onnx_path), so, providers=opts["providers"])
        art = Artifact(backend=self.name, path=path, spec=spec, precision=have, options=opts,
                       meta={"source": str(onnx_path), "qdq_rewrite": rewrite, "compile_seconds": round(time.perf_counter() - t0, 3),
                             "size_bytes": path.stat().st_size, "onnxruntime": ort.__version__,
                             "note": "optimized for this machine's providers/ISA; recompile elsewhere"})
        return art  # saved (artifact.json) by the caller, once it has checked parity

    def load(self, artifact, threads: int | None = None, providers=None, profile_prefix: str | None = None):
        """profile_prefix turns on ONNX Runtime's profiler, writing <prefix>_<time>.json when
        runner.session.end_profiling() is called (see edgekit.profile)."""
        import onnxruntime as ort

        self.require()
        if not artifact.path.exists():
            raise EdgekitError(f"artifact file {artifact.path} is missing", "recompile with `edgekit compile`")
        threads = int(threads or artifact.options.get("threads") or default_threads())
        providers = _providers(ort, providers or artifact.options.get("providers"))
        # the file is already optimized at the compile level: optimizing again only slows loading
        so = _session_options(ort, threads, "disabled")
        if profile_prefix:
            so.enable_profiling = True
            so.profile_file_prefix = str(profile_prefix)
        with reading(artifact.path, "compiled model", "recompile it with `edgekit compile`"):
            sess = ort.InferenceSession(str(artifact.path), so, providers=providers)
        return OnnxRuntimeRunner(sess, artifact.spec, {"backend": self.name, "threads": threads, "providers": sess.get_providers(),
                                                       "graph_optimization": f"{artifact.options.get('optimization')} (at compile)",
                                                       "inter_op_threads": 1, "execution_mode": "sequential",
                                                       "onnxruntime": ort.__version__})

