import json

from edgekit import checkpoint
from edgekit.data import avdigits
from edgekit.evaluate import evaluate


def test_tiny_training_beats_chance_and_saves_a_safe_checkpoint(tiny_checkpoint, fsdd):
    cfg = json.loads((tiny_checkpoint / "config.json").read_text())
    m = cfg["metrics"]["test"]
    assert m["accuracy"] > 0.4  # chance is 0.1
    assert 0 <= m["accuracy_ci95"][0] <= m["accuracy"] <= m["accuracy_ci95"][1] <= 1
    assert set(m["missing_modality_accuracy"]) == {"image", "audio", "text"}
    assert set(m["per_class_f1"]) == {str(i) for i in range(10)}
    assert cfg["data"]["sizes"]["test"] == len(avdigits.load("test", fsdd))
    assert cfg["spec"]["inputs"][-1]["name"] == "modality_mask"
    # the saved metrics are what evaluating the loaded checkpoint gives
    model, spec, _ = checkpoint.load(tiny_checkpoint)
    again = evaluate(model, avdigits.load("test", fsdd), spec.class_names)
    assert abs(again["accuracy"] - m["accuracy"]) < 1e-9
