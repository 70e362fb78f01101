"""Knowledge distillation: a pruned student learns more from the teacher than from labels alone in the same
number of epochs; feature distillation works across widths; a quantized student trains (QAT)."""
import copy

import numpy as np
import pytest
import torch

from edgekit import checkpoint
from edgekit.data import avdigits
from edgekit.errors import EdgekitError
from edgekit.evaluate import evaluate
from edgekit.fit import fit
from edgekit.passes.distill import distill, kd_loss
from edgekit.passes.prune import prune


@pytest.fixture(scope="module")
def setup(tiny_checkpoint, fsdd):
    teacher, spec, _ = checkpoint.load(tiny_checkpoint)
    train = avdigits.load("train", fsdd).subset(np.arange(0, 2400, 3))  # 800 samples keeps the test quick
    val, test = avdigits.load("val", fsdd), avdigits.load("test", fsdd)
    student, _ = prune(teacher, spec, ratio=0.5)
    return teacher, spec, student, train, val, test


def test_kd_beats_label_only_finetuning_at_equal_epochs(setup):
    teacher, spec, student, train, val, test = setup
    kd, rec = distill(student, teacher, train, val, epochs=2, lr=3e-3, patience=None, seed=0)
    ce = copy.deepcopy(student)
    fit(ce, train, val, 2, 3e-3, seed=0)
    kd_acc = evaluate(kd, test, spec.class_names, missing=False)["accuracy"]
    ce_acc = evaluate(ce, test, spec.class_names, missing=False)["accuracy"]
    assert kd_acc > ce_acc, f"KD {kd_acc:.4f} vs label-only {ce_acc:.4f}"
    assert rec["epochs_run"] == 2 and len(rec["history"]) == 2 and 0 < rec["best_val_accuracy"] <= 1


def test_feature_distillation_across_widths_adds_the_feature_loss_and_leaves_no_adapters(setup):
    """Same seed, same batches, same student: the only difference between the two runs is the feature term,
    which (through learned adapters, the student being narrower) adds a positive MSE to every step's loss.
    Dropping the feature loss would make the two runs' losses identical."""
    teacher, spec, student, train, val, _ = setup
    small_train, small_val = train.subset(np.arange(128)), val.subset(np.arange(64))
    args = dict(epochs=1, features=["image", "audio", "text"], patience=None, seed=0)
    with_f, rec = distill(student, teacher, small_train, small_val, feature_weight=5.0, **args)
    without, rec0 = distill(student, teacher, small_train, small_val, feature_weight=0.0, **args)
    assert rec["history"][0]["loss"] > rec0["history"][0]["loss"] + 0.1, (rec["history"], rec0["history"])
    assert with_f.state_dict().keys() == student.state_dict().keys()  # adapters were only for training
    assert student.image.proj.out_features < teacher.image.proj.out_features
    assert rec["settings"]["features"] == ["image", "audio", "text"] and rec["settings"]["feature_weight"] == 5.0


def test_quantized_student_trains_with_float_teacher(setup):
    from edgekit.data.calibration import sample
    from edgekit.passes.quantize import nncf_config, quantize

    teacher, spec, student, train, val, _ = setup
    q, _ = quantize(student, spec, sample(train, 32, missing=0.0))
    qat, rec = distill(q, teacher, train.subset(np.arange(128)), val.subset(np.arange(64)), epochs=1, lr=1e-4)
    assert nncf_config(qat) is not None  # still INT8 (fake-quant) after training
    assert np.isfinite(rec["history"][0]["loss"])


def test_kd_loss_is_zero_for_a_perfect_student_at_alpha_one():
    logits = torch.randn(8, 10)
    assert kd_loss(logits, logits, torch.zeros(8, dtype=torch.long), 4.0, 1.0).abs() < 1e-6


@pytest.mark.parametrize("kwargs,match", [(dict(epochs=0), "epoch"), (dict(alpha=1.5), "alpha"), (dict(features=["radar"]), "radar")])
def test_bad_distill_settings(setup, kwargs, match):
    teacher, _, student, train, val, _ = setup
    with pytest.raises(EdgekitError, match=match):
        distill(student, teacher, train, val, **kwargs)
