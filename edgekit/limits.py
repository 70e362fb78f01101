"""Bounds on every number a user (an option, a recipe, a file's metadata) can make edgekit act on: thread counts,
batch sizes, input shapes, iteration counts, durations, model widths, and where an ONNX may read its external data.
Each check raises a one-line EdgekitError naming the value and where it came from, before anything is allocated or
started. The bounds are generous: they stop a typo or a hostile file from exhausting the machine, not real work."""
from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

from edgekit.errors import EdgekitError

THREADS_PER_CPU = 4  # threads above 4 x the CPU count only add contention
MAX_BATCH = 1 << 16
MAX_ITERATIONS = 10**7
MAX_WARMUP = 10**6
MAX_SECONDS = 3600.0  # a timed duration per batch size
MAX_SAMPLES = 10**7
MAX_DIM = 1 << 24  # one axis of an input
MAX_WIDTH = 1 << 16  # any integer of a model config (layer widths, vocabulary, sequence length, ...)
MAX_LIST = 1024  # entries of a list in a model config (layers, stages)
MAX_PARAMS = 2 * 10**9  # parameters of a model built from a config (8 GB in float32)
MAX_SAMPLE_BYTES = 1 << 30  # one sample of a model's inputs (a 16k x 16k float32 image is 1 GiB)
MEMORY_SHARE = 0.5  # inputs (a batch) may take at most this share of the memory available now
_ITEMSIZE = {"float32": 4, "int64": 8, "float16": 2, "int32": 4}


def itemsize(dtype: str) -> int:
    return _ITEMSIZE.get(dtype, 8)


def cpu_count() -> int:
    return os.cpu_count() or 1


def max_threads() -> int:
    return THREADS_PER_CPU * cpu_count()


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(value, name: str, low: int = 1, high: int | None = None, hint: str = "") -> int:
    """`value` as an int in [low, high]; `name` says where it came from (an option such as --warmup, a recipe key)."""
    if not _is_int(value):
        raise EdgekitError(f"{name} must be a whole number, got {value!r}", hint or f"give an integer of at least {low}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise EdgekitError(f"{name} is {value}; it must be {bound}", hint or f"give a value {bound}")
    return int(value)


def check_threads(value, name: str = "--threads") -> int | None:
    """None (the backend's default) or 1..THREADS_PER_CPU x the CPU count, refused before any thread starts."""
    if value is None:
        return None
    return check_int(value, name, 1, max_threads(), f"this machine has {cpu_count()} CPUs: use at most {max_threads()} threads (or leave it unset)")


def check_seconds(value, name: str = "--min-seconds", high: float = MAX_SECONDS) -> float:
    """A finite duration in [0, high] seconds."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise EdgekitError(f"{name} must be a number of seconds, got {value!r}", f"give a value between 0 and {high:g}") from None
    if not math.isfinite(v) or v < 0 or v > high:
        raise EdgekitError(f"{name} is {value}; it must be a finite number of seconds between 0 and {high:g}", f"e.g. {name} 2")
    return v


def check_protocol(batch_sizes=(), warmup=0, iterations=None, min_seconds=0.0, threads=None, prefix: str = "--") -> None:
    """The benchmark protocol's numbers (CLI options with prefix '--', recipe keys with prefix 'bench.')."""
    opt = (lambda n: f"--{n.replace('_', '-')}") if prefix == "--" else (lambda n: f"{prefix}{n}")
    if not batch_sizes:
        raise EdgekitError(f"{opt('batch')} needs at least one batch size", "e.g. --batch 1 --batch 8")
    for b in batch_sizes:
        check_int(b, opt("batch"), 1, MAX_BATCH)
    check_int(warmup, opt("warmup"), 0, MAX_WARMUP)
    if iterations is not None:
        check_int(iterations, opt("iterations"), 1, MAX_ITERATIONS)
    check_seconds(min_seconds, opt("min_seconds"))
    check_threads(threads, opt("threads"))


# ---------------------------------------------------------------- memory and shapes

def available_memory() -> int | None:
    """Bytes of memory available now (Linux MemAvailable), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} EiB"  # pragma: no cover


def check_memory(nbytes: int, what: str, hint: str = "") -> None:
    """Refuse to allocate `nbytes` when it is more than MEMORY_SHARE of the memory available now."""
    avail = available_memory()
    if avail is not None and nbytes > MEMORY_SHARE * avail:
        raise EdgekitError(f"{what} would take {_fmt_bytes(nbytes)}, more than half of the {_fmt_bytes(avail)} of memory available",
                           hint or "use smaller inputs or batches, or free memory")


def check_batch(batch: int, per_sample_bytes: int, origin: str) -> None:
    """A batch of inputs (batch x bytes of one sample) must fit in memory."""
    check_memory(int(batch) * int(per_sample_bytes), f"batch {batch} of {origin}'s inputs ({_fmt_bytes(per_sample_bytes)} per sample)",
                 "use a smaller --batch (or bench.batch_sizes)")


# ---------------------------------------------------------------- model configs

def check_model_config(config, origin: str) -> None:
    """Every integer of edgekit's own model config (widths, depths, vocabulary, ...) in 0..MAX_WIDTH, and the model it
    describes small enough to build: a config.json asking for 10^12 channels is refused before anything is allocated."""
    stack = [("model", config)]
    while stack:
        where, v = stack.pop()
        if isinstance(v, dict):
            stack.extend((f"{where}.{k}", x) for k, x in v.items())
        elif isinstance(v, list):
            if len(v) > MAX_LIST:
                raise EdgekitError(f"{origin}: {where} has {len(v)} entries; a model config list may have at most {MAX_LIST}",
                                   "restore config.json from the original checkpoint")
            stack.extend((f"{where}[{j}]", x) for j, x in enumerate(v))
        elif _is_int(v) and not 0 <= v <= MAX_WIDTH:
            raise EdgekitError(f"{origin}: {where} is {v}; a model size must be between 0 and {MAX_WIDTH}",
                               "restore config.json from the original checkpoint")
        elif isinstance(v, float) and not math.isfinite(v):
            raise EdgekitError(f"{origin}: {where} is {v}", "restore config.json from the original checkpoint")


def check_params(n_params: int, origin: str) -> None:
    """A model of `n_params` parameters (float32) must be buildable: at most MAX_PARAMS, and fit in memory."""
    if n_params > MAX_PARAMS:
        raise EdgekitError(f"{origin} describes a model of {n_params:,} parameters, more than {MAX_PARAMS:,}",
                           "restore config.json from the original checkpoint")
    check_memory(4 * n_params, f"the model {origin} describes ({n_params:,} parameters)", "restore config.json from the original checkpoint")


# ---------------------------------------------------------------- ONNX external data

def check_external_data(onnx_path, proto=None) -> None:
    """Every tensor an ONNX file keeps outside itself must sit inside the file's folder: no absolute path, no `..`,
    no symlink out of it. Checked before a runtime (or onnx.load) reads the file, so a downloaded model cannot make
    edgekit read /etc/shadow or another user's files into a 'weight'. `proto`: the file already read (without its
    external data), to save reading it again."""
    import onnx

    path = Path(onnx_path)
    if proto is None:
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # noqa: BLE001 — protobuf raises several types for a broken file
            raise EdgekitError(f"{path} is not a readable ONNX file ({type(e).__name__})", "re-export it") from e
    folder = path.resolve().parent
    for t in _tensors(proto.graph):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        target = (folder / loc).resolve()
        if not loc or Path(loc).is_absolute() or not target.is_relative_to(folder):
            raise EdgekitError(f"{path}: tensor '{t.name}' points its external data at '{loc}', outside the model's folder {folder}",
                               "an ONNX file may only read external data from files beside it; re-export the model")
        try:
            size = target.stat().st_size if target.is_file() else -1
            end = int(info.get("offset") or 0) + int(info.get("length") or 0)
        except (OSError, ValueError):
            size, end = -1, 0
        if size < 0 or end > size:
            raise EdgekitError(f"{path}: tensor '{t.name}' reads its external data from '{loc}', which "
                               + ("is missing or unreadable" if size < 0 else f"holds {size} bytes, not the {end} the model expects"),
                               "copy the model's external data file(s) beside it, or re-export the model")


def _tensors(graph):
    """Every initializer and constant tensor of a graph, subgraphs (If/Loop/Scan bodies) included."""
    stack = [graph]
    while stack:
        g = stack.pop()
        yield from g.initializer
        for node in g.node:
            for a in node.attribute:
                if a.HasField("t"):
                    yield a.t
                yield from a.tensors
                if a.HasField("g"):
                    stack.append(a.g)
                stack.extend(a.graphs)
