"""Running a bundle on one device over SSH: preflight the device's Python, upload what the device lacks, run the
agent, fetch each variant's result as soon as it is done, clean up. Results land in the target's results folder
(results.json, fingerprint.json, <variant>.json, <variant>.layers.json, engines/, agent.log); a variant whose
result is there under the same resume key (ONNX, settings, samples, device software) is not run again."""
from __future__ import annotations

import hashlib
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.deploy.agent_results import one_line, to_result
from edgekit.deploy.bundle import AGENT_PACKAGE
from edgekit.errors import EdgekitError
from edgekit.io import atomic_write_json, load_json, parse_json
from edgekit.ssh import Connection, Target
from edgekit.ui import console, escape

REMOTE_BASE = "~/.cache/edgekit"
MIN_FREE_BYTES = 64 << 20

# Run by the device's Python before anything is copied: finds a missing Python, numpy or runtime, and a full
# disk, with nothing but the standard library (and syntax old Pythons can still parse, to say they are too old).
PREFLIGHT = r"""
import json, os, platform, shutil, subprocess, sys
out = {"python": platform.python_version(), "executable": sys.executable}
try:
    import numpy
    out["numpy"] = numpy.__version__
except Exception as e:
    out["numpy_error"] = "%s: %s" % (type(e).__name__, e)
for mod in ("tensorrt", "onnxruntime"):
    try:
        out[mod] = __import__(mod).__version__
    except Exception as e:
        out[mod + "_error"] = "%s: %s" % (type(e).__name__, e)
base = os.path.abspath(os.path.expanduser(sys.argv[1]))
try:
    os.makedirs(base, exist_ok=True)
    out["base"] = base
    out["disk_free"] = shutil.disk_usage(base).free
except OSError as e:
    out["base_error"] = "%s: %s" % (base, e)
try:
    out["l4t"] = open("/etc/nv_tegra_release").readline().strip()
except OSError:
    out["l4t"] = None
try:
    out["power_mode"] = subprocess.run(["nvpmodel", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=10).stdout.strip()
except Exception:
    out["power_mode"] = None
print(json.dumps(out))
"""


@dataclass
class TargetRun:
    """Everything about running one bundle on one device: where results go and how to reach it."""

    target: Target
    bundle: Path
    variants: list[str]
    results_dir: Path
    mode: str = "deploy"
    runtime: str = "auto"
    known_hosts: Path | None = None
    accept_new_host: bool = False
    identity: Path | None = None
    copy_result_to: object = None  # callable(variant, slug) -> Path | None
    on_event: object = None  # callable(slug, event dict)
    summary: dict = field(default_factory=dict)

    def say(self, text: str) -> None:
        console.print(f"[bold]{escape(self.target.slug)}[/]: {escape(text)}", highlight=False, soft_wrap=True)

    def event(self, ev: dict) -> None:
        if self.on_event:
            self.on_event(self.target.slug, ev)


def preflight(conn: Connection, run: TargetRun, bundle_bytes: int) -> dict:
    """What the device has (Python, numpy, runtimes, free disk, L4T, power mode), checked before anything is
    copied; the runtime to use is added as "runtime". Raises EdgekitError naming what is missing."""
    t = run.target
    code, out, err = conn.run([t.python, "-c", PREFLIGHT, t.workdir or REMOTE_BASE], timeout=120)
    if code == 127 or "not found" in err or "No such file" in err:
        raise EdgekitError(f"no Python at '{t.python}' on {t.address}",
                           "install it (sudo apt install python3 python3-numpy) or name it: ssh://...?python=/usr/bin/python3")
    try:
        info = parse_json(out.strip().splitlines()[-1], f"the preflight output of {t.address}")
        if not isinstance(info, dict) or not isinstance(info.get("python"), str):
            raise IndexError
    except (EdgekitError, IndexError):
        first = (err.strip().splitlines() or ["no output"])[-1]
        raise EdgekitError(f"'{t.python}' on {t.address} could not run the preflight check ({first[:200]})",
                           "edgekit's agent needs Python 3.8+ (JetPack 6 has 3.10); point ?python= at it") from None
    if tuple(int(x) for x in info["python"].split(".")[:2]) < (3, 8):
        raise EdgekitError(f"Python {info['python']} on {t.address} is too old", "the agent needs Python 3.8+; point ?python= at a newer one")
    if "numpy" not in info:
        raise EdgekitError(f"the device's Python ({t.python}, {info['python']}) has no numpy: {info.get('numpy_error', '')}",
                           "install it on the device: sudo apt install python3-numpy (or pip install numpy)")
    has_trt, has_ort = "tensorrt" in info, "onnxruntime" in info
    if run.runtime == "tensorrt" and not has_trt:
        raise EdgekitError(f"TensorRT's Python bindings are not importable on {t.address} ({info.get('tensorrt_error', '')})",
                           "on a Jetson install JetPack's python3-libnvinfer; or use the ONNX Runtime fallback with --runtime onnxruntime")
    if run.runtime == "onnxruntime" and not has_ort:
        raise EdgekitError(f"ONNX Runtime is not importable on {t.address} ({info.get('onnxruntime_error', '')})",
                           "install it on the device (pip install onnxruntime) or use --runtime tensorrt")
    if run.runtime == "auto" and not (has_trt or has_ort):
        raise EdgekitError(f"neither TensorRT nor ONNX Runtime is importable by {t.python} on {t.address}",
                           "install JetPack's python3-libnvinfer (TensorRT) or pip install onnxruntime on the device")
    if "base_error" in info:
        raise EdgekitError(f"cannot use the remote folder {info['base_error']}", "pass a writable folder with ?workdir=/path")
    need = 3 * bundle_bytes + MIN_FREE_BYTES  # the bundle, engines of a similar size, results and logs
    if info["disk_free"] < need:
        raise EdgekitError(f"the device's disk is full: {info['disk_free'] >> 20} MiB free in {info['base']}, need about {need >> 20} MiB",
                           "free space on the device, or use another disk with ?workdir=/path")
    info["runtime"] = run.runtime if run.runtime != "auto" else ("tensorrt" if has_trt else "onnxruntime")
    return info


def resume_key(manifest: dict, entry: dict, run: TargetRun, device: dict) -> str:
    """What a variant's result depends on: its ONNX, the run's mode and settings, the samples, the device's software."""
    ident = {"onnx": entry["sha256"], "mode": run.mode, "runtime": device["runtime"], "build": manifest["build"],
             "bench": manifest["bench"], "samples": (manifest.get("samples") or {}).get("sha256"),
             "device": {k: device.get(k) for k in ("l4t", "tensorrt", "onnxruntime", "power_mode", "python")}}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


def _done_locally(path: Path, key: str) -> bool:
    try:
        return load_json(path, "device result").get("resume_key") == key
    except (EdgekitError, AttributeError):
        return False


# ---- one target, step by step ----------------------------------------------------------------------------------

def run_target(run: TargetRun) -> dict:
    """Connect, preflight, upload what is needed, run the agent, fetch each result as it finishes, clean up.
    Returns a summary; raises EdgekitError (after saving whatever finished) when something failed."""
    manifest = _start(run)
    with Connection(run.target, run.known_hosts, run.accept_new_host, run.identity) as conn:
        run.say(f"connected to {run.target.address}")
        bundle_bytes = sum((run.bundle / rel).stat().st_size for rel in manifest["files"])
        device = run.summary["device"] = preflight(conn, run, bundle_bytes)
        keys, todo = _plan(run, manifest, device)
        if not todo:
            return _finish(run, manifest, "ok")
        remote = _upload(conn, run, manifest, todo, device["base"])
        code, agent = _run_agent(conn, run, manifest, remote, device, todo, keys)
        _raise_if_failed(run, manifest, remote, code, agent)
        if remote.startswith(f"{device['base']}/runs/"):  # never anything but the folder this run created
            conn.run(["rm", "-rf", "--", remote], timeout=120)
        return _finish(run, manifest, "ok")


def _start(run: TargetRun) -> dict:
    """Create the results folder, reset the summary; returns the bundle's manifest."""
    t = run.target
    run.results_dir.mkdir(parents=True, exist_ok=True)
    run.summary.update(target=t.url, slug=t.slug, results_dir=str(run.results_dir), status="running", variants={},
                       skipped=[], errors={})
    return json.loads((run.bundle / "manifest.json").read_text())


def _plan(run: TargetRun, manifest: dict, device: dict) -> tuple[dict, list[str]]:
    """(resume key of every variant, the variants still to run); those done here before are loaded into the summary."""
    entries = {e["name"]: e for e in manifest["variants"]}
    keys, todo, summary = {}, [], run.summary
    for name in run.variants:
        keys[name] = resume_key(manifest, entries[name], run, device)
        done = run.results_dir / f"{name}.json"
        if _done_locally(done, keys[name]):
            summary["skipped"].append(name)
            summary["variants"][name] = load_json(done, "device result")
        else:
            todo.append(name)
    if summary["skipped"]:
        run.say(f"{len(summary['skipped'])} variant(s) already done here, skipped: {', '.join(summary['skipped'])}")
    return keys, todo


def _upload(conn: Connection, run: TargetRun, manifest: dict, todo: list[str], base: str) -> str:
    """Copy the agent, the samples and the ONNX (and reference) of the variants to run into a new remote run folder."""
    remote = f"{base}/runs/{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    run.summary["remote_dir"] = remote
    entries = {e["name"]: e for e in manifest["variants"]}
    needed = [rel for rel in manifest["files"] if not rel.startswith("variants/")]
    for name in todo:
        e = entries[name]
        needed += [e["onnx"]] + ([e["reference"]] if e.get("reference") else [])
    for rel in sorted(set(needed)):
        conn.makedirs(f"{remote}/{rel}".rsplit("/", 1)[0])
        conn.put(run.bundle / rel, f"{remote}/{rel}")
    conn.put(run.bundle / "manifest.json", f"{remote}/manifest.json")
    run.say(f"bundle copied to {remote}; running {len(todo)} variant(s) with {run.summary['device']['runtime']}")
    return remote


class _AgentEvents:
    """Reacts to the agent's JSON-lines events as they arrive: fetches each finished variant at once, records
    errors, and remembers whether the agent finished (`done`) or gave up (`fatal`)."""

    def __init__(self, conn: Connection, run: TargetRun, manifest: dict, remote: str, keys: dict):
        self.conn, self.run, self.manifest, self.remote, self.keys = conn, run, manifest, remote, keys
        self.done, self.fatal = False, None

    def __call__(self, line: str) -> None:
        if not line.startswith("{"):
            return
        try:
            ev = parse_json(line, f"a progress line from {self.run.target.address}")
        except EdgekitError:
            return
        if not isinstance(ev, dict):
            return
        run, kind = self.run, ev.get("event")
        if kind == "fingerprint":
            self.conn.get(f"{self.remote}/results/fingerprint.json", run.results_dir / "fingerprint.json")
        elif kind == "variant_start":
            run.say(f"{ev['variant']}: started")
        elif kind == "variant_done":
            _fetch_variant(self.conn, run, self.remote, ev, self.keys[ev["variant"]], self.manifest)
            run.say(f"{ev['variant']}: done ({one_line(run.summary['variants'][ev['variant']])})")
        elif kind == "variant_error":
            lines = ev.get("key_lines") or []
            msg = ev["message"] + (": " + " | ".join(lines[-3:]) if lines and ev["kind"] == "build" else "")
            run.summary["errors"][ev["variant"]] = {"kind": ev["kind"], "message": msg, "hint": ev.get("hint", ""), "key_lines": lines}
            run.say(f"[red]{ev['variant']}: failed[/] ({ev['kind']}): {msg}")
        elif kind == "fatal":
            self.fatal = ev
        elif kind == "done":
            self.done = True
        run.event(ev)


def _run_agent(conn: Connection, run: TargetRun, manifest: dict, remote: str, device: dict, todo: list[str],
               keys: dict) -> tuple[int | None, _AgentEvents]:
    """Run the agent in the remote folder, streaming its events; its stderr is appended to agent.log.
    Returns (exit code or None when the connection dropped, the events seen)."""
    t = run.target
    argv = [t.python, "-B", "-m", AGENT_PACKAGE, "run", "--out", "results", "--runtime", device["runtime"],
            "--cache", f"{device['base']}/engines", "--only", ",".join(todo), "--mode", run.mode]
    events = _AgentEvents(conn, run, manifest, remote, keys)
    with open(run.results_dir / "agent.log", "a") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {remote}\n")
        code = conn.stream(argv, events, cwd=remote, stderr_to=log)
    return code, events


def _raise_if_failed(run: TargetRun, manifest: dict, remote: str, code: int | None, agent: _AgentEvents) -> None:
    """A dropped connection, a fatal agent error or any failed variant: save the summary, then raise saying which."""
    t, summary = run.target, run.summary
    if code is None or (not agent.done and not agent.fatal and code not in (0, 1)):
        finished = len(summary["variants"])
        _finish(run, manifest, "failed")
        tail = _log_tail(run.results_dir / "agent.log")
        why = "the connection dropped" if code is None else f"the agent exited with code {code}" + (f" ({tail})" if tail else "")
        raise EdgekitError(f"{t.address}: {why} during the run; {finished} of {len(run.variants)} variant(s) saved in {run.results_dir}",
                           f"rerun the same command to resume; the device keeps {remote} for inspection")
    if agent.fatal:
        f = agent.fatal
        _finish(run, manifest, "failed")
        raise EdgekitError(f"{t.address}: {f['kind'].replace('_', ' ')}: {f['message']}", f.get("hint", "") + f"; the device keeps {remote}")
    if summary["errors"]:
        summary["remote_dir_kept"] = remote
        _finish(run, manifest, "failed")
        name, err = next(iter(summary["errors"].items()))
        what = {"build": f"engine build failed for variant {name}", "plan": f"variant {name} cannot be built with this TensorRT",
                "runtime_missing": f"the runtime for variant {name} is missing"}.get(err["kind"], f"variant {name} failed on the device")
        more = f" (and {len(summary['errors']) - 1} more)" if len(summary["errors"]) > 1 else ""
        raise EdgekitError(f"{t.address}: {what}{more}: {err['message']}",
                           (err["hint"] + "; " if err["hint"] else "") + f"the device keeps {remote} for inspection")


def _finish(run: TargetRun, manifest: dict, status: str) -> dict:
    run.summary["status"] = status
    _write_summary(run, manifest)
    return run.summary


def _log_tail(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("---")]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def _fetch_variant(conn: Connection, run: TargetRun, remote: str, ev: dict, key: str, manifest: dict) -> None:
    """Bring one finished variant home (engine, layers, record as an edgekit-results/1 row); the record is written
    last, so its resume key marks the variant complete only when everything else arrived."""
    name, out = ev["variant"], run.results_dir
    if ev.get("engine"):
        conn.get(f"{remote}/{ev['engine']}", out / "engines" / f"{name}.engine")
    if ev.get("layers"):
        conn.get(f"{remote}/results/{ev['layers']}", out / f"{name}.layers.json")
    tmp = out / f".{name}.remote.json"
    conn.get(f"{remote}/results/{ev['file']}", tmp)
    try:
        raw = load_json(tmp, f"result of {name} from {run.target.address}")
    finally:
        tmp.unlink(missing_ok=True)
    if not isinstance(raw, dict):
        raise EdgekitError(f"the result of {name} from {run.target.address} is a JSON {type(raw).__name__}, not an object",
                           "the device's agent is not edgekit's: redeploy")
    raw.update(resume_key=key, target=run.target.url, result=to_result(raw, run.target.url))
    if "engine" in raw:
        raw["engine"]["local_file"] = str(out / "engines" / f"{name}.engine")
    atomic_write_json(out / f"{name}.json", raw)  # written last: its resume_key marks the variant complete
    dest = run.copy_result_to(name, run.target.slug) if run.copy_result_to else None
    if dest is not None:
        atomic_write_json(dest, raw)
    run.summary["variants"][name] = raw
    _write_summary(run, manifest)


def _write_summary(run: TargetRun, manifest: dict) -> None:
    s = run.summary
    fp = run.results_dir / "fingerprint.json"
    atomic_write_json(run.results_dir / "results.json", {
        "target": s.get("target"), "status": s.get("status"), "mode": run.mode, "runtime": (s.get("device") or {}).get("runtime"),
        "fingerprint": load_json(fp, "device fingerprint") if fp.exists() else None, "preflight": s.get("device"),
        "variants": s.get("variants", {}), "errors": s.get("errors", {}),
        "complete": all(v in s.get("variants", {}) for v in run.variants), "bench_protocol": manifest.get("bench")})


# ---- several targets ---------------------------------------------------------------------------------------

def run_targets(runs: list[TargetRun], check: bool = True) -> list[dict]:
    """Run several targets at once (one thread and one SSH connection each); every target's results are saved
    whatever the others do. With check, a failure is raised after all have finished."""

    def one(run: TargetRun) -> dict:
        try:
            return run_target(run)
        except EdgekitError as e:
            run.summary.update(status="failed", reason=e.message, hint=e.hint)
            if len(runs) > 1:  # a single target's error is printed once, by the caller
                run.say(f"[red]failed:[/] {e.message}")
            return run.summary

    if len(runs) == 1:
        summaries = [one(runs[0])]
    else:
        pool = ThreadPoolExecutor(max_workers=len(runs))
        try:
            summaries = list(pool.map(one, runs))
        finally:  # after Ctrl-C the main thread must not wait for the other devices' sessions to end
            pool.shutdown(wait=False, cancel_futures=True)
    if check:
        raise_failures(summaries)
    return summaries


def raise_failures(summaries: list[dict]) -> None:
    failed = [s for s in summaries if s.get("status") != "ok"]
    if len(failed) == 1:
        raise EdgekitError(failed[0].get("reason", "failed"), failed[0].get("hint", ""))
    if failed:
        raise EdgekitError(f"{len(failed)} of {len(summaries)} targets failed: " + "; ".join(f"{s['slug']}: {s.get('reason')}" for s in failed),
                           failed[0].get("hint", ""))


