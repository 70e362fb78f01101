"""The measurement core (edgekit/agent/measure.py) is the one definition of the metrics, parity numbers and timed
feeds that the host (evaluate, parity, bench) and the device agent report: checked against scikit-learn, and the
host and device paths checked against each other."""
import numpy as np
import pytest

from edgekit.agent import measure


def _labels(rng, n, classes, accuracy):
    y = rng.integers(0, classes, n)
    return y, np.where(rng.random(n) < accuracy, y, rng.integers(0, classes, n))


@pytest.mark.parametrize("absent", [False, True])
def test_classification_metrics_equal_scikit_learn_to_the_bit(absent):
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    rng = np.random.default_rng(0)
    for trial in range(200):
        classes, n = int(rng.integers(2, 12)), int(rng.integers(1, 300))
        y, p = _labels(rng, n, classes, rng.random())
        if absent:  # class 0 never in the labels (it may still be predicted): it counts, with F1 0
            y = np.where(y == 0, 1, y)
        labels = list(range(classes))
        prec, rec, f1, _ = precision_recall_fscore_support(y, p, labels=labels, average="macro", zero_division=0)
        per_class = f1_score(y, p, labels=labels, average=None, zero_division=0)
        m = measure.classification(y, p, [f"c{i}" for i in labels])
        assert (m["precision_macro"], m["recall_macro"], m["f1_macro"]) == (float(prec), float(rec), float(f1)), trial
        assert list(m["per_class_f1"].values()) == [float(v) for v in per_class]
        assert m["accuracy"] == float((y == p).mean()) and m["n"] == n


def test_evaluate_reports_the_core_metrics_plus_intervals():
    from edgekit.evaluate import classification_metrics

    y, p = _labels(np.random.default_rng(1), 150, 10, 0.7)
    names = [str(i) for i in range(10)]
    full, core = classification_metrics(y, p, names), measure.classification(y, p, names)
    assert {k: full[k] for k in core} == core
    assert set(full) - set(core) == {"accuracy_ci95", "f1_macro_ci95"}
    assert full["f1_macro_ci95"][0] <= full["f1_macro"] <= full["f1_macro_ci95"][1]


def test_host_parity_is_the_core_parity():
    from edgekit.data import ArrayDataset
    from edgekit.parity import check_parity, parity

    rng = np.random.default_rng(2)
    ref = rng.standard_normal((40, 5)).astype(np.float32)
    cand = ref + rng.normal(0, 0.3, ref.shape).astype(np.float32)
    labels = rng.integers(0, 5, 40)
    data = ArrayDataset({"x": np.zeros((40, 3), np.float32)}, labels, [])
    host = parity(ref, cand, data)
    assert host == measure.parity(ref, cand, labels)
    assert set(host) == {"n", "top1_agreement", "max_abs_diff", "mean_abs_diff", "finite",
                         "reference_accuracy", "candidate_accuracy"}
    assert host["max_abs_diff"] == float(np.abs(ref.astype(np.float64) - cand.astype(np.float64)).max())
    assert check_parity(dict(host), min_top1=0.0)["passed"]
    assert measure.parity_passed(dict(host), 1.01)["passed"] is False
    bad = measure.parity(ref, np.where(cand > 2, np.nan, cand))
    assert not bad["finite"] and not measure.parity_passed(bad, 0.0)["passed"]
    with pytest.raises(ValueError, match="shape"):
        measure.parity(ref, cand[:, :4])


def test_device_random_feed_is_the_host_feed(fsdd):
    """A bundle without samples: the agent times exactly the inputs `edgekit bench` times for the same spec."""
    from edgekit.data import avdigits
    from edgekit.models import preset_config
    from edgekit.train import reference_spec

    spec = reference_spec(preset_config("tiny", "early"), avdigits.preprocessing(fsdd))
    as_shipped = spec.model_dump()  # what the bundle's manifest carries
    for batch, seed in ((1, 0), (8, 3)):
        host, device = spec.example_inputs(batch, seed), measure.sample_feed(as_shipped, None, batch, seed)
        assert list(host) == list(device)
        for k in host:
            assert host[k].dtype == device[k].dtype and np.array_equal(host[k], device[k]), k
    text = spec.example_inputs(64)["text"]
    assert text.min() >= 1 and text.max() < spec.preprocessing["vocab_size"]


def test_real_samples_are_cycled_to_the_batch():
    samples = {"x": np.arange(3 * 2, dtype=np.float32).reshape(3, 2), "labels": np.array([0, 1, 2])}
    feed = measure.sample_feed({"inputs": [{"name": "x", "shape": [None, 2], "dtype": "float32"}]}, samples, 5)
    assert feed["x"][:, 0].tolist() == [0, 2, 4, 0, 2]


def test_one_batch_entry_shape_for_host_and_device():
    entry = measure.time_batch(lambda: None, 4, {"warmup": 1, "warmup_seconds": 0, "iterations": 12})
    assert set(entry) == {"batch", "latency_ms", "throughput_per_s", "times_ms"} and entry["batch"] == 4
    assert entry["latency_ms"]["n"] == len(entry["times_ms"]) == 12 and entry["latency_ms"]["unit"] == "ms"
    assert measure.protocol({"iterations": 5})["min_seconds"] == measure.PROTOCOL["min_seconds"]
