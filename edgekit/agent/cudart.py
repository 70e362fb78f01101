"""The few CUDA runtime calls a TensorRT runner needs, through ctypes on libcudart.

JetPack ships libcudart with CUDA but not cuda-python or PyCUDA; calling the C library directly keeps the
agent's requirements at "Python 3, numpy and TensorRT"."""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os

H2D, D2H = 1, 2  # cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost
_ATTR_CC_MAJOR, _ATTR_CC_MINOR = 75, 76  # cudaDevAttrComputeCapabilityMajor / Minor


class CudaError(RuntimeError):
    pass


def _find_libcudart() -> str:
    found = ctypes.util.find_library("cudart")
    if found:
        return found
    for pattern in ("/usr/local/cuda/lib64/libcudart.so*", "/usr/local/cuda/targets/*/lib/libcudart.so*",
                    "/usr/lib/*/libcudart.so*"):
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[0]
    raise CudaError("libcudart.so not found (is CUDA installed? on a Jetson it comes with JetPack)")


class CudaRuntime:
    _lib = None

    def __init__(self):
        if CudaRuntime._lib is None:
            CudaRuntime._lib = ctypes.CDLL(os.environ.get("EDGEKIT_LIBCUDART") or _find_libcudart())
        self.lib = CudaRuntime._lib
        self.lib.cudaGetErrorString.restype = ctypes.c_char_p

    def check(self, code: int, what: str) -> None:
        if code != 0:
            raise CudaError(f"{what} failed: {self.lib.cudaGetErrorString(code).decode()} (cudaError {code})")

    def runtime_version(self) -> int:
        v = ctypes.c_int()
        self.check(self.lib.cudaRuntimeGetVersion(ctypes.byref(v)), "cudaRuntimeGetVersion")
        return v.value

    def driver_version(self) -> int:
        v = ctypes.c_int()
        self.check(self.lib.cudaDriverGetVersion(ctypes.byref(v)), "cudaDriverGetVersion")
        return v.value

    def devices(self) -> list[dict]:
        n = ctypes.c_int()
        self.check(self.lib.cudaGetDeviceCount(ctypes.byref(n)), "cudaGetDeviceCount")
        out = []
        for i in range(n.value):
            major, minor = ctypes.c_int(), ctypes.c_int()
            self.check(self.lib.cudaDeviceGetAttribute(ctypes.byref(major), _ATTR_CC_MAJOR, i), "cudaDeviceGetAttribute")
            self.check(self.lib.cudaDeviceGetAttribute(ctypes.byref(minor), _ATTR_CC_MINOR, i), "cudaDeviceGetAttribute")
            # cudaDeviceProp starts with `char name[256]` in every CUDA version; the rest of its layout varies,
            # so a generous buffer is passed and only the name is read.
            prop = ctypes.create_string_buffer(16384)
            fn = getattr(self.lib, "cudaGetDeviceProperties_v2", None) or self.lib.cudaGetDeviceProperties
            self.check(fn(prop, i), "cudaGetDeviceProperties")
            out.append({"index": i, "name": prop.raw[:256].split(b"\0", 1)[0].decode(errors="replace"),
                        "compute_capability": f"{major.value}.{minor.value}"})
        return out

    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self.check(self.lib.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(max(nbytes, 1))), f"cudaMalloc({nbytes})")
        return ptr.value

    def free(self, ptr: int) -> None:
        self.lib.cudaFree(ctypes.c_void_p(ptr))

    def stream(self) -> int:
        s = ctypes.c_void_p()
        self.check(self.lib.cudaStreamCreate(ctypes.byref(s)), "cudaStreamCreate")
        return s.value or 0

    def memcpy_async(self, dst: int, src: int, nbytes: int, kind: int, stream: int) -> None:
        self.check(self.lib.cudaMemcpyAsync(ctypes.c_void_p(dst), ctypes.c_void_p(src), ctypes.c_size_t(nbytes),
                                            kind, ctypes.c_void_p(stream)), "cudaMemcpyAsync")

    def synchronize(self, stream: int) -> None:
        self.check(self.lib.cudaStreamSynchronize(ctypes.c_void_p(stream)), "cudaStreamSynchronize")
