"""`edgekit deploy` / `edgekit bench --target` against a real sshd on 127.0.0.1 standing in for a Jetson.

The "device" runs the agent under this venv's Python with ONNX Runtime (--runtime onnxruntime), which is the
fallback path of a real device; TensorRT itself is covered by tests/test_tensorrt.py."""
import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import pytest

from conftest import run_cli
from edgekit.errors import EdgekitError

pytestmark = pytest.mark.remote

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
FAST_BENCH = {"batch_sizes": [1, 4], "warmup": 3, "warmup_seconds": 0.05, "min_seconds": 0.3, "power_seconds": 0.5}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A throwaway sshd on a free 127.0.0.1 port: its own host key, one authorized client key, no passwords."""
    if not os.path.exists(SSHD) or not shutil.which("ssh-keygen"):
        pytest.skip("sshd not installed (apt-get install openssh-server)")
    d = tmp_path_factory.mktemp("sshd")
    host_key, client_key, other_key = _keygen(d / "host_key"), _keygen(d / "client_key"), _keygen(d / "other_key")
    shutil.copyfile(d / "client_key.pub", d / "authorized_keys")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation directory
    port = _free_port()
    cfg = d / "sshd_config"
    cfg.write_text(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nAuthorizedKeysFile {d}/authorized_keys\n"
                   f"PidFile {d}/sshd.pid\nStrictModes no\nUsePAM no\nPermitRootLogin yes\nPasswordAuthentication no\n"
                   "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nSubsystem sftp internal-sftp\nLogLevel ERROR\n")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stderr=open(d / "sshd.log", "w"))
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.skip(f"sshd did not start: {(d / 'sshd.log').read_text()[-300:]}")
            time.sleep(0.05)
    known = d / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} " + " ".join((d / "host_key.pub").read_text().split()[:2]) + "\n")
    yield SimpleNamespace(port=port, dir=d, client_key=client_key, other_key=other_key, known_hosts=known, proc=proc,
                          user=getpass.getuser())
    proc.terminate()
    proc.wait(timeout=10)


def url(sshd, workdir: Path, python: str = sys.executable) -> str:
    return f"ssh://{sshd.user}@127.0.0.1:{sshd.port}?python={quote(python)}&workdir={quote(str(workdir))}"


def tiny_onnx(path: Path, fsdd) -> Path:
    """A tiny attention-fusion model (untrained: these tests check plumbing, not accuracy) exported to ONNX with
    the avdigits preprocessing in its spec."""
    import torch

    from edgekit.data import avdigits
    from edgekit.export import to_onnx
    from edgekit.models import build_model, preset_config
    from edgekit.train import reference_spec

    torch.manual_seed(0)
    cfg = preset_config("tiny", "attention")
    to_onnx(build_model(cfg), reference_spec(cfg, avdigits.preprocessing(fsdd)), path, max_samples=16)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, fsdd):
    """A run directory as `edgekit compress` leaves it: three variants, each with its exported ONNX."""
    from edgekit.onnxgraph.fp16 import to_fp16_onnx

    run = tmp_path_factory.mktemp("run")
    for name in ("a-fp32", "b-fp16", "c-fp32"):
        (run / "variants" / name).mkdir(parents=True)
    tiny_onnx(run / "variants/a-fp32/model.onnx", fsdd)
    to_fp16_onnx(run / "variants/a-fp32/model.onnx", run / "variants/b-fp16/model.onnx", max_samples=16)
    shutil.copyfile(run / "variants/a-fp32/model.onnx", run / "variants/c-fp32/model.onnx")
    return run


def _deploy(run, sshd, workdir, **kw):
    from edgekit.deploy import deploy

    kw.setdefault("identity", sshd.client_key)
    kw.setdefault("known_hosts", sshd.known_hosts)
    return deploy(run, [kw.pop("target", None) or url(sshd, workdir)], runtime=kw.pop("runtime", "onnxruntime"),
                  samples=kw.pop("samples", 40), bench=FAST_BENCH, **kw)


def test_deploy_end_to_end_then_rerun_skips(sshd, run_dir, tmp_path):
    # A workdir with spaces and a command substitution: every remote argument must arrive quoted, literally.
    canary = tmp_path / "INJECTED"
    workdir = tmp_path / f"remote dir $(touch {canary})"
    known = tmp_path / "known_hosts"  # empty: the host is trusted only because of accept_new_host
    (summary,) = _deploy(run_dir, sshd, workdir, known_hosts=known, accept_new_host=True)
    assert summary["status"] == "ok" and not canary.exists()
    assert f"[127.0.0.1]:{sshd.port} ssh-ed25519" in known.read_text()
    out = Path(summary["results_dir"])
    fp = json.loads((out / "fingerprint.json").read_text())
    assert fp["hostname"] == socket.gethostname() and fp["onnxruntime"]["version"]
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] and set(results["variants"]) == {"a-fp32", "b-fp16", "c-fp32"}
    for name, r in results["variants"].items():
        assert r["runtime"]["runtime"] == "onnxruntime"
        assert r["accuracy"]["n"] == 40 and 0.0 <= r["accuracy"]["accuracy"] <= 1.0
        assert r["parity"]["top1_agreement"] == 1.0 and r["parity"]["passed"]  # same ONNX, same runtime as the host reference
        assert set(r["batches"]) == {"1", "4"} and r["batches"]["4"]["latency_ms"]["median"] > 0
        assert r["result"]["latency"]["1"]["median"] < 1.0  # edgekit-results/1 shape: seconds
        assert r["power"]["available"] is False
        saved = json.loads((run_dir / "variants" / name / "bench-127.0.0.1-{}.json".format(sshd.port)).read_text())
        assert saved["resume_key"] == r["resume_key"]
    # the two fp32 variants are the same ONNX: identical accuracy on identical samples
    assert results["variants"]["a-fp32"]["accuracy"] == results["variants"]["c-fp32"]["accuracy"]
    # the per-run folder on the device is removed after success; the base folder stays
    assert list((workdir / "runs").iterdir()) == []
    # bundle usable as is
    from edgekit.runtime import load

    p = load(run_dir / "bundle", "b-fp16", runtime="onnxruntime")
    assert p.predict(text="the code is seven")["label"] in p.class_names

    events = []
    (again,) = _deploy(run_dir, sshd, workdir, on_event=lambda slug, ev: events.append(ev))
    assert sorted(again["skipped"]) == ["a-fp32", "b-fp16", "c-fp32"] and events == []


def test_cli_deploy_and_bench_target(sshd, run_dir, tmp_path):
    target = url(sshd, tmp_path / "w")
    common = ["--runtime", "onnxruntime", "--identity", sshd.client_key, "--known-hosts", sshd.known_hosts]
    res = run_cli("deploy", run_dir, "--target", target, *common, "--samples", "20", "--variant", "b-fp16")
    assert res.returncode == 0, res.stderr
    assert "b-fp16" in res.stderr and (run_dir / "targets" / f"127.0.0.1-{sshd.port}" / "b-fp16.json").exists()

    onnx = run_dir / "variants" / "a-fp32" / "model.onnx"
    res = run_cli("bench", onnx, "--target", target, *common, "--batch", "1", "--min-seconds", "0.2")
    assert res.returncode == 0, res.stderr
    bench = json.loads((onnx.parent / f"bench-127.0.0.1-{sshd.port}.json").read_text())
    assert bench["mode"] == "bench" and "accuracy" not in bench and bench["batches"]["1"]["latency_ms"]["n"] >= 10


def test_resume_after_killed_connection(sshd, run_dir, tmp_path):
    import psutil

    run = tmp_path / "run"
    shutil.copytree(run_dir / "variants", run / "variants", ignore=shutil.ignore_patterns("bench-*"))
    done = []

    def kill_session_after_first(slug, ev):
        if ev["event"] == "variant_done" and not done:
            done.append(ev["variant"])
            # the connection's sshd processes and the agent under them: the link dies mid-run
            for child in psutil.Process(sshd.proc.pid).children(recursive=True):
                child.kill()

    with pytest.raises(EdgekitError, match="dropped") as e:
        _deploy(run, sshd, tmp_path / "w", on_event=kill_session_after_first)
    assert "1 of 3 variant(s) saved" in e.value.message and "resume" in e.value.hint
    out = run / "targets" / f"127.0.0.1-{sshd.port}"
    assert sorted(p.name for p in out.glob("?-*.json")) == [f"{done[0]}.json"]
    assert not json.loads((out / "results.json").read_text())["complete"]

    started = []
    (summary,) = _deploy(run, sshd, tmp_path / "w", on_event=lambda s, ev: ev["event"] == "variant_start" and started.append(ev["variant"]))
    assert summary["skipped"] == done and sorted(started + done) == ["a-fp32", "b-fp16", "c-fp32"]
    assert json.loads((out / "results.json").read_text())["complete"]


def test_unknown_and_changed_host_keys_are_refused(sshd, run_dir, tmp_path):
    empty = tmp_path / "known_hosts"
    with pytest.raises(EdgekitError, match="not in .*refusing") as e:
        _deploy(run_dir, sshd, tmp_path / "w", known_hosts=empty)
    assert "--accept-new-host" in e.value.hint and "SHA256:" in e.value.message
    assert not empty.exists()  # nothing was trusted
    forged = tmp_path / "forged"
    forged.write_text(f"[127.0.0.1]:{sshd.port} " + " ".join((sshd.dir / "other_key.pub").read_text().split()[:2]) + "\n")
    with pytest.raises(EdgekitError, match="CHANGED"):
        _deploy(run_dir, sshd, tmp_path / "w", known_hosts=forged, accept_new_host=True)  # even when accepting new hosts


def test_bad_key_is_refused(sshd, run_dir, tmp_path):
    with pytest.raises(EdgekitError, match="authentication refused") as e:
        _deploy(run_dir, sshd, tmp_path / "w", identity=sshd.other_key)
    assert "ssh-copy-id" in e.value.hint


def test_unreachable_host(sshd, run_dir, tmp_path):
    with pytest.raises(EdgekitError, match=r"cannot reach 127\.0\.0\.1"):
        _deploy(run_dir, sshd, tmp_path / "w", target=f"ssh://{sshd.user}@127.0.0.1:{_free_port()}")


def test_device_without_python_numpy_or_runtime(sshd, run_dir, tmp_path):
    with pytest.raises(EdgekitError, match="no Python at"):
        _deploy(run_dir, sshd, tmp_path / "w", target=url(sshd, tmp_path / "w", "/nonexistent/python3"))
    bare = "/usr/bin/python3"
    if os.path.exists(bare) and subprocess.run([bare, "-c", "import numpy"], capture_output=True).returncode != 0:
        with pytest.raises(EdgekitError, match="has no numpy") as e:
            _deploy(run_dir, sshd, tmp_path / "w", target=url(sshd, tmp_path / "w", bare))
        assert "python3-numpy" in e.value.hint
    with pytest.raises(EdgekitError, match="TensorRT") as e:
        _deploy(run_dir, sshd, tmp_path / "w", runtime="tensorrt")
    assert "--runtime onnxruntime" in e.value.hint


def test_full_disk_is_refused_before_copying(sshd, run_dir, tmp_path, monkeypatch):
    import edgekit.deploy.remote

    monkeypatch.setattr(edgekit.deploy.remote, "MIN_FREE_BYTES", 1 << 62)  # more than any disk has
    with pytest.raises(EdgekitError, match="disk is full"):
        _deploy(run_dir, sshd, tmp_path / "w")
    assert not (tmp_path / "w" / "runs").exists()


def test_failing_variant_keeps_remote_folder_and_others_results(sshd, run_dir, tmp_path):
    """A variant the device cannot load (an op no runtime has): the error names it, the other variant's
    result is kept, and the remote run folder stays for inspection."""
    import onnx
    from onnx import TensorProto, helper

    from edgekit.deploy.bundle import VariantSource, make_bundle, variant_from_onnx
    from edgekit.deploy.remote import TargetRun, run_targets
    from edgekit.spec import InputSpec, ModelSpec, OutputSpec
    from edgekit.ssh import Target

    node = helper.make_node("Nope", ["x"], ["y"], domain="edgekit.test")
    graph = helper.make_graph([node], "broken", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])])
    broken = tmp_path / "broken.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("edgekit.test", 1)]), broken)
    spec = ModelSpec(inputs=[InputSpec(name="x", shape=[None, 4])], outputs=[OutputSpec(name="y", shape=[None, 4])], class_names=list("abcd"))
    good = variant_from_onnx(run_dir / "variants/a-fp32/model.onnx")
    make_bundle(tmp_path / "bundle", [good, VariantSource("zz-broken", broken, spec, "fp32", {})], None, None, FAST_BENCH)
    t = Target.parse(url(sshd, tmp_path / "w"))
    run = TargetRun(t, tmp_path / "bundle", ["a-fp32", "zz-broken"], tmp_path / "results", "bench", "onnxruntime",
                    sshd.known_hosts, False, sshd.client_key)
    with pytest.raises(EdgekitError, match="variant zz-broken failed on the device: .*Nope") as e:
        run_targets([run])
    assert "keeps" in e.value.hint
    assert (tmp_path / "results" / "a-fp32.json").exists() and not (tmp_path / "results" / "zz-broken.json").exists()
    kept = list((tmp_path / "w" / "runs").iterdir())
    assert len(kept) == 1 and (kept[0] / "manifest.json").exists() and (kept[0] / "results" / "a-fp32.json").exists()


def test_several_targets_run_concurrently(sshd, run_dir, tmp_path):
    """Two --targets (the same sshd under two names) run at the same time, one results folder each."""
    from edgekit.deploy import deploy

    known = tmp_path / "known_hosts"
    key = " ".join((sshd.dir / "host_key.pub").read_text().split()[:2])
    known.write_text(f"[127.0.0.1]:{sshd.port} {key}\n[localhost]:{sshd.port} {key}\n")
    targets = [url(sshd, tmp_path / "w1"), url(sshd, tmp_path / "w2").replace("127.0.0.1", "localhost")]
    run = tmp_path / "run"
    shutil.copytree(run_dir / "variants" / "b-fp16", run / "variants" / "b-fp16", ignore=shutil.ignore_patterns("bench-*"))
    starts = {}
    summaries = deploy(run, targets, runtime="onnxruntime", identity=sshd.client_key, known_hosts=known, samples=10,
                       bench=dict(FAST_BENCH, batch_sizes=[1], min_seconds=0.5),
                       on_event=lambda slug, ev: ev["event"] in ("start", "done") and starts.setdefault((slug, ev["event"]), ev["time"]))
    assert [s["status"] for s in summaries] == ["ok", "ok"]
    assert {p.name for p in (run / "targets").iterdir()} == {f"127.0.0.1-{sshd.port}", f"localhost-{sshd.port}"}
    a, b = f"127.0.0.1-{sshd.port}", f"localhost-{sshd.port}"
    assert starts[(a, "start")] < starts[(b, "done")] and starts[(b, "start")] < starts[(a, "done")]  # overlapping runs


def test_target_urls():
    from edgekit.ssh import Target, quote_command

    t = Target.parse("ssh://nvidia@orin.local:2222?python=/usr/bin/python3.10&workdir=/data/ek")
    assert (t.user, t.host, t.port, t.python, t.workdir, t.slug) == ("nvidia", "orin.local", 2222, "/usr/bin/python3.10", "/data/ek", "orin.local-2222")
    assert Target.parse("ssh://orin").port == 22 and Target.parse("ssh://orin").slug == "orin"
    for bad, msg in (("orin.local", "not an ssh:// URL"), ("ssh://u:secret@orin", "passwords"), ("http://orin", "scheme"),
                     ("ssh://orin?shell=1", "unknown target option"), ("ssh://orin:99999", "bad port"), ("ssh://orin/tmp", "path")):
        with pytest.raises(EdgekitError, match=msg):
            Target.parse(bad)
    assert quote_command(["rm", "-rf", "--", "/x/a b; touch y"]) == "rm -rf -- '/x/a b; touch y'"


def test_build_options_from_a_runs_recipe(tmp_path):
    """`edgekit deploy RUN` builds with the options of the recipe's tensorrt target (keys the agent does not know,
    such as `runtime`, are left out); a run without one gets the agent's defaults."""
    from edgekit.deploy.bundle import build_options

    assert build_options(tmp_path) == {}
    (tmp_path / "recipe.resolved.yaml").write_text(
        "targets:\n  - backend: onnxruntime\n  - backend: tensorrt\n    host: ssh://orin\n"
        "    options: {precision: int8, workspace_mb: 2048, runtime: tensorrt}\n")
    assert build_options(tmp_path) == {"precision": "int8", "workspace_mb": 2048}
