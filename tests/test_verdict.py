"""The speed verdict: variants timed against each other in interleaved rounds, every speedup vs the reference with a
95% bootstrap interval over the rounds, and the one rule (edgekit.agent.measure.wins: faster only when the
interval's lower end is above 1.0) deciding in `edgekit run`, the report and the baselines. Synthetic timing samples
for the rule itself; a real run for what results.json and the report carry. No timing is asserted."""
import json
import statistics

import numpy as np
import pytest
import yaml

from edgekit.agent import measure
from edgekit.judge import SPEED_RULE, speed_verdict, speedup_record
from edgekit.results import SCHEMA, Results

ROUNDS = 5


def _rounds(rng, p50_ms: float, spread: float, load: np.ndarray, n: int = 60) -> list:
    """Per-round medians (seconds) of synthetic timing samples: a lognormal spread around `p50_ms`, times the
    round's machine load (shared by every model timed in that round, as interleaving makes it)."""
    return [statistics.median(float(x) for x in load[k] * p50_ms / 1e3 * rng.lognormal(0.0, spread, n)) for k in range(len(load))]


def _pair(ref_ms, var_ms, spread, seed=0):
    rng = np.random.default_rng(seed)
    load = rng.uniform(0.8, 1.6, ROUNDS)  # a busy machine: rounds differ by up to 2x, for both models alike
    return _rounds(rng, ref_ms, spread, load), _rounds(rng, var_ms, spread, load)


def test_overlapping_distributions_are_no_measurable_difference():
    """The issue's case: a 1.08x 'win' inside noise (CV around 70%) is not a win."""
    ref, var = _pair(0.284, 0.264, spread=0.7)
    ci = measure.speedup_ci(ref, var)
    assert ci is not None and ci[0] <= 1.0 <= ci[1] and not measure.wins(ci)
    assert speed_verdict(ci) == "no measurable difference"


def test_clearly_separated_distributions_are_a_win():
    ref, var = _pair(0.284, 0.142, spread=0.05)  # 2x faster, small noise
    ci = measure.speedup_ci(ref, var)
    assert ci[0] > 1.0 and measure.wins(ci) and speed_verdict(ci) == "faster"
    assert ci[0] <= statistics.median(r / v for r, v in zip(ref, var)) <= ci[1]


def test_a_slower_variant_is_judged_slower_and_never_wins():
    ref, var = _pair(0.142, 0.284, spread=0.05)
    ci = measure.speedup_ci(ref, var)
    assert ci[1] < 1.0 and not measure.wins(ci) and speed_verdict(ci) == "slower"


def test_the_bootstrap_is_deterministic_and_needs_paired_rounds():
    ref, var = _pair(0.3, 0.25, spread=0.3, seed=3)
    assert measure.speedup_ci(ref, var) == measure.speedup_ci(list(ref), list(var))  # the fixed seed
    assert measure.speedup_ci(ref, var, seed=7) == measure.speedup_ci(ref, var, seed=7)
    assert measure.speedup_ci(ref[:2], var[:2]) is None  # fewer than MIN_ROUNDS: no interval, so no win
    assert measure.speedup_ci(ref, var[:-1]) is None  # rounds not paired
    assert speed_verdict(None) == "not judged" and not measure.wins(None)


def test_rounds_interleave_the_models_and_split_the_budget():
    """Every model at each batch size, in order, each round; the iteration budget split over the rounds."""
    seen = []
    calls = {n: {b: (lambda n=n, b=b: seen.append((n, b))) for b in (1, 4)} for n in ("fp32", "int8")}
    out = measure.time_rounds(calls, {"rounds": 3, "iterations": 9, "warmup": 4, "warmup_seconds": 0.0})
    for n in calls:
        for b in ("1", "4"):
            assert out[n][b]["latency_ms"]["n"] == 9 and len(out[n][b]["round_medians_ms"]) == 3
    blocks = [seen[0]]
    for x in seen[1:]:
        if x != blocks[-1]:
            blocks.append(x)
    order = [("fp32", 1), ("fp32", 4), ("int8", 1), ("int8", 4)]
    assert blocks == order * 3  # round after round, never one model's rounds back to back
    assert len(seen) == 4 * (9 + 4 + 2 * 1)  # 3 timed per round; 4 warm-up calls, then a quarter (1) in later rounds


# ------------------------------------------------------------------------------------------------ the recommendation

def _doc(variants: dict, sessions: dict | None = None, stored: bool = True, cv: float = 0.01) -> Results:
    """results.json of one target: {name: (accuracy, passes, round medians in seconds)}; fp32 is the reference."""
    ref_rounds = variants["fp32"][2]
    rows = []
    for name, (acc, _, rounds) in variants.items():
        p50 = statistics.median(rounds)
        row = {"variant": name, "target": "cpu", "metrics": {"accuracy": acc}, "round_medians": {"1": rounds},
               "timing_session": (sessions or {}).get(name, "s1"),
               "latency": {"1": {"median": p50, "p90": p50 * 1.1, "p99": p50 * 1.2, "cv": cv, "n": 300, "high_variance": cv > 0.05}}}
        if stored and name != "fp32":
            row["speedup"] = speedup_record(ref_rounds, rounds, statistics.median(ref_rounds), p50, "fp32")
        rows.append(row)
    return Results.model_validate({
        "schema": SCHEMA, "run": {"name": "synthetic"}, "budget": {"max_accuracy_drop": 0.02}, "reference_variant": "fp32",
        "variants": {n: {"passes": [{"pass": p} for p in passes]} for n, (_, passes, _) in variants.items()},
        "targets": {"cpu": {"backend": "onnxruntime"}}, "results": rows})


def _rec(res: Results):
    from edgekit.report import analyse, recommend

    kind, text, row = recommend(res, analyse(res)[0])["cpu"]
    return kind, text, row.r.variant if row else None


def test_noise_recommends_the_simpler_model_with_the_warning_beside_it():
    ref, var = _pair(0.284, 0.264, spread=0.7)
    kind, text, chosen = _rec(_doc({"fp32": (0.66, [], ref), "int8": (0.66, ["quantize"], var)}, cv=0.69))
    assert chosen == "fp32" and kind == "warn"
    assert text.startswith("keep fp32: no measurable difference") and "int8" in text and "95% CI" in text
    assert "high variation" in text and "69.0%" in text  # the CV sits in the verdict itself


def test_a_clear_win_is_shipped_with_its_interval():
    ref, var = _pair(0.284, 0.142, spread=0.05)
    kind, text, chosen = _rec(_doc({"fp32": (0.66, [], ref), "int8": (0.655, ["quantize"], var)}))
    lo, hi = measure.speedup_ci(ref, var)
    assert chosen == "int8" and kind == "ok" and text.startswith("ship int8: ")
    assert f"95% CI {lo:.2f}–{hi:.2f}×" in text and "high variation" not in text


def test_a_slower_variant_is_not_shipped():
    ref, var = _pair(0.142, 0.284, spread=0.05)
    kind, text, chosen = _rec(_doc({"fp32": (0.66, [], ref), "int8": (0.66, ["quantize"], var)}))
    assert chosen == "fp32" and text.startswith("keep fp32: every variant within the budget is slower (closest: int8 0.")


def test_the_least_changed_variant_wins_unless_a_more_changed_one_is_measurably_faster():
    rng = np.random.default_rng(5)
    load = rng.uniform(0.8, 1.6, ROUNDS)
    ref, int8, both = (_rounds(rng, ms, s, load) for ms, s in ((0.3, 0.05), (0.15, 0.3), (0.145, 0.3)))
    kind, text, chosen = _rec(_doc({"fp32": (0.66, [], ref), "pruned-int8": (0.65, ["prune", "quantize"], both),
                                    "int8": (0.66, ["quantize"], int8)}))
    assert not measure.wins(measure.speedup_ci(int8, both))  # the pair the rule compares
    assert chosen == "int8" and "pruned-int8" in text and "not measurably faster than int8" in text
    fast = _rounds(rng, 0.05, 0.05, load)  # 6x: measurably faster than int8 too
    _, text, chosen = _rec(_doc({"fp32": (0.66, [], ref), "int8": (0.66, ["quantize"], int8), "pruned-int8": (0.65, ["prune", "quantize"], fast)}))
    assert chosen == "pruned-int8" and text.startswith("ship pruned-int8")


def test_rows_not_timed_together_are_not_judged():
    """A device run resumed later times the rest in another session: those pairs get no interval, so no win."""
    from edgekit.pipeline import _with_speedups
    from edgekit.report import analyse

    ref, var = _pair(0.284, 0.142, spread=0.05)
    rows = [{"variant": n, "status": "ok", "latency": {1: {"median": statistics.median(r)}}, "round_medians": {1: r}, "timing_session": s}
            for n, r, s in (("fp32", ref, "a"), ("int8", var, "b"))]
    assert _with_speedups(rows)[1]["speedup"]["verdict"] == "not judged"
    res = _doc({"fp32": (0.66, [], ref), "int8": (0.66, ["quantize"], var)}, sessions={"int8": "b"}, stored=False)
    assert analyse(res)[0]["cpu"][1].verdict == "not judged" and _rec(res)[2] == "fp32"
    rows[1]["timing_session"] = "a"
    assert _with_speedups(rows)[1]["speedup"]["verdict"] == "faster"


def test_the_report_judges_old_files_without_stored_verdicts_by_the_same_rule():
    ref, var = _pair(0.284, 0.142, spread=0.05)
    variants = {"fp32": (0.66, [], ref), "int8": (0.66, ["quantize"], var)}
    assert _rec(_doc(variants, stored=False))[1] == _rec(_doc(variants))[1]


def test_baselines_apply_the_same_rule():
    from edgekit.baselines import add_ratios, standing

    def row(key, backend, precision, rounds_s, variant=None):
        ms = [1e3 * x for x in rounds_s]
        lat = {"median": statistics.median(ms), "p99": 1.5 * max(ms), "n": 100}
        return {"key": key, "name": f"{key} {backend}", "backend": backend, "precision": precision, "variant": variant,
                "metrics": {"accuracy": 0.9, "f1_macro": 0.9}, "latency_ms": {1: lat, 8: lat}, "throughput": {1: 1e3 / lat["median"], 8: 8e3 / lat["median"]},
                "round_medians_ms": {1: ms, 8: ms}}

    rng = np.random.default_rng(1)
    load = rng.uniform(0.8, 1.6, ROUNDS)
    rows = [row("B0", "torch", "fp32", _rounds(rng, 1.0, 0.05, load)), row("B1", "onnxruntime", "fp32", _rounds(rng, 0.284, 0.05, load)),
            row("B2", "onnxruntime", "int8", _rounds(rng, 0.264, 0.7, load)), row("E", "onnxruntime", "int8", _rounds(rng, 0.142, 0.05, load), "int8")]
    add_ratios(rows)
    st = standing(rows, {"speedup_vs_B1": 1.5})["onnxruntime"]
    b2 = st["int8_faster_than_fp32"]["B2 onnxruntime"]
    assert b2["speedup_vs_B1"] > 1.0 and b2["verdict"] == "no measurable difference" and b2["met"] is False
    e = st["int8_faster_than_fp32"]["E onnxruntime"]
    ci = measure.speedup_ci(rows[1]["round_medians_ms"][1], rows[3]["round_medians_ms"][1])
    assert e["verdict"] == "faster" and e["met"] is True and e["ci95"] == pytest.approx(list(ci))
    assert st["speedup_vs_B1"]["met"] == (st["speedup_vs_B1"]["ci95"][0] > 1.5)


# ------------------------------------------------------------------------------------------------ a real run

@pytest.mark.slow
def test_a_real_run_stores_rounds_intervals_and_verdicts_and_states_the_rule(tmp_path, tiny_checkpoint, fsdd):
    from edgekit.pipeline import run

    rounds = 3
    recipe = {"name": "verdict", "data": {"dataset": "avdigits", "fsdd": fsdd, "seed": 0}, "calibration": {"size": 32},
              "budget": {"max_accuracy_drop": 50.0}, "variants": [{"name": "int8", "passes": [{"quantize": {}}]}],
              "targets": [{"backend": "onnxruntime"}],
              "bench": {"batch_sizes": [1, 4], "warmup": 2, "min_iterations": 6, "min_seconds": 0.06, "rounds": rounds}}
    (tmp_path / "verdict.yaml").write_text(yaml.safe_dump(recipe))
    out = run(tmp_path / "verdict.yaml", tmp_path / "run", checkpoint=tiny_checkpoint, progress=False)
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    rows = {r["variant"]: r for r in res["results"]}
    assert {r["status"] for r in rows.values()} == {"ok"}
    for r in rows.values():
        assert len(r["round_medians"]["1"]) == len(r["round_medians"]["4"]) == rounds
        assert r["latency"]["1"]["n"] >= 6
    assert rows["fp32"]["timing_session"] == rows["int8"]["timing_session"]  # timed in the same interleaved rounds
    sp = rows["int8"]["speedup"]
    ci = measure.speedup_ci(rows["fp32"]["round_medians"]["1"], rows["int8"]["round_medians"]["1"])
    assert sp["vs"] == "fp32" and sp["rounds"] == rounds and sp["ci95"] == pytest.approx(list(ci))  # reproducible from the file
    per_round = np.asarray(rows["fp32"]["round_medians"]["1"]) / np.asarray(rows["int8"]["round_medians"]["1"])
    assert sp["verdict"] == speed_verdict(ci) and sp["value"] == pytest.approx(float(np.median(per_round)))
    assert ci[0] <= sp["value"] <= ci[1]  # the value is the statistic the interval is of, so it lies inside it
    assert rows["fp32"].get("speedup") is None  # the reference is what the others are compared with
    timing = json.loads((tmp_path / "run" / "targets" / "onnxruntime" / "timing.json").read_text())
    assert timing["order"] == ["fp32", "int8"] and timing["protocol"]["rounds"] == rounds
    md = out["md"].read_text()
    rule = SPEED_RULE.format(ref="fp32")
    assert rule in md and md.index(rule) < md.index("## Variants per target")  # stated beside the recommendation
    (line,) = out["recommendation"]
    assert line.startswith("onnxruntime: ship int8" if measure.wins(ci) else "onnxruntime: keep fp32")
