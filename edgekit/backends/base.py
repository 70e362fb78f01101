"""The backend contract: compile an ONNX file into a target artifact, load it as a Runner.
A backend whose library is missing reports why through `available()`; nothing here imports it."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ValidationError

from edgekit.errors import EdgekitError
from edgekit.io import atomic_write_json
from edgekit.spec import ModelSpec


@dataclass
class Artifact:
    """What compile() produced: the file a runtime loads, plus how it was built (saved as artifact.json)."""

    backend: str
    path: Path  # the file the runtime loads (model.onnx / model.xml / model.engine)
    spec: ModelSpec
    precision: str = "fp32"  # fp32 | fp16 | int8 (what the graph carries, e.g. Q/DQ)
    options: dict = field(default_factory=dict)  # every build setting, so a result can be reproduced
    meta: dict = field(default_factory=dict)  # build seconds, sizes, versions, parity, ...

    def size_bytes(self) -> int:
        """What the runtime loads: the file, plus an OpenVINO IR's weights (.bin) beside it."""
        files = [self.path] + ([self.path.with_suffix(".bin")] if self.path.with_suffix(".bin").exists() else [])
        return sum(f.stat().st_size for f in files)

    def save(self) -> Path:
        d = asdict(self)
        d["path"] = self.path.name
        d["spec"] = self.spec.model_dump()
        out = self.path.parent / "artifact.json"
        atomic_write_json(out, d)
        return out

    @classmethod
    def load(cls, path) -> "Artifact":
        p = Path(path)
        meta = p / "artifact.json" if p.is_dir() else p.parent / "artifact.json"
        if not meta.exists():
            raise EdgekitError(f"{p} is not a compiled edgekit artifact (no artifact.json)", "compile one with `edgekit compile MODEL.onnx --backend NAME --out DIR`")
        from edgekit.io import load_json
        from edgekit.spec import spec_from

        d = load_json(meta, "artifact record")
        try:
            art = cls(**dict(d, path=meta.parent / d["path"], spec=spec_from(d["spec"], str(meta))))
        except (TypeError, KeyError, ValueError) as e:
            raise EdgekitError(f"{meta} is corrupt ({type(e).__name__}: {e})", "recompile the artifact") from e
        if not art.path.resolve().is_relative_to(meta.parent.resolve()):
            raise EdgekitError(f"{meta} names the file '{d['path']}', outside the artifact's folder", "recompile the artifact")
        if not isinstance(art.backend, str) or art.backend not in _REGISTRY:
            raise EdgekitError(f"{meta} names the backend {str(art.backend)[:40]!r}, which edgekit does not have",
                               f"recompile the artifact (backends: {', '.join(_REGISTRY)})")
        if art.path.suffix == ".onnx" and art.path.is_file():
            from edgekit.limits import check_external_data

            check_external_data(art.path)
        return art


def contiguous(feed: dict) -> dict:
    """The feed as C-contiguous arrays: what ONNX Runtime and OpenVINO read without a copy of their own."""
    return {k: np.ascontiguousarray(v) for k, v in feed.items()}


class Runner(ABC):
    """run({input name: array}) -> {output name: array}. Feeds are checked against the spec first."""

    def __init__(self, spec: ModelSpec, settings: dict | None = None):
        self.spec = spec
        self.settings = settings or {}

    def run(self, feed: dict) -> dict[str, np.ndarray]:
        self.spec.check_feed(feed)
        return self._run(feed)

    @abstractmethod
    def _run(self, feed: dict) -> dict[str, np.ndarray]: ...

    def bind(self, feed: dict):
        """Prepare a feed once and return a zero-argument callable that runs it: what the benchmark times,
        so converting or copying inputs in Python is not counted as model time. Backends override this."""
        self.spec.check_feed(feed)
        return lambda: self._run(feed)

    def _bind_feed(self, feed: dict) -> dict:
        """What a binding holds: the feed checked against the spec once, as contiguous arrays; the binding keeps
        the returned dict alive as long as the runtime reads from it."""
        self.spec.check_feed(feed)
        return contiguous(feed)


class Backend(ABC):
    name: str = ""
    install_hint: str = ""
    Options: ClassVar[type[BaseModel] | None] = None  # the schema of a recipe target's `options` (checked by check_options)

    @abstractmethod
    def available(self) -> tuple[bool, str]: ...

    @abstractmethod
    def compile(self, onnx_path: Path, spec: ModelSpec, options: dict, out_dir: Path) -> Artifact:
        """Write the artifact's files into out_dir; the caller saves the returned Artifact (artifact.json) last."""

    @abstractmethod
    def load(self, artifact: Artifact, **settings) -> Runner: ...

    @staticmethod
    def importable(module: str, describe) -> tuple[bool, str]:
        """available()'s answer for a runtime that is one Python package: (True, describe(module)) or why not."""
        import importlib

        try:
            mod = importlib.import_module(module)
        except Exception as e:  # noqa: BLE001 — a broken install is as unavailable as a missing one
            return False, f"{module} not importable: {e}"
        return True, describe(mod)

    def require(self) -> None:
        ok, why = self.available()
        if not ok:
            raise EdgekitError(f"backend '{self.name}' is not available: {why}", self.install_hint)


def compile_precision(onnx_path: Path, options: dict, fp16_from_fp32: str) -> tuple[str, str]:
    """(what the ONNX carries, what the artifact will run at) for options["precision"] (auto|fp32|fp16|int8).
    A precision the graph does not carry is refused, except fp16 from an fp32 graph, which each backend makes
    its own way (`fp16_from_fp32` says how, for the hint): INT8 must come from Q/DQ in the ONNX."""
    from edgekit.onnxgraph.info import onnx_precision

    have = onnx_precision(onnx_path)
    want = options.get("precision", "auto")
    if want == "fp16" and have == "fp32":
        return have, "fp16"
    if want not in ("auto", have):
        raise EdgekitError(f"{onnx_path} is {have}, not {want}", f"for int8 export a quantized model (Q/DQ); fp16 is {fp16_from_fp32} an fp32 ONNX")
    return have, have


def cpu_int8_source(onnx_path: Path, out_dir: Path) -> tuple[Path, dict]:
    """(the graph to compile, what was rewritten) for a CPU backend given an INT8 (Q/DQ) ONNX: activations as uint8
    and BatchNorms folded (edgekit.onnxgraph.qdq.prepare_int8_for_cpu), written as out_dir/source.cpu-int8.onnx."""
    from edgekit.onnxgraph.qdq import prepare_int8_for_cpu

    dst = Path(out_dir) / "source.cpu-int8.onnx"
    dst.parent.mkdir(parents=True, exist_ok=True)
    return dst, prepare_int8_for_cpu(onnx_path, dst)


_REGISTRY = {
    "onnxruntime": "edgekit.backends.onnxruntime:OnnxRuntimeBackend",
    "openvino": "edgekit.backends.openvino:OpenVINOBackend",
    "tensorrt": "edgekit.backends.tensorrt:TensorRTBackend",
}


def get_backend(name: str) -> Backend:
    if name not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(str(name).lower(), _REGISTRY, n=1, cutoff=0.6)
        raise EdgekitError(f"unknown backend '{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""),
                           f"choose one of: {', '.join(_REGISTRY)}")
    import importlib

    module, _, cls = _REGISTRY[name].partition(":")  # our own fixed table, not a reference read from a file
    return getattr(importlib.import_module(module), cls)()


def backend_names() -> list[str]:
    return list(_REGISTRY)


DEVICE_RUNTIMES = ("auto", "tensorrt", "onnxruntime")  # `runtime:` of an ssh:// target: what the device agent runs


def check_options(backend: str, options: dict, on_device: bool = False) -> None:
    """A recipe target's `options` against its backend's Options schema (plus `runtime` for an ssh:// target);
    raises ValueError naming the first unknown or invalid key and the keys allowed."""
    schema = get_backend(backend).Options
    rest = dict(options)
    runtime = rest.pop("runtime", None) if on_device else None
    if runtime is not None and runtime not in DEVICE_RUNTIMES:
        raise ValueError(f"'runtime' must be one of {', '.join(DEVICE_RUNTIMES)} (got {runtime!r})")
    if schema is None:
        return
    try:
        schema.model_validate(rest)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(map(str, err["loc"]))
        name = f"'{key}'" if key.isprintable() else repr(key)  # the message stays one line
        allowed = [*schema.model_fields, *(["runtime"] if on_device else [])]
        if err["type"] == "extra_forbidden":
            import difflib

            close = difflib.get_close_matches(key, allowed, n=1)
            raise ValueError(f"unknown {backend} option {name}" + (f" (did you mean '{close[0]}'?)" if close else "")
                             + f"; allowed options: {', '.join(allowed)}") from None
        raise ValueError(f"{backend} option {name}: {err['msg'].removeprefix('Value error, ')} (got {err['input']!r})") from None
