"""What the compression passes are fed and what they return: class-stratified samples for calibration, Taylor
importance and the accuracy-aware ranking (the built-in splits are sorted by class); KD and QAT never return a
model worse than their start; the parity gate is a recipe key, and its failure says what was compared."""
import numpy as np
import pytest
import torch
from torch import nn

from edgekit import checkpoint, export
from edgekit.data import ArrayDataset, avdigits
from edgekit.data.calibration import sample, stratified
from edgekit.errors import EdgekitError
from edgekit.recipe import parse_recipe
from edgekit.spec import InputSpec, ModelSpec, OutputSpec


def _sorted_by_class(n_per_class=12, classes=10, seed=0):
    """A labelled set ordered class by class, as the built-in splits are."""
    labels = np.repeat(np.arange(classes), n_per_class)
    x = np.random.default_rng(seed).standard_normal((len(labels), 8)).astype(np.float32)
    return ArrayDataset({"x": x}, labels, ())


# ---------------------------------------------------------------- (a) one stratified, seeded sampler

def test_stratified_sampler_puts_every_class_in_every_prefix():
    labels = _sorted_by_class().labels
    idx = stratified(labels, 40, seed=3)
    assert len(idx) == 40 and len(set(idx.tolist())) == 40
    assert sorted(labels[idx[:10]].tolist()) == list(range(10))  # the first batch of 10 holds every class once
    assert np.bincount(labels[idx], minlength=10).tolist() == [4] * 10
    assert (stratified(labels, 40, seed=3) == idx).all() and not (stratified(labels, 40, seed=4) == idx).all()
    # a remainder goes one per class; a class with too few samples leaves its share to the others
    assert np.bincount(labels[stratified(labels, 13)], minlength=10).tolist() == [2, 2, 2] + [1] * 7
    few = np.array([0] * 2 + [1] * 20)
    assert np.bincount(few[stratified(few, 10)]).tolist() == [2, 8]


def test_calibration_set_is_shuffled_and_its_first_batch_holds_every_class():
    data = _sorted_by_class()
    cal = sample(data, 30, seed=0)
    assert sorted(cal.labels[:10].tolist()) == list(range(10))  # was the first 3 classes: subset(np.sort(idx))
    assert np.bincount(cal.labels).tolist() == [3] * 10


def test_taylor_importance_batches_hold_every_class():
    """Taylor importance multiplies w with dL/dw summed over `calibration_batches` batches. With a model whose
    logits are one bias vector (zero at the start), dL/dbias = mean(softmax - onehot) = 0.1 - class share in the
    batch: zero for every class only if the batch was class-balanced (a first batch of class 0 gives -0.9)."""
    from edgekit.passes.prune import _accumulate_gradients

    class Bias(nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(10))

        def forward(self, x):
            return self.bias.expand(len(x), 10)

    model = Bias()
    _accumulate_gradients(model, _sorted_by_class(), batches=1, batch_size=10)
    assert torch.allclose(model.bias.grad, torch.zeros(10), atol=1e-6), model.bias.grad


@pytest.fixture(scope="module")
def trained(tiny_checkpoint, fsdd):
    model, spec, _ = checkpoint.load(tiny_checkpoint)
    train, val = avdigits.load("train", fsdd), avdigits.load("val", fsdd)
    val = val.subset(np.sort(stratified(val.labels, 100)))  # 10 per class, ordered class by class
    return model, spec, train, val


def test_accuracy_aware_ranking_sees_every_class(trained):
    from edgekit.passes.quantize import quantize

    model, spec, train, val = trained
    cal = sample(train, 32, missing=0.0)
    # audio ranges calibrated on audio scaled down 20x: badly quantized, so the search ranks the ops
    bad = ArrayDataset(dict(cal.inputs, audio=cal.inputs["audio"] * np.float32(0.05)), cal.labels, cal.modalities)
    _, rec = quantize(model, spec, bad, max_accuracy_drop=0.0, validation=val, ranking_samples=20, max_float_ops=1)
    aa = rec["accuracy_aware"]
    assert aa["ranking"], "the fully quantized model met the budget: nothing was ranked"
    assert aa["ranking_samples"] == {"n": 20, "per_class": [2] * 10}  # was [10, 10, 0, ...]: the first 20 of the split


# ---------------------------------------------------------------- (b) KD / QAT return the better of start and trained

def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("quantized", [False, True], ids=["kd", "qat"])
def test_distillation_returns_its_start_when_training_makes_it_worse(trained, quantized):
    """The teacher itself as the student, trained at a learning rate that wrecks it: the start is better than
    anything training yields, so it comes back unchanged (before: the wrecked weights of the best epoch)."""
    from edgekit.passes.distill import distill, summary
    from edgekit.passes.quantize import nncf_config, quantize

    model, spec, train, val = trained
    start = quantize(model, spec, sample(train, 32, missing=0.0))[0] if quantized else model
    out, rec = distill(start, model, train.subset(stratified(train.labels, 128)), val, epochs=1, lr=5.0, patience=None)
    trained_acc = rec["history"][0]["val_accuracy"]
    assert trained_acc < rec["start_val_accuracy"], "training did not make the start worse: the test shows nothing"
    assert rec["kept_start"] and rec["best_val_accuracy"] == rec["start_val_accuracy"]
    assert _same_weights(out, start) and (nncf_config(out) is not None) == quantized
    assert "kept the starting model" in summary(rec)


# ---------------------------------------------------------------- (c) the parity gate is a recipe key

def test_parity_key_sets_the_gate_and_a_typo_is_refused():
    base = {"variants": [{"name": "int8", "passes": [{"quantize": {}}]}]}
    assert parse_recipe(base).parity.min_top1.model_dump() == {"fp32": 0.99, "fp16": 0.95, "int8": 0.95}
    assert parse_recipe({**base, "parity": {"min_top1": 0.9}}).parity.min_top1.model_dump() == {"fp32": 0.9, "fp16": 0.9, "int8": 0.9}
    assert parse_recipe({**base, "parity": {"min_top1": {"int8": 0.8}}}).parity.min_top1.int8 == 0.8
    for bad, message in (({"min_top": 0.9}, "unknown key 'min_top' in parity; allowed keys: min_top1"),
                         ({"min_top1": {"int9": 0.8}}, "unknown key 'int9' in parity.min_top1; allowed keys: fp32, fp16, int8"),
                         ({"min_top1": 1.5}, "parity.min_top1.fp32")):
        with pytest.raises(EdgekitError) as e:
            parse_recipe({**base, "parity": bad})
        assert message in e.value.message


class _TracedBranch(nn.Module):
    """A model whose exported graph computes something else: the branch on the batch's sign is frozen at trace time."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = self.fc(x)
        return y if x.sum() > 0 else -y


def test_parity_failure_names_the_compared_graph_and_the_recipe_key(tmp_path):
    from edgekit.backends import compile_onnx

    spec = ModelSpec(inputs=[InputSpec(name="x", shape=[None, 8])], outputs=[OutputSpec(shape=[None, 4])],
                     class_names=list("abcd"))
    x = np.abs(np.random.default_rng(0).standard_normal((128, 8))).astype(np.float32)
    x[64:] *= -1  # one parity batch (64) of each sign: the graph agrees with torch on one of them only
    data = ArrayDataset({"x": x}, np.zeros(128, np.int64), ())
    with pytest.raises(EdgekitError) as e:
        export.to_onnx(_TracedBranch(), spec, tmp_path / "m.onnx", check_parity_on=data)
    msg, hint = e.value.message, e.value.hint
    assert msg.startswith(f"parity of the exported ONNX graph {tmp_path / 'm.onnx'} (run by ONNX Runtime) vs the torch model failed")
    assert "need >= 99.0%" in msg and "parity: {min_top1: {fp32: ...}} (now 0.99)" in hint and "ONNX export" not in msg
    recipe = parse_recipe({"variants": [{"name": "v"}], "parity": {"min_top1": {"fp32": 0.4}}})
    report = export.to_onnx(_TracedBranch(), spec, tmp_path / "m.onnx", check_parity_on=data, min_top1=recipe.parity.min_top1.model_dump())
    assert report["parity"]["passed"] and report["parity"]["min_top1"] == 0.4 and 0.4 <= report["parity"]["top1_agreement"] < 0.99
    with pytest.raises(EdgekitError) as e:  # the compile is judged against the torch logits saved at export
        compile_onnx(tmp_path / "m.onnx", "onnxruntime", tmp_path / "ort")
    assert e.value.message.startswith("parity of the onnxruntime-compiled graph of m.onnx vs the torch model failed")
    art = compile_onnx(tmp_path / "m.onnx", "onnxruntime", tmp_path / "ort", min_top1=recipe.parity.min_top1.model_dump())
    assert art.meta["parity"]["passed"] and art.meta["parity"]["min_top1"] == 0.4
