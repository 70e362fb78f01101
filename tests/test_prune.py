"""Structured pruning: channels, units and heads really go away (MACs drop), every fusion head prunes
consistently, and a pruned model is saved and rebuilt without guessing widths — ours from a derived
config, a user's model from the replayed pruning plan."""
import numpy as np
import pytest
import torch
from torch import nn

from edgekit import checkpoint
from edgekit.errors import EdgekitError
from edgekit.models import build_model, preset_config
from edgekit.passes.prune import apply_plan, attention_modules, derived_config, example_inputs, prune
from edgekit.spec import InputSpec, ModelSpec, OutputSpec
from edgekit.train import reference_spec


def tiny(fusion="attention", text="transformer", seed=0):
    torch.manual_seed(seed)
    cfg = preset_config("tiny", fusion, text_kind=text)
    return build_model(cfg).eval(), reference_spec(cfg, {"vocab_size": 60}), cfg


def same_outputs(a, b, spec):
    x = example_inputs(spec, 4)
    with torch.no_grad():
        return torch.allclose(a.eval()(**x), b.eval()(**x), atol=1e-5)


@pytest.mark.parametrize("fusion,text", [("attention", "transformer"), ("early", "transformer"), ("late", "lstm"), ("hierarchical", "transformer")])
def test_prune_removes_work_and_rebuilds(fusion, text):
    model, spec, cfg = tiny(fusion, text)
    pruned, rec = prune(model, spec, ratio=0.5)
    assert rec["after"]["macs"] * 1.8 < rec["before"]["macs"]
    assert rec["after"]["params"] < rec["before"]["params"] / 2
    for branch in ("image", "audio", "text"):
        assert rec["after"]["branches"][branch]["params"] < rec["before"]["branches"][branch]["params"]
    assert pruned(**example_inputs(spec)).shape == (2, 10)
    assert sum(p.numel() for p in model.parameters()) == rec["before"]["params"]  # the input model is untouched
    # rebuilt from the derived config: build_model reproduces the widths, the weights load strictly
    rebuilt = build_model(rec["config"])
    rebuilt.load_state_dict(pruned.state_dict(), strict=True)
    assert same_outputs(rebuilt, pruned, spec)
    # ... and from the plan, on the unpruned model
    replayed = apply_plan(build_model(cfg), [rec["plan"]], spec)
    replayed.load_state_dict(pruned.state_dict(), strict=True)
    assert same_outputs(replayed, pruned, spec)


def kept(orig_bias, new_bias) -> list[int]:
    """Which original units survived, found by their (distinct, random) biases."""
    return [int(torch.argmin((orig_bias - v).abs())) for v in new_bias.detach()]


@pytest.mark.parametrize("fusion", ["early", "hierarchical"])
def test_concat_fusion_prunes_each_branch_at_its_own_offset(fusion):
    """The fusion Linear must lose exactly the columns of the branch units that were removed (the trap: a
    concat with the modality mask that torch-pruning cannot see)."""
    model, spec, _ = tiny(fusion)
    pruned, _ = prune(model, spec, ratio=0.4)
    rows = {m: kept(getattr(model, m).proj.bias, getattr(pruned, m).proj.bias) for m in ("image", "audio", "text")}
    assert all(len(r) < 32 for r in rows.values())
    if fusion == "early":
        pairs = [(model.head.fc, pruned.head.fc, ("image", "audio", "text"))]
    else:
        pairs = [(model.head.pair_fcs[k], pruned.head.pair_fcs[k], (("image", "audio", "text")[i], ("image", "audio", "text")[j]))
                 for k, (i, j) in enumerate(model.head.pairs)]
    for orig, new, branches in pairs:
        cols, offset = [], 0
        for m in branches:
            cols += [offset + r for r in rows[m]]
            offset += 32
        cols += [offset + i for i in range(orig.in_features - offset)]  # the modality-mask columns stay
        out_rows = kept(orig.bias, new.bias)
        assert torch.equal(new.weight.detach(), orig.weight.detach()[out_rows][:, cols])


def test_attention_heads_are_pruned_as_whole_heads():
    model, spec, _ = tiny("attention")
    pruned, rec = prune(model, spec, ratio=0.5, heads="heads")
    for name, m in attention_modules(pruned).items():
        orig = model.get_submodule(name)
        assert m.heads == orig.heads - 1 and m.head_dim == orig.head_dim
        assert m.q.out_features == m.k.out_features == m.v.out_features == m.out.in_features == m.heads * m.head_dim
    assert rec["attention"]["head.layers.0.attn"] == {"heads": 1, "head_dim": 16}
    dims, _ = prune(model, spec, ratio=0.25, heads="dims")
    for name, m in attention_modules(dims).items():
        assert m.heads == model.get_submodule(name).heads and m.head_dim < 16


def test_target_macs_and_per_branch_ratios():
    model, spec, _ = tiny("attention")
    pruned, rec = prune(model, spec, target_macs=0.5, per_branch={"image": 0.0, "text": 0.2})
    kept = rec["after"]["macs"] / rec["before"]["macs"]
    assert 0.4 < kept <= 0.5 and rec["search"]["trials"]
    assert rec["after"]["branches"]["image"] == rec["before"]["branches"]["image"]  # ratio 0: left whole
    assert rec["after"]["branches"]["audio"]["macs"] < rec["before"]["branches"]["audio"]["macs"] / 2
    assert pruned.head.classifier.out_features == 10
    with pytest.raises(EdgekitError, match="cannot reach"):  # audio holds 3/4 of the MACs
        prune(model, spec, target_macs=0.5, per_branch={"audio": 0.0})


def test_taylor_importance_uses_calibration_batches():
    from edgekit.data import ArrayDataset

    model, spec, _ = tiny("late")
    cal = ArrayDataset(spec.example_inputs(32, seed=1), np.arange(32) % 10)
    pruned, rec = prune(model, spec, ratio=0.3, importance="taylor", calibration=cal, calibration_batches=1)
    assert rec["after"]["macs"] < rec["before"]["macs"]
    assert all(p.grad is None for p in pruned.parameters())


@pytest.mark.parametrize("kwargs,match", [
    (dict(ratio=0.0), "outside"), (dict(ratio=1.0), "outside"), (dict(ratio=-0.2), "outside"),
    (dict(), "exactly one"), (dict(ratio=0.3, target_macs=0.5), "exactly one"),
    (dict(ratio=0.3, per_branch={"sound": 0.2}), "not a submodule"), (dict(ratio=0.3, per_branch={"audio": 1.0}), "outside"),
    (dict(ratio=0.3, importance="taylor"), "calibration"), (dict(ratio=0.3, importance="l7"), "importance")])
def test_bad_settings_are_clear_errors(kwargs, match):
    model, spec, _ = tiny("late")
    with pytest.raises(EdgekitError, match=match):
        prune(model, spec, **kwargs)


def test_pruned_model_exports_to_onnx(tmp_path):
    from edgekit.export import to_onnx

    model, spec, _ = tiny("attention")
    pruned, _ = prune(model, spec, ratio=0.5)
    report = to_onnx(pruned, spec, tmp_path / "model.onnx")
    assert report["parity"]["passed"] and report["parity"]["max_abs_diff"] < 1e-3


# ---------------------------------------------------------------- a user's model, plugged in by factory

class GatedFusion(nn.Module):
    """Not an edgekit model: a conv image branch and an MLP audio branch, joined by a gated sum, then a concat."""

    def __init__(self, cfg):
        super().__init__()
        w = cfg.get("width", 24)
        self.image = nn.Sequential(nn.Conv2d(1, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w, 32))
        self.audio = nn.Sequential(nn.Flatten(), nn.Linear(40 * 64, 48), nn.ReLU(), nn.Linear(48, 32))
        self.gate = nn.Linear(64, 32)
        self.scale = nn.Parameter(torch.ones(1, 32))
        self.classifier = nn.Linear(64, 10)

    def forward(self, image, audio):
        a, b = self.image(image), self.audio(audio)
        g = torch.sigmoid(self.gate(torch.cat([a, b], 1)))
        mixed = (g * a + (1 - g) * b) * self.scale
        return self.classifier(torch.cat([mixed, a], 1))


def build_user_model(cfg):
    return GatedFusion(cfg)


USER_SPEC = ModelSpec(inputs=[InputSpec(name="image", shape=[None, 1, 28, 28]), InputSpec(name="audio", shape=[None, 1, 40, 64])],
                      outputs=[OutputSpec(name="logits", shape=[None, 10])], class_names=[str(i) for i in range(10)])


def test_user_model_from_factory_is_pruned_saved_and_replayed(tmp_path):
    torch.manual_seed(0)
    model = build_user_model({"width": 24}).eval()
    checkpoint.save(model, USER_SPEC, tmp_path / "src", {"width": 24}, factory="test_prune:build_user_model")
    loaded, spec, cfg = checkpoint.load(tmp_path / "src", trust_code=True)  # a factory not edgekit's own
    pruned, rec = prune(loaded, spec, ratio=0.5)
    assert rec["config"] is None and rec["rebuild"] == "plan"  # not ours: widths cannot come from a config
    assert rec["after"]["macs"] < rec["before"]["macs"] / 1.8
    assert pruned.classifier.out_features == 10 and pruned.gate.out_features == pruned.scale.shape[1]
    checkpoint.save(pruned, spec, tmp_path / "pruned", cfg["model"], factory=cfg["factory"], pruning_plan=[rec["plan"]])
    again, _, _ = checkpoint.load(tmp_path / "pruned", trust_code=True)
    assert same_outputs(again, pruned, spec)
    assert derived_config(again) is None
