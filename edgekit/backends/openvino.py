"""OpenVINO (CPU first): compile() reads the ONNX (Q/DQ pairs become INT8 FakeQuantize that the CPU plugin runs
as int8) and saves the IR (model.xml/.bin); load() compiles it with the latency hint and a model cache, so the
second load of the same artifact skips compilation."""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from pydantic import Field, field_validator

from edgekit.backends.base import Artifact, Backend, Runner, compile_precision, contiguous, cpu_int8_source
from edgekit.errors import EdgekitError, reading
from edgekit.io import atomic_path, ensure_dir
from edgekit.schema import Strict


class OpenVINORunner(Runner):
    def __init__(self, compiled, spec, settings):
        super().__init__(spec, settings)
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self._outputs = [(o, o.get_any_name()) for o in compiled.outputs]

    def _run(self, feed):
        res = self.request.infer(contiguous(feed))
        return {name: np.array(res[port]) for port, name in self._outputs}  # copies: the request reuses its buffers

    def bind(self, feed):
        """Input tensors set once, sharing the numpy memory, on an infer request of the binding's own: a timed call
        is infer() only, and two bindings (batch 1 and batch 8, timed in turns) never overwrite each other's inputs."""
        import openvino as ov

        keep = self._bind_feed(feed)
        request = self.compiled.create_infer_request()
        for name, arr in keep.items():
            request.set_tensor(name, ov.Tensor(arr, shared_memory=True))

        def call():
            request.infer()
        call.keep, call.request = keep, request
        return call


class OpenVINOOptions(Strict):
    """A recipe target's `options` for OpenVINO (what compile() reads)."""
    device: str = "CPU"
    precision: Literal["auto", "fp32", "fp16", "int8"] = "auto"
    threads: Optional[int] = Field(None, ge=1, description="inference threads (default: all the plugin's)")
    hint: Literal["LATENCY", "THROUGHPUT"] = "LATENCY"
    qdq_rewrite: bool = True

    @field_validator("hint", mode="before")
    @classmethod
    def _upper(cls, v):
        return v.upper() if isinstance(v, str) else v


class OpenVINOBackend(Backend):
    name = "openvino"
    install_hint = "pip install 'edgekit[openvino]'"
    Options = OpenVINOOptions

    def available(self):
        return self.importable("openvino", lambda ov: f"openvino {ov.get_version()}, devices {', '.join(ov.Core().available_devices)}")

    def compile(self, onnx_path, spec, options, out_dir):
        """Options: device (default CPU), precision (auto|fp32|fp16|int8; fp16 = weights stored as fp16 and an f16
        inference hint), threads (default: all the plugin's), hint (LATENCY|THROUGHPUT, default LATENCY), qdq_rewrite
        (default true on CPU: an INT8 graph's activations become uint8 and BatchNorms are folded first, see
        edgekit.onnxgraph.qdq.prepare_int8_for_cpu)."""
        import openvino as ov

        self.require()
        onnx_path, out = Path(onnx_path), Path(out_dir)
        _, have = compile_precision(onnx_path, options, "applied to")  # fp16 from fp32: f16 weights and hint below
        opts = {"device": options.get("device", "CPU"), "hint": options.get("hint", "LATENCY").upper(),
                "threads": int(options["threads"]) if options.get("threads") else None,
                # f32 keeps fp32 numerics even where the plugin would default to bf16; quantized parts still run int8
                "inference_precision": "f16" if have == "fp16" else "f32", "compress_to_fp16": have == "fp16"}
        t0 = time.perf_counter()
        rewrite = None
        if have == "int8" and options.get("qdq_rewrite", True) and opts["device"].upper().startswith("CPU"):
            # uint8 activations (oneDNN's u8s8 kernels) and folded BatchNorms
            onnx_path, rewrite = cpu_int8_source(onnx_path, out)
        opts["qdq_rewrite"] = rewrite is not None
        try:
            # convert_model, not read_model: its offline passes store Q/DQ weights as int8 in the IR
            model = ov.convert_model(str(onnx_path))
        except Exception as e:  # noqa: BLE001 — the ONNX frontend raises several types
            raise EdgekitError(f"OpenVINO cannot read {onnx_path}: {str(e).splitlines()[0][:300]}", "check the opset and ops with `onnx.checker`; re-export with edgekit export") from e
        ensure_dir(out)
        shutil.rmtree(out / "cache", ignore_errors=True)  # blobs of a previous compile would only pile up
        xml = out / "model.xml"
        with atomic_path(out / "model.bin", suffix=".bin") as tmp_bin, atomic_path(xml, suffix=".xml") as tmp_xml:
            ov.save_model(model, str(tmp_xml), compress_to_fp16=opts["compress_to_fp16"])
            # save_model names the .bin after the .xml; if it fails (disk full), atomic_path removes that stray .bin too
            Path(tmp_xml).with_suffix(".bin").replace(tmp_bin)
        art = Artifact(backend=self.name, path=xml, spec=spec, precision=have, options=opts,
                       meta={"source": str(onnx_path), "qdq_rewrite": rewrite, "compile_seconds": round(time.perf_counter() - t0, 3),
                             "size_bytes": xml.stat().st_size + (out / "model.bin").stat().st_size, "openvino": ov.get_version()})
        return art  # saved (artifact.json) by the caller, once it has checked parity

    def load(self, artifact, threads: int | None = None, hint: str | None = None, cache: bool = True, profiling: bool = False):
        """profiling=True turns on the plugin's performance counters (runner.request.get_profiling_info(); see
        edgekit.profile); they cost a little time per infer, so benchmarks leave them off."""
        import openvino as ov

        self.require()
        if not artifact.path.exists():
            raise EdgekitError(f"artifact file {artifact.path} is missing", "recompile with `edgekit compile`")
        o = artifact.options
        config = {"PERFORMANCE_HINT": (hint or o.get("hint", "LATENCY")).upper(), "INFERENCE_PRECISION_HINT": o.get("inference_precision", "f32")}
        threads = threads or o.get("threads")
        if threads:
            from edgekit.limits import check_threads

            check_threads(threads, "threads")
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if profiling:
            config["PERF_COUNT"] = True
        cache_dir = artifact.path.parent / "cache"
        cached = cache and cache_dir.is_dir() and any(cache_dir.iterdir())
        if cache:
            config["CACHE_DIR"] = str(cache_dir)
        core = ov.Core()
        with reading(artifact.path, "compiled model", "recompile it with `edgekit compile`"):
            compiled = core.compile_model(str(artifact.path), o.get("device", "CPU"), config)
        props = {}
        for key in ("PERFORMANCE_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS", "INFERENCE_PRECISION_HINT", "EXECUTION_MODE_HINT"):
            try:
                props[key] = str(compiled.get_property(key))
            except RuntimeError:
                pass
        settings = {"backend": self.name, "device": o.get("device", "CPU"), "threads": int(props.get("INFERENCE_NUM_THREADS", 0)) or threads,
                    "config": config, "compiled_properties": props, "model_cache_hit": bool(cached), "openvino": ov.get_version()}
        return OpenVINORunner(compiled, artifact.spec, settings)
