"""ONNX Runtime on the device: the fallback when TensorRT is absent, and what the loopback tests run."""
from __future__ import annotations

_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
               "tensor(int32)": "int32", "tensor(double)": "float64", "tensor(bool)": "bool"}
# Build engines behind our back (TensorRT EP) or need an NPU driver: never picked automatically.
_SKIP_AUTO = ("TensorrtExecutionProvider", "NvTensorRTRTXExecutionProvider")


def choose_providers(available: list[str], wanted: list[str] | None = None) -> list[str]:
    if wanted:
        missing = [p for p in wanted if p not in available]
        if missing:
            raise ValueError(f"ONNX Runtime providers {missing} are not available here (have {available})")
        return list(wanted)
    preferred = [p for p in ("CUDAExecutionProvider",) if p in available]
    return preferred + ["CPUExecutionProvider"]


class OrtRunner:
    def __init__(self, onnx_path: str, providers: list[str] | None = None, threads: int | None = None):
        import numpy as np
        import onnxruntime as ort

        self.np = np
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        self.providers = choose_providers(ort.get_available_providers(), providers)
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=self.providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.dtypes = {i.name: _ORT_DTYPES.get(i.type, "float32") for i in self.session.get_inputs()}
        self.settings = {"providers": self.session.get_providers(), "intra_op_num_threads": threads,
                         "onnxruntime": ort.__version__}

    def _feed(self, feed: dict) -> dict:
        return {n: self.np.ascontiguousarray(feed[n], dtype=self.dtypes[n]) for n in self.input_names}

    def run(self, feed: dict) -> dict:
        return dict(zip(self.output_names, self.session.run(self.output_names, self._feed(feed))))

    def bind(self, feed: dict):
        prepared = self._feed(feed)
        run, names = self.session.run, self.output_names
        return lambda: run(names, prepared)

    def close(self) -> None:
        self.session = None
