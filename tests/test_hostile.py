"""Hostile input (issue 16), table-driven: tests/hostile_table.py holds one row per class of malicious or broken
input (code references in downloaded files, resource limits, inputs a command must not overwrite, bad data,
malformed files, target strings, report escaping). Every row runs the real `edgekit` command in a subprocess on its
own copy of a small real workspace (an untrained tiny checkpoint, its ONNX, an ONNX Runtime artifact, a run
directory) and is held to the README's promises ("Reliability promises"):

- the exit code (2 for a user's input);
- exactly one `error:` line naming the culprit (file, key, option, value), followed by a `hint:` line; no traceback;
- by sha256 of every file in the workspace before and after: no file present before the command changed, unless
  the row says it may; no temp file left behind; nothing that looks finished where a failed command would write;
- no code a file names ran (a marker file that any such code would create is absent);
- peak memory (os.wait4's ru_maxrss of the command) under 2 GB, worst case printed.

Signals (SIGINT/SIGTERM exit 130/143) are tested in their own file. Peak memory per row, sorted:
`python benchmarks/hostile_memory.py`.
"""
from __future__ import annotations

import re

import pytest
from hostile_table import CASES, RSS_BOUND, build_workspace, changed_inputs, left_temp_files, run_all
from test_bad_input import assert_nothing_finished, assert_one_line_error


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every row, three commands at a time: {name: (workspace, Outcome)}."""
    base = build_workspace(tmp_path_factory.mktemp("hostile") / "base")
    return run_all(base, tmp_path_factory.mktemp("hostile-rows"))


def _describe(o) -> str:
    return (f"argv {o.argv}\nexit {o.returncode}{' (killed: ' + o.killed + ')' if o.killed else ''}\n"
            f"--- stdout\n{o.stdout[-1500:]}\n--- stderr\n{o.stderr[-2500:]}")


def test_the_table_has_at_least_60_classes():
    assert len(CASES) >= 60, len(CASES)
    assert {c.category for c in CASES.values()} >= {"trust", "limits", "overwrite", "data", "files", "targets", "escaping"}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input(outcomes, name):
    c = CASES[name]
    w, o = outcomes[name]
    assert not o.killed, f"the watchdog killed the command: {o.killed}\n" + _describe(o)
    assert not w.marker.exists(), f"code named by a file ran ({w.marker.read_text()!r})\n" + _describe(o)
    if c.exit == 2:
        assert_one_line_error(o, *c.needles)
        assert_nothing_finished(w.out)  # where the failed command would have written
    else:
        assert o.returncode == c.exit, _describe(o)
        assert "Traceback" not in o.stdout + o.stderr, _describe(o)
    assert not changed_inputs(c, o), f"files present before the command changed: {changed_inputs(c, o)}\n" + _describe(o)
    assert not left_temp_files(o), f"temp files left behind: {left_temp_files(o)}"
    if c.check:
        c.check(w, o)
    assert o.peak_rss < RSS_BOUND, f"peak RSS {o.peak_rss >> 20} MiB"


def test_huge_threads_refused_before_any_thread_starts(outcomes):
    """`--threads 100000` (bench and compile): exit 2, the message names the option and its limit, and the process
    never came near the threads asked for (the watchdog samples its thread count; ONNX Runtime would start one
    per requested thread)."""
    for name in ("limit-bench-threads-huge", "limit-compile-threads-huge"):
        _, o = outcomes[name]
        message = assert_one_line_error(o, "--threads")
        assert re.search(r"\b\d+\b", message.replace("100000", "")), f"the limit is not named: {message!r}"
        assert o.peak_threads < 1000, f"{o.peak_threads} threads seen"


def test_worst_case_peak_memory_under_2_gb(outcomes):
    """Issue 16: the suite's worst case stays under 2 GB (ru_maxrss of each command via os.wait4)."""
    rows = sorted(((o.peak_rss, n) for n, (_, o) in outcomes.items()), reverse=True)
    worst, name = rows[0]
    print(f"\nworst-case peak RSS: {worst / 2**20:.0f} MiB ({name}); median {rows[len(rows) // 2][0] / 2**20:.0f} MiB; "
          "next: " + ", ".join(f"{n} {r / 2**20:.0f} MiB" for r, n in rows[1:4]))
    assert worst < RSS_BOUND, f"{name}: {worst >> 20} MiB"
