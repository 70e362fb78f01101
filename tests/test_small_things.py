"""Small things a user hits (issue 17, item 5), one test each: Rich markup in printed text, the SPDX license,
third-party import noise, `edgekit --version`, typed target options, the runtime's own peak memory, per-class F1
of the chosen variant, and readable figures (no overprinting, 95% CI bars, every budget line, no overflow at
390 px in headless Chromium). The report tests read the shared real run (conftest.tiny_run)."""
import html
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, copy_run, run_cli
from edgekit.errors import EdgekitError

WIDE = {"COLUMNS": "400"}  # no wrapping of table cells: the text is compared as printed


def _flat(text: str) -> str:
    return " ".join(text.split())


# ---- (a) Rich markup ----------------------------------------------------------------------------------------

def test_doctor_prints_install_hints_with_their_brackets():
    """`pip install 'edgekit[tensorrt]'` must not lose its `[tensorrt]` to Rich's markup parser."""
    info = json.loads(run_cli("doctor", "--json").stdout)
    missing = {n: b for n, b in info["backends"].items() if not b["available"]}
    if not missing:
        pytest.skip("every backend is installed here: doctor prints no install hint")
    r = run_cli("doctor", env=WIDE)
    assert r.returncode == 0, r.stderr
    for name, b in missing.items():
        assert _flat(b["install"]) in _flat(r.stderr), (name, b["install"])
    if "tensorrt" in missing:
        assert "pip install 'edgekit[tensorrt]'" in r.stderr


def test_cli_error_and_hint_keep_square_brackets(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"variants": [{"name": "a"}], "extra[openvino]": 1}))
    r = run_cli("data", "check", p, env=WIDE)
    assert r.returncode == 2, r.stderr
    assert "unknown key 'extra[openvino]'" in r.stderr, r.stderr


# ---- (b) license --------------------------------------------------------------------------------------------

def test_pyproject_license_is_spdx_and_builds_without_deprecation_warnings(tmp_path):
    import setuptools

    if tuple(int(x) for x in setuptools.__version__.split(".")[:2]) < (77, 0):
        pytest.skip(f"setuptools {setuptools.__version__} predates SPDX license expressions (pyproject asks for >=77)")
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / f, tmp_path / f)
    (tmp_path / "edgekit").mkdir()
    (tmp_path / "edgekit" / "__init__.py").write_text("")
    (tmp_path / "meta").mkdir()
    r = subprocess.run([sys.executable, "-W", "always", "-c",
                        "from setuptools import build_meta as b; print(b.prepare_metadata_for_build_wheel('meta'))"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Deprecat" not in r.stderr and "license" not in r.stderr.lower(), r.stderr[-2000:]
    meta = (tmp_path / "meta" / r.stdout.strip().splitlines()[-1] / "METADATA").read_text()
    assert "License-Expression: Apache-2.0" in meta


# ---- (c) import noise ---------------------------------------------------------------------------------------

NOISE = ("Failed to load", "Detected no triton", "Enum subclass")


def _import_torchao_after_cli_options(verbose: bool) -> str:
    code = ("import sys\nfrom edgekit.cli import _options\n_options(verbose=sys.argv[1] == '1', version=False)\n"
            "import torchao\nimport logging\nlogging.getLogger('torchao').warning('a torchao warning edgekit does not know')\n")
    r = subprocess.run([sys.executable, "-c", code, "1" if verbose else "0"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stderr


def test_third_party_import_noise_is_hidden_unless_verbose():
    loud = _import_torchao_after_cli_options(verbose=True)
    if not any(n in loud for n in NOISE):
        pytest.skip("torchao prints none of its import warnings on this machine")
    quiet = _import_torchao_after_cli_options(verbose=False)
    assert not [n for n in NOISE if n in quiet], quiet
    assert "a torchao warning edgekit does not know" in quiet  # only the known messages are dropped


# ---- (d) --version ------------------------------------------------------------------------------------------

def test_version_flag():
    r = run_cli("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"edgekit {importlib.metadata.version('edgekit')}\n"


# ---- (e) per-backend option schemas -------------------------------------------------------------------------

@pytest.mark.parametrize("backend,options,key,allowed", [
    ("openvino", {"hnit": "THROUGHPUT"}, "hnit", "device, precision, threads, hint, qdq_rewrite"),
    ("onnxruntime", {"precison": "int8"}, "precison", "threads, optimization, providers, precision, qdq_rewrite"),
    ("tensorrt", {"workspace": 2048}, "workspace", "workspace_mb"),
])
def test_a_typo_in_target_options_names_the_key_and_the_allowed_ones(backend, options, key, allowed):
    from edgekit.recipe import parse_recipe

    with pytest.raises(EdgekitError) as e:
        parse_recipe({"variants": [{"name": "a"}], "targets": [{"backend": backend, "options": options}]}, "r.yaml")
    assert f"targets[0].options: unknown {backend} option '{key}'" in e.value.message
    assert allowed in e.value.message


def test_target_options_are_typed_and_kept_as_written():
    from edgekit.recipe import load_recipe, parse_recipe

    with pytest.raises(EdgekitError, match=r"openvino option 'hint': .*'LATENCY' or 'THROUGHPUT' \(got 'FAST'\)"):
        parse_recipe({"variants": [{"name": "a"}], "targets": [{"backend": "openvino", "options": {"hint": "FAST"}}]})
    r = parse_recipe({"variants": [{"name": "a"}], "targets": [{"backend": "openvino", "options": {"hint": "latency"}},
                                                               {"backend": "tensorrt", "host": "ssh://u@h", "options": {"runtime": "auto", "precision": "int8"}}]})
    assert r.targets[0].options == {"hint": "latency"} and r.targets[1].options == {"runtime": "auto", "precision": "int8"}
    for recipe in sorted((REPO / "recipes").glob("*.yaml")):
        load_recipe(recipe)  # every shipped recipe's options fit its backend's schema


# ---- the shared real run ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def report(tiny_run, tmp_path_factory):
    from edgekit.report import write_report
    from edgekit.results import load_results

    run = copy_run(tiny_run[0], tmp_path_factory.mktemp("small") / "run")
    out = write_report(run)
    return run, load_results(run / "results.json"), out


# ---- (f) peak memory ----------------------------------------------------------------------------------------

def test_peak_memory_is_the_runtimes_own_not_the_torch_process(report):
    from edgekit.bench import peak_rss_bytes, runtime_peak_rss
    from edgekit.io import slug

    run, res, out = report
    local = [r for r in res.results if r.status == "ok" and res.targets[r.target].location == "local"]
    assert local
    for r in local:
        assert r.peak_rss_bytes and r.peak_rss_scope == "runtime", (r.variant, r.target)
    art = run / "targets" / slug(local[0].target) / local[0].variant / "artifact"
    child = runtime_peak_rss(art, [1])
    assert child["torch_loaded"] is False and child["peak_rss_bytes"]
    import torch  # noqa: F401 — this process holds torch (it trained the model): its peak is what the old column showed

    assert child["peak_rss_bytes"] < peak_rss_bytes()
    md = out["md"].read_text()
    assert "Peak mem (runtime alone)" in md and "no torch" in md and " MB ‡" not in md


# ---- (g) per-class F1 of the chosen variant -----------------------------------------------------------------

def test_per_class_f1_is_each_targets_chosen_variant_on_that_target(report):
    from edgekit.report import analyse, pct, recommend

    _, res, out = report
    md = out["md"].read_text()
    recs = recommend(res, analyse(res)[0])
    chosen = {t: rec[2] for t, rec in recs.items() if rec[2] is not None and rec[2].r.metrics and rec[2].r.metrics.per_class_f1}
    assert len(chosen) >= 1
    section = md.split("### Per-class F1 of the chosen variant on each target", 1)[1].split("\n## ", 1)[0]
    for t, w in chosen.items():
        line = next((x for x in section.splitlines() if x.startswith(f"| {w.r.variant} on {t} (chosen")), None)
        assert line, (t, w.r.variant, section)
        f1 = w.r.metrics.per_class_f1
        assert [c.strip() for c in line.strip("|").split("|")[1:]] == [pct(f1[c]) for c in f1], (t, line)


# ---- (h) figures --------------------------------------------------------------------------------------------

def _texts(svg: str) -> list[str]:
    return [html.unescape(t) for t in re.findall(r">([^<>]+)</text>", svg)]


def test_pareto_plot_has_no_point_labels_ci_bars_and_every_budget_line(report):
    from edgekit.report import analyse, recommend
    from edgekit.report_plots import p50_interval, write_figures

    run, res, _ = report
    by_target = analyse(res)[0]
    svg = write_figures(res, by_target, recommend(res, by_target), run)["pareto"]
    texts = _texts(svg)
    plotted = [w for rows in by_target.values() for w in rows if w.metric is not None and w.p50]
    for name in {w.r.variant for w in plotted}:
        assert texts.count(name) == 1, (name, texts)  # named once, in the legend: never beside each point
    drops = {round(100 * (v.budget.max_accuracy_drop if v.budget else res.budget.max_accuracy_drop), 6) for n, v in res.variants.items()
             if any(w.r.variant == n for w in plotted)}
    assert len(drops) >= 2  # the run holds one variant to a budget of its own
    for d in drops:
        assert any(t.startswith(f"budget −{d:g} pt: ") for t in texts), (d, texts)
    with_x = [w for w in plotted if p50_interval(w.r.round_medians.get(1))]
    assert with_x, "no interleaved timing rounds in the run: no latency interval to draw"
    bars = len(with_x) + sum(1 for w in plotted if w.r.metrics and getattr(w.r.metrics, f"{res.budget.metric}_ci95"))
    assert svg.count('<g id="LineCollection_') == bars


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(not _chromium(), reason="chromium not installed (Debian package `chromium`)")
def test_report_has_no_horizontal_overflow_at_390_and_1280_px(report, tmp_path):
    """Headless Chromium will not make a window narrower than 500 px, so the report is laid out in iframes of the
    two widths (srcdoc: same origin, so a script of the probe page reads each one's scroll width)."""
    page = report[2]["html"].read_text()
    widths = (390, 1280)
    probe = tmp_path / "probe.html"
    probe.write_text('<!DOCTYPE html><html><body style="margin:0">' + "".join(
        f'<iframe id="w{w}" style="border:0;width:{w}px;height:900px" srcdoc="{html.escape(page, quote=True)}"></iframe>' for w in widths)
        + '<script>addEventListener("load", () => { for (const f of document.querySelectorAll("iframe")) { const d = '
          'f.contentDocument.documentElement; f.setAttribute("data-width", d.scrollWidth + "," + d.clientWidth); } });</script></body></html>')
    r = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                        "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1000",
                        "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=180)
    got = dict(re.findall(r'id="w(\d+)"[^>]*data-width="([^"]+)"', r.stdout))
    assert set(got) == {str(w) for w in widths}, r.stderr[-2000:]
    for w in widths:
        scroll, client = map(int, got[str(w)].split(","))
        assert client == w and scroll <= client, (w, scroll, client)
