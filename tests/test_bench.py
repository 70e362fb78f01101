"""The latency protocol and the bench JSON: statistics on known values, the timing loop's stopping rules,
the measurement core's portability to the Jetson's Python 3.10, and every field of a real benchmark of a real artifact."""
import ast
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit import bench, checkpoint, export
from edgekit.agent import measure as latency
from edgekit.backends import compile_onnx
from edgekit.errors import EdgekitError
from edgekit.models import build_model, preset_config
from edgekit.train import reference_spec

FSDD = "/work/shared/data/fsdd"
PY310 = next((p for p in ("/usr/bin/python3.10", "/root/.pyenv/versions/3.10.13/bin/python3.10") if Path(p).exists()), shutil.which("python3.10"))


def test_summarize_known_values():
    s = latency.summarize([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert (s["n"], s["min"], s["max"], s["median"], s["p90"], s["p95"], s["p99"]) == (100, 1, 100, 50.5, 90, 95, 99)
    assert s["mean"] == pytest.approx(50.5) and s["std"] == pytest.approx(np.std(np.arange(1, 101), ddof=1))
    assert s["cv"] == pytest.approx(s["std"] / 50.5) and s["high_variance"] and s["unit"] == "ms"
    flat = latency.summarize([0.002] * 7 + [0.00201])
    assert flat["cv"] < 0.05 and not flat["high_variance"] and flat["p99"] == pytest.approx(2.01)
    assert latency.throughput([0.5, 0.5], batch=8) == pytest.approx(16.0)
    with pytest.raises(ValueError):
        latency.summarize([])


def test_measure_stopping_rules():
    calls = []
    times = latency.measure(lambda: calls.append(1), warmup=7, warmup_seconds=0, iterations=25)
    assert len(times) == 25 and len(calls) == 32 and all(t >= 0 for t in times)
    t0 = time.perf_counter()
    times = latency.measure(lambda: time.sleep(0.002), warmup=1, warmup_seconds=0, min_seconds=0.1, min_iterations=5)
    assert sum(times) >= 0.09 and time.perf_counter() - t0 < 2 and min(times) >= 0.0019
    times = latency.measure(lambda: time.sleep(0.01), warmup=0, warmup_seconds=0, min_seconds=100, max_seconds=0.05)
    assert 3 <= len(times) <= 10, "max_seconds caps the run"


def test_latency_module_is_portable_to_the_device_python():
    src = Path(latency.__file__).read_text()
    tree = ast.parse(src, feature_version=(3, 10))
    imported = {(n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
                for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    assert imported <= {"__future__", "gc", "math", "statistics", "time", "numpy"}, imported
    if not PY310:
        pytest.skip("no python3.10 here to run it with")
    code = "import measure as L; t = L.measure(lambda: None, warmup=2, iterations=50); s = L.summarize(t); print(s['n'], s['high_variance'] in (True, False))"
    res = subprocess.run([PY310, "-I", "-c", f"import sys; sys.path.insert(0, {str(Path(latency.__file__).parent)!r}); {code}"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.split() == ["50", "True"], res.stderr


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from edgekit.data import avdigits

    d = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    cfg = preset_config("tiny", "early")
    model = build_model(cfg).eval()
    spec = reference_spec(cfg, avdigits.preprocessing(FSDD))
    checkpoint.save(model, spec, d / "ck", cfg)
    export.to_onnx(model, spec, d / "model.onnx")
    compile_onnx(d / "model.onnx", "onnxruntime", d / "ort")
    return d


FIELDS = {"schema", "created", "backend", "precision", "threads", "settings", "batches", "high_variance", "memory", "protocol",
          "environment", "artifact", "cold_start_s", "command"}
STATS = {"n", "min", "mean", "median", "p90", "p95", "p99", "max", "std", "cv", "high_variance", "unit"}


def test_bench_json_has_every_field(artifact):
    r = bench.bench_artifact(artifact / "ort", batch_sizes=(1, 8), warmup=3, warmup_seconds=0, iterations=30)
    assert FIELDS <= set(r) and r["backend"] == "onnxruntime" and r["precision"] == "fp32" and r["threads"] >= 1
    for b in (1, 8):
        entry = r["batches"][str(b)]
        assert STATS <= set(entry["latency_ms"]) and entry["latency_ms"]["n"] == 30 and len(entry["times_ms"]) == 30
        s = entry["latency_ms"]
        assert 0 < s["min"] <= s["median"] <= s["p90"] <= s["p95"] <= s["p99"] <= s["max"]
        assert entry["throughput_per_s"] == pytest.approx(b * 30 / (sum(entry["times_ms"]) / 1000))
    assert r["cold_start_s"]["total"] >= r["cold_start_s"]["load"] > 0 and r["memory"]["peak_rss_mb"] > 10
    assert r["artifact"]["size_bytes"] > 10_000
    env = r["environment"]
    assert env["cpu"]["model"] and "avx2" in env["cpu"]["isa"] and env["libraries"]["onnxruntime"] and env["os"]
    assert r["settings"]["providers"] and r["command"].startswith("edgekit bench ") and "--iterations 30" in r["command"]
    saved = bench.save(r)
    assert saved == artifact / "ort" / "bench-onnxruntime.json" and json.loads(saved.read_text())["batches"]["8"]["batch"] == 8


def test_torch_baseline_and_bad_batch(artifact):
    r = bench.bench_artifact(artifact / "ck", backend="torch", batch_sizes=(2,), warmup=1, warmup_seconds=0, iterations=5)
    assert r["backend"] == "torch" and r["batches"]["2"]["latency_ms"]["n"] == 5 and r["settings"]["threads"] >= 1
    with pytest.raises(EdgekitError):
        bench.bench_artifact(artifact / "ort", batch_sizes=(0,), iterations=2)
    with pytest.raises(EdgekitError) as e:
        bench.bench_artifact(artifact / "ort", backend="openvino", iterations=2)
    assert "artifact for onnxruntime" in e.value.message


def test_bench_cli(artifact, tmp_path):
    res = subprocess.run([sys.executable, "-m", "edgekit", "bench", str(artifact / "ort"), "--backend", "onnxruntime", "--batch", "4",
                          "--iterations", "10", "--warmup", "2", "--out", str(tmp_path), "--json"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)
    assert list(r["batches"]) == ["4"] and (tmp_path / "bench-onnxruntime.json").exists()
    res = subprocess.run([sys.executable, "-m", "edgekit", "bench", str(artifact / "ort"), "--iterations", "5", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "median ms" in res.stderr and "reproduce: edgekit bench" in res.stderr
    res = subprocess.run([sys.executable, "-m", "edgekit", "bench", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "not a compiled edgekit artifact" in res.stderr
