"""edgekit: compress, compile and benchmark multimodal fusion models for edge devices.

The Python API (edgekit.api; imported on first use, so `import edgekit` stays light):
    load(path, trust_code=False) -> (model, spec)       an edgekit checkpoint
    compress(model, data, recipe, spec=..., out=...)      the recipe's variants (prune / distill / INT8), judged on data
    export(model, path, spec=...)                         ONNX + parity check
    compile(onnx_path, backend, out)                      ONNX Runtime / OpenVINO / TensorRT artifact + parity check
    bench(artifact)                                       latency with the CLI's protocol
    evaluate(model, data, spec=...)                       accuracy, F1, accuracy with each modality missing
    report(run_dir)                                       report.md / report.html from results.json
    run(recipe_path)                                      every stage of a recipe (`edgekit run`)
User mistakes raise edgekit.errors.EdgekitError (message + hint), as the CLI reports them.

Five of these names are also the stage modules behind them (edgekit/compress.py, export.py, bench.py,
evaluate.py, report.py), and importing a submodule makes it the package's attribute of that name. So those
modules are made callable as they are imported: `edgekit.export(...)` calls edgekit.api.export whichever was
imported first, and `edgekit.export.to_onnx` is still the module's function.
"""
import importlib.abc
import importlib.machinery
import sys
import types

__version__ = "0.1.0"

API = ("load", "compress", "export", "compile", "bench", "evaluate", "report", "run")
__all__ = ["__version__", *API]
_STAGE_MODULES = {f"{__name__}.{n}" for n in ("compress", "export", "bench", "evaluate", "report")}


class StageModule(types.ModuleType):
    """A stage module that is also the API function of its name (see the module docstring)."""

    def __call__(self, *args, **kwargs):
        from edgekit import api

        return getattr(api, self.__name__.rpartition(".")[2])(*args, **kwargs)


class _CallableStageLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__class__ = StageModule  # before its code runs: a half-imported module is callable too
        self.loader.exec_module(module)


class _CallableStageFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in _STAGE_MODULES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _CallableStageLoader(spec.loader)
        return spec


if not any(isinstance(f, _CallableStageFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _CallableStageFinder())


def __getattr__(name: str):
    if name in API:
        if f"{__name__}.{name}" in _STAGE_MODULES:
            return importlib.import_module(f"{__name__}.{name}")
        from edgekit import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgekit' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *API])
