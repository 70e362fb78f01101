"""Missing modalities for any model (issue 15 item 4): one policy used by calibration, KD dropout and evaluation."""

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.data import ArrayDataset
from edgekit.data.calibration import check, describe, sample
from edgekit.data.missing import MissingPolicy, policy_for, record
from edgekit.errors import EdgekitError
from edgekit.evaluate import evaluate, only
from edgekit.spec import MASK_INPUT, InputSpec, ModelSpec, OutputSpec

HF_BLOCK = {"image": {"inputs": ["pixels"]}, "text": {"inputs": ["input_ids", "attention_mask"]}}


def reference_spec():
    from edgekit.train import reference_spec as ref

    cfg = {"input_shapes": {"image": [1, 8, 8], "audio": [1, 4, 6], "text": [5]}, "num_classes": 3}
    return ref(cfg, {})


def user_spec(**kw):
    """A user-style model: no modality_mask, HF-style text inputs."""
    return ModelSpec(
        inputs=[
            InputSpec(name="pixels", shape=[None, 1, 8, 8], modality="image"),
            InputSpec(name="input_ids", shape=[None, 6], dtype="int64", modality="text"),
            InputSpec(name="attention_mask", shape=[None, 6], dtype="int64", modality="text"),
        ],
        outputs=[OutputSpec(shape=[None, 3])],
        class_names=["a", "b", "c"],
        modalities=["image", "text"],
        **kw,
    )


def user_data(n=60, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    pixels = (rng.normal(0, 1, (n, 1, 8, 8)) + y[:, None, None, None]).astype(np.float32)
    ids = rng.integers(3, 20, (n, 6)).astype(np.int64)
    ids[:, 0] = y + 3  # the first token tells the class
    return ArrayDataset(
        {"pixels": pixels, "input_ids": ids, "attention_mask": np.ones((n, 6), np.int64)},
        y.astype(np.int64),
        ("image", "text"),
    )


class UserModel(nn.Module):
    """forward(pixels, input_ids, attention_mask): a CNN branch + a masked mean of token embeddings, no modality_mask."""

    def __init__(self):
        super().__init__()
        self.image = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 8)
        )
        self.embed = nn.Embedding(24, 8)
        self.head = nn.Linear(16, 3)

    def forward(self, pixels, input_ids, attention_mask):
        m = attention_mask.unsqueeze(-1).float()
        text = (self.embed(input_ids) * m).sum(1) / m.sum(1).clamp(min=1)
        return self.head(torch.cat([self.image(pixels), text], -1))


def reference_data(n=12, seed=0):
    rng = np.random.default_rng(seed)
    inputs = {
        "image": rng.normal(size=(n, 1, 8, 8)).astype(np.float32),
        "audio": rng.normal(size=(n, 1, 4, 6)).astype(np.float32),
        "text": rng.integers(1, 9, (n, 5)).astype(np.int64),
        MASK_INPUT: np.ones((n, 3), np.float32),
    }
    return ArrayDataset(inputs, np.arange(n) % 3)


def old_modality_dropout(feed, p, gen, modalities=("image", "audio", "text")):
    """The reference models' dropout as edgekit had it before the policy (copied): the policy must match it exactly."""
    mask = feed[MASK_INPUT].clone()
    drop = torch.rand(mask.shape, generator=gen) < p
    drop[drop.all(1)] = False
    mask[drop] = 0
    out = dict(feed, **{MASK_INPUT: mask})
    for j, m in enumerate(modalities):
        keep = mask[:, j].view(-1, *([1] * (feed[m].dim() - 1)))
        out[m] = feed[m] * keep.to(feed[m].dtype)
    return out


def test_reference_policy_is_zeros_plus_mask_column_and_matches_old_dropout():
    spec, data = reference_spec(), reference_data()
    policy = MissingPolicy.from_spec(spec)
    assert policy.to_dict() == {
        m: {"inputs": [m], "mask": {"input": MASK_INPUT, "column": j}} for j, m in enumerate(["image", "audio", "text"])
    }
    assert MissingPolicy.for_dataset(data) == policy
    gone = data.without("audio")
    assert (
        not gone.inputs["audio"].any()
        and (gone.inputs[MASK_INPUT][:, 1] == 0).all()
        and (gone.inputs[MASK_INPUT][:, [0, 2]] == 1).all()
    )
    assert data.inputs["audio"].any() and (data.inputs[MASK_INPUT] == 1).all()  # the original is untouched
    np.testing.assert_array_equal(gone.inputs["image"], data.inputs["image"])
    feed = {k: torch.from_numpy(v) for k, v in data.inputs.items()}
    for seed in range(3):
        new = policy.dropout(feed, 0.4, torch.Generator().manual_seed(seed))
        old = old_modality_dropout(feed, 0.4, torch.Generator().manual_seed(seed))
        assert set(new) == set(old)
        for k in old:
            assert torch.equal(new[k], old[k]), k
        assert (new[MASK_INPUT].sum(1) >= 1).all()  # never all modalities gone


def test_hf_style_policy_zeros_input_ids_and_attention_mask():
    spec = user_spec()
    policy = MissingPolicy.from_settings(HF_BLOCK, spec)
    assert policy.droppable == ["image", "text"]
    data = user_data(10)
    dropped = policy.drop(data, "text", rows=[1, 3])
    assert not dropped.inputs["attention_mask"][[1, 3]].any() and not dropped.inputs["input_ids"][[1, 3]].any()
    assert dropped.inputs["attention_mask"][[0, 2, 4]].all()
    assert policy.present(dropped)["text"].tolist() == [i not in (1, 3) for i in range(10)]
    assert dropped.missing is policy and dropped.without("image").inputs["pixels"].any() == np.False_
    feed = policy.drop({k: torch.from_numpy(v) for k, v in data.inputs.items()}, "image")  # a torch feed works too
    assert not feed["pixels"].any() and feed["input_ids"].all()
    assert policy.describe()["text"] == "zeros in input_ids, attention_mask"


def test_spec_without_declared_policy_never_drops_and_distill_still_trains():
    spec, data = user_spec(), user_data(30)
    policy = MissingPolicy.from_spec(spec)  # inputs not marked optional, no mask: nothing is assumed
    assert policy.droppable == [] and policy.to_dict() == {"image": "never", "text": "never"}
    from edgekit.passes.distill import distill

    teacher = UserModel()
    _, rec = distill(
        UserModel(), teacher, data, user_data(12, 1), epochs=1, batch_size=16, patience=None, missing=policy
    )
    assert rec["dropped_modalities"] == [] and rec["epochs_run"] == 1


def test_distill_without_modality_mask_uses_the_recipe_policy():
    from edgekit.passes.distill import distill

    spec = record(user_spec(), HF_BLOCK)
    train, val = user_data(40), user_data(12, 1)
    train.missing = MissingPolicy.from_spec(spec)
    seen = []

    class Spy(UserModel):
        def forward(self, pixels, input_ids, attention_mask):
            if self.training:
                seen.append((pixels.flatten(1).abs().sum(1) == 0, attention_mask.sum(1) == 0))
            return super().forward(pixels, input_ids, attention_mask)

    student, rec = distill(Spy(), UserModel(), train, val, epochs=2, batch_size=20, modality_p=0.5, patience=None)
    assert rec["dropped_modalities"] == ["image", "text"]
    no_image = torch.cat([a for a, _ in seen])
    no_text = torch.cat([b for _, b in seen])
    assert no_image.any() and no_text.any()  # both modalities were dropped in some samples
    assert not (no_image & no_text).any()  # never both: a sample keeps one modality


def test_calibration_sample_describe_and_check_use_the_policy():
    spec = record(user_spec(), HF_BLOCK)
    data = user_data(60)
    data.missing = MissingPolicy.from_spec(spec)
    cal = sample(data, 30, missing=0.4, seed=1)
    gone_text = ~cal.inputs["attention_mask"].any(1)
    gone_image = ~cal.inputs["pixels"].reshape(30, -1).any(1)
    assert gone_text.sum() == 6 and gone_image.sum() == 6 and not (gone_text & gone_image).any()
    assert not cal.inputs["input_ids"][gone_text].any()
    cov = describe(cal, spec.class_names)["modality_coverage"]
    assert cov == {"image": pytest.approx(0.8), "text": pytest.approx(0.8)}
    check(cal, spec)
    text_only = sample(data, 30, missing=0.4, seed=1, required=("image",))
    assert (
        text_only.inputs["pixels"].reshape(30, -1).any(1).all()
        and (~text_only.inputs["attention_mask"].any(1)).sum() == 12
    )
    with pytest.raises(EdgekitError, match="no sample of the calibration set has the 'text' modality"):
        check(data.missing.drop(cal, "text"), spec)


def test_evaluate_missing_table_and_only_for_a_model_without_mask():
    spec = record(user_spec(), HF_BLOCK)
    policy = MissingPolicy.from_spec(spec)
    torch.manual_seed(0)
    model = UserModel().eval()
    data = user_data(30)
    res = evaluate(model, data, spec.class_names, policy=policy)
    assert set(res["missing_modality_accuracy"]) == {"image", "text"}
    data.missing = policy
    assert evaluate(model, data, spec.class_names)["missing_modality_accuracy"] == res["missing_modality_accuracy"]
    img_only = only(data, "image")
    assert not img_only.inputs["attention_mask"].any() and img_only.inputs["pixels"].any()
    logits = model(**{k: torch.from_numpy(v) for k, v in img_only.inputs.items()}).detach().numpy()
    assert res["missing_modality_accuracy"]["text"] == pytest.approx(float((logits.argmax(1) == data.labels).mean()))
    plain = user_data(30)  # no policy anywhere and no mask input: no table, nothing assumed
    assert "missing_modality_accuracy" not in evaluate(model, plain, spec.class_names)


def test_record_writes_policy_and_optional_flags_into_the_spec():
    spec = record(user_spec(), {**HF_BLOCK, "image": "never"})
    assert spec.missing == {"image": "never", "text": {"inputs": ["input_ids", "attention_mask"]}}
    assert [i.optional for i in spec.inputs] == [False, True, True]
    again = ModelSpec.model_validate(spec.model_dump())
    assert MissingPolicy.from_spec(again) == MissingPolicy.from_settings(spec.missing, user_spec())
    assert policy_for(again).droppable == ["text"]
    old = reference_spec().model_dump()
    old.pop("missing")  # a checkpoint written before the field loads as before
    assert MissingPolicy.from_spec(ModelSpec.model_validate(old)).droppable == ["image", "audio", "text"]


def test_recipe_parsed_block_is_accepted():
    settings = pytest.importorskip("edgekit.data.settings")
    block = {
        "text": settings.MissingModality(inputs=["input_ids", "attention_mask"]),
        "image": settings.MissingModality(inputs=["pixels"], mask=None),
    }
    assert MissingPolicy.from_settings(block, user_spec()).droppable == ["image", "text"]


@pytest.mark.parametrize(
    "block, message",
    [
        (
            {"text": {"inputs": ["tokens"]}},
            r"data.missing.text.inputs names \['tokens'\], which the model does not take",
        ),
        ({"text": {"inputs": []}}, "must be a non-empty list"),
        ({"text": {"input": ["input_ids"]}}, "must be 'never' or a mapping with 'inputs'"),
        ({"text": "sometimes"}, "must be 'never' or a mapping"),
        (
            {"image": {"inputs": ["pixels"], "mask": {"input": "modality_mask", "column": 0}}},
            "mask.input 'modality_mask' is not an input",
        ),
        (
            {"image": {"inputs": ["pixels"], "mask": {"input": "attention_mask", "column": 9}}},
            r"mask.column is 9, not a column of 'attention_mask' \(width 6\)",
        ),
        (
            {
                "image": {"inputs": ["pixels"], "mask": {"input": "attention_mask", "column": 0}},
                "text": {"inputs": ["input_ids"], "mask": {"input": "attention_mask", "column": 0}},
            },
            "use the same mask column",
        ),
        (["text"], "not a mapping of modality"),
    ],
)
def test_bad_missing_blocks_are_one_line_errors(block, message):
    with pytest.raises(EdgekitError, match=message) as e:
        MissingPolicy.from_settings(block, user_spec())
    assert "\n" not in e.value.message and e.value.hint


def test_dropping_an_unknown_or_never_missing_modality_is_an_error():
    policy = MissingPolicy.from_settings({"image": "never", "text": HF_BLOCK["text"]}, user_spec())
    with pytest.raises(EdgekitError, match="never missing for this model"):
        policy.drop(user_data(4), "image")
    with pytest.raises(EdgekitError, match="unknown modality 'audio'"):
        policy.drop(user_data(4), "audio")
    with pytest.raises(EdgekitError, match="has no input"):
        policy.drop({"pixels": np.zeros((2, 1, 8, 8), np.float32)}, "text")


def test_avdigits_recipe_missing_block_reaches_every_split(tmp_path, fsdd):
    """`data: {format: avdigits, missing: ...}`: the resolved splits carry the recipe's policy, not the convention."""
    from edgekit.data import resolve
    from edgekit.data.settings import AvdigitsData
    from edgekit.train import reference_spec as ref

    spec = ref({"input_shapes": {"image": [1, 28, 28], "audio": [1, 40, 64], "text": [16]}, "num_classes": 10}, {})
    block = {"audio": "never", "image": {"inputs": ["image"], "mask": {"input": MASK_INPUT, "column": 0}}}
    s = resolve(AvdigitsData.model_validate({"fsdd": fsdd, "missing": block}), spec, cache_dir=tmp_path)
    for part in s:
        assert part.missing is not None and part.missing_policy.modalities["audio"] is None
    assert s.missing["audio"] == "never missing" and s.missing["image"] == "zeros in image + modality_mask[:, 0] = 0"
    with pytest.raises(EdgekitError, match="'audio' modality is never missing"):
        s.test.without("audio")
    gone = s.test.without("image")
    assert not gone.inputs["image"].any() and gone.inputs[MASK_INPUT][:, 0].max() == 0
    assert gone.inputs[MASK_INPUT][:, 1:].min() == 1
    plain = resolve(AvdigitsData(fsdd=fsdd), spec, cache_dir=tmp_path)  # no block: the reference convention
    assert plain.test.without("audio").inputs[MASK_INPUT][:, 1].max() == 0
    with pytest.raises(EdgekitError, match=r"data.missing.image.inputs names \['pixels'\]"):
        resolve(AvdigitsData.model_validate({"fsdd": fsdd, "missing": {"image": {"inputs": ["pixels"]}}}), spec, cache_dir=tmp_path)
