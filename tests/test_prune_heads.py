"""Pruning real encoders: whole attention heads leave q, k, v and the output projection together (checked by
weight values, and by the outputs: the pruned model computes what the original computes with those heads
zeroed), FFN widths shrink, MACs drop, ONNX Runtime agrees with torch, and a pruned checkpoint rebuilds from
its factory through the saved plan. Hugging Face BERT (random init from a config), torch.nn.MultiheadAttention
(also inside nn.TransformerEncoder) and a timm-style packed-qkv block; then 3-D concats in fusion heads."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

from edgekit import checkpoint
from edgekit.data import ArrayDataset
from edgekit.export import to_onnx
from edgekit.models.stats import count_macs
from edgekit.passes.prune import prune
from edgekit.passes.prune_mha import SplitMultiheadAttention
from edgekit.spec import InputSpec, ModelSpec, OutputSpec

SEQ, CLASSES = 12, 10


def token_spec(*names) -> ModelSpec:
    return ModelSpec(inputs=[InputSpec(name=n, shape=[None, SEQ], dtype="int64") for n in names],
                     outputs=[OutputSpec(name="logits", shape=[None, CLASSES])], class_names=[str(i) for i in range(CLASSES)],
                     preprocessing={"vocab_size": 50})


def tokens(batch=4, seed=0, pad_from=(SEQ, 9, 6, SEQ)):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (batch, SEQ), generator=g)
    for row, start in enumerate(pad_from[:batch]):
        ids[row, start:] = 0  # padding, so attention masks matter
    return ids


def run(model, feed):
    with torch.no_grad():
        return model.eval()(**feed)


# ---------------------------------------------------------------- models, built by factories as a user would

BERT = {"vocab_size": 50, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
        "max_position_embeddings": 32, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


class BertClassifier(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        from transformers import BertConfig, BertModel

        self.bert = BertModel(BertConfig(**cfg), add_pooling_layer=False)
        self.classifier = nn.Linear(cfg["hidden_size"], CLASSES)

    def forward(self, input_ids, attention_mask):
        mask = (attention_mask > 0).long()
        h = self.bert(input_ids=input_ids, attention_mask=mask).last_hidden_state
        m = mask[..., None].float()
        return self.classifier((h * m).sum(1) / m.sum(1).clamp(min=1.0))


def build_bert(cfg):
    torch.manual_seed(0)
    return BertClassifier(cfg)


class MHAClassifier(nn.Module):
    """nn.MultiheadAttention used directly (with a key padding mask) and inside nn.TransformerEncoder."""

    def __init__(self, cfg):
        super().__init__()
        d = cfg["d"]
        self.embed = nn.Embedding(50, d)
        self.attn = nn.MultiheadAttention(d, 4, batch_first=True)
        self.norm = nn.LayerNorm(d)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.0, batch_first=True), 1)
        self.classifier = nn.Linear(d, CLASSES)

    def forward(self, tokens):
        pad = tokens == 0
        x = self.embed(tokens)
        x = self.norm(x + self.attn(x, x, x, key_padding_mask=pad, need_weights=False)[0])
        return self.classifier(self.encoder(x).mean(1))


def build_mha(cfg):
    torch.manual_seed(0)
    return MHAClassifier(cfg)


class TimmAttention(nn.Module):
    """As timm's Attention: one qkv Linear, [B, N, 3, heads, head_dim] layout, `proj` out (reshape to -1, as
    Torch-Pruning's timm example patches it, so the width follows the heads)."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class TimmBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = nn.LayerNorm(dim), TimmAttention(dim, heads), nn.LayerNorm(dim), Mlp(dim, 2 * dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TimmClassifier(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed = nn.Embedding(50, 48)
        self.blocks = nn.Sequential(TimmBlock(48, 6), TimmBlock(48, 6))
        self.classifier = nn.Linear(48, CLASSES)

    def forward(self, tokens):
        return self.classifier(self.blocks(self.embed(tokens)).mean(1))


def build_timm(cfg):
    torch.manual_seed(0)
    return TimmClassifier(cfg)


# ---------------------------------------------------------------- per-head blocks, read straight from the weights

QKV = (("query", "key", "value"), ("q_lin", "k_lin", "v_lin"), ("q_proj", "k_proj", "v_proj"))


def projections(attn: nn.Module, out: nn.Linear | None = None):
    """([(Linear, first row of the block)] for q, k, v; the output Linear; the head count) of a convention under
    test (not nn.MultiheadAttention, whose q/k/v are one packed parameter). BERT/RoBERTa pass `out`."""
    if hasattr(attn, "qkv"):
        inner = attn.qkv.out_features // 3
        return [(attn.qkv, s * inner) for s in range(3)], attn.proj, attn.num_heads
    names = next(n for n in QKV if hasattr(attn, n[0]))
    out = out or next(getattr(attn, n) for n in ("out_lin", "o_proj", "out_proj") if hasattr(attn, n))
    heads = next(getattr(attn, n) for n in ("num_heads", "num_attention_heads", "n_heads") if hasattr(attn, n))
    return [(getattr(attn, n), 0) for n in names], out, heads


def head_blocks(attn: nn.Module, out: nn.Linear | None = None) -> dict[str, list[torch.Tensor]]:
    """{q, k, v, out: [one tensor per head]}: a head's q/k/v rows (weight with bias as an extra column) and its
    output-projection columns."""
    if isinstance(attn, nn.MultiheadAttention):
        rows = dict(zip("qkv", torch.cat([attn.in_proj_weight, attn.in_proj_bias[:, None]], 1).split(attn.embed_dim)))
        out, heads = attn.out_proj, attn.num_heads
    else:
        lins, out, heads = projections(attn, out)
        inner = lins[0][0].out_features // (3 if hasattr(attn, "qkv") else 1)
        rows = {x: torch.cat([lin.weight, lin.bias[:, None]], 1)[start:start + inner] for x, (lin, start) in zip("qkv", lins)}
    blocks = {x: list(r.detach().chunk(heads)) for x, r in rows.items()}
    blocks["out"] = list(out.weight.detach().t().chunk(heads))
    return blocks


def surviving_heads(orig: dict, pruned: dict) -> dict[str, list[int]]:
    """For q, k, v and out separately: which original head each pruned head's values came from."""
    return {x: [next(i for i, o in enumerate(orig[x]) if o.shape == p.shape and torch.equal(o, p)) for p in pruned[x]] for x in orig}


def zero_heads(attn: nn.Module, heads: list[int], out: nn.Linear | None = None) -> None:
    """Zero the given heads in place: their q/k/v rows (weights and biases) and output columns."""
    if isinstance(attn, nn.MultiheadAttention):
        e = attn.embed_dim
        params = [(attn.in_proj_weight, s * e) for s in range(3)] + [(attn.in_proj_bias, s * e) for s in range(3)]
        out, d = attn.out_proj, e // attn.num_heads
    else:
        lins, out, n = projections(attn, out)
        params = [(lin.weight, start) for lin, start in lins] + [(lin.bias, start) for lin, start in lins]
        d = out.in_features // n
    with torch.no_grad():
        for h in heads:
            for p, start in params:
                p[start + h * d: start + (h + 1) * d] = 0
            out.weight[:, h * d:(h + 1) * d] = 0


def sibling_output(model: nn.Module, name: str):
    """BERT/RoBERTa: the output projection of `...attention.self` is `...attention.output.dense`."""
    return model.get_submodule(name[: -len(".self")]).output.dense if name.endswith(".self") else None


def check_heads_by_value(model, pruned, rec, attn_of=lambda n: n, out_of=sibling_output):
    """Every pruned attention module kept the same original heads in q, k, v and out — the complement of
    the removed ones — and zeroing the removed heads in the original reproduces the pruned outputs."""
    zeroed = copy.deepcopy(model)
    assert rec["heads_removed"], "no heads were removed"
    for name, info in rec["heads_removed"].items():
        orig_name = attn_of(name)
        orig, new = model.get_submodule(orig_name), pruned.get_submodule(name)
        kept = surviving_heads(head_blocks(orig, out_of(model, orig_name)), head_blocks(new, out_of(pruned, name)))
        expected = [h for h in range(info["before"]) if h not in info["removed"]]
        assert kept == {"q": expected, "k": expected, "v": expected, "out": expected}, name
        zero_heads(zeroed.get_submodule(orig_name), info["removed"], out_of(zeroed, orig_name))
    return zeroed


def check_onnx_and_checkpoint(pruned, spec, rec, factory, cfg, feed, tmp_path):
    data = ArrayDataset({k: v.numpy() for k, v in feed.items()}, np.arange(len(next(iter(feed.values())))) % CLASSES)
    report = to_onnx(pruned, spec, tmp_path / "pruned.onnx", check_parity_on=data)
    assert report["parity"]["passed"] and report["parity"]["max_abs_diff"] < 1e-3
    checkpoint.save(pruned, spec, tmp_path / "ckpt", cfg, factory=factory, pruning_plan=[rec["plan"]])
    again, _, _ = checkpoint.load(tmp_path / "ckpt", trust_code=True)
    assert torch.allclose(run(again, feed), run(pruned, feed), atol=1e-5)


# ---------------------------------------------------------------- Hugging Face BERT

def bert_feed(batch=4, seed=0):
    ids = tokens(batch, seed)
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def test_bert_heads_are_removed_in_q_k_v_and_output_together(tmp_path):
    model, spec = build_bert(BERT).eval(), token_spec("input_ids", "attention_mask")
    pruned, rec = prune(model, spec, ratio=0.5, only=["heads"])
    feed = bert_feed()
    for i in range(2):
        name = f"bert.encoder.layer.{i}.attention.self"
        sa = pruned.get_submodule(name)
        assert (sa.num_attention_heads, sa.attention_head_size, sa.all_head_size) == (2, 16, 32)
        assert sa.query.out_features == sa.key.out_features == sa.value.out_features == 32
        assert pruned.bert.encoder.layer[i].attention.output.dense.in_features == 32
        assert rec["heads_removed"][name]["before"] == 4 and len(rec["heads_removed"][name]["removed"]) == 2
        assert pruned.bert.encoder.layer[i].intermediate.dense.out_features == 128  # only heads were asked for
    assert pruned.bert.config.pruned_heads == {i: rec["heads_removed"][f"bert.encoder.layer.{i}.attention.self"]["removed"] for i in range(2)}
    assert pruned.bert.embeddings.word_embeddings.embedding_dim == 64
    zeroed = check_heads_by_value(model, pruned, rec)
    assert torch.allclose(run(zeroed, feed), run(pruned, feed), atol=1e-5)
    assert not torch.allclose(run(model, feed), run(pruned, feed), atol=1e-3)  # the heads did matter
    assert count_macs(pruned, feed) < count_macs(model, feed) and rec["after"]["macs"] < rec["before"]["macs"]
    check_onnx_and_checkpoint(pruned, spec, rec, "test_prune_heads:build_bert", BERT, feed, tmp_path)


def test_bert_ffn_widths_shrink_and_the_rest_rebuilds(tmp_path):
    model, spec = build_bert(BERT).eval(), token_spec("input_ids", "attention_mask")
    pruned, rec = prune(model, spec, ratio=0.3, head_ratio=0.25, ffn_ratio=0.5, only=["heads", "ffn"])
    feed = bert_feed()
    for i, layer in enumerate(pruned.bert.encoder.layer):
        orig = model.bert.encoder.layer[i]
        assert layer.intermediate.dense.out_features == layer.output.dense.in_features == 64
        assert rec["ffn_widths"][f"bert.encoder.layer.{i}"] == {"before": 128, "after": 64}
        assert layer.attention.self.num_attention_heads == 3
        # the same hidden units leave the up and the down projection: zeroing them in the original changes nothing
        up, down = orig.intermediate.dense, orig.output.dense
        units = [next(j for j in range(128) if torch.equal(up.weight[j], w)) for w in layer.intermediate.dense.weight]
        assert torch.equal(layer.output.dense.weight, down.weight[:, units])
    assert pruned.bert.config.hidden_size == pruned.bert.embeddings.word_embeddings.embedding_dim == 64
    assert rec["after"]["macs"] < 0.8 * rec["before"]["macs"]
    check_onnx_and_checkpoint(pruned, spec, rec, "test_prune_heads:build_bert", BERT, feed, tmp_path)


class HFClassifier(nn.Module):
    """A Hugging Face encoder (random init from a config) under a classifier on its first token."""

    def __init__(self, family):
        super().__init__()
        import transformers as hf

        small = {"num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128, "hidden_size": 64}
        if family == "distilbert":
            self.encoder = hf.DistilBertModel(hf.DistilBertConfig(vocab_size=50, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                                                                  max_position_embeddings=32, dropout=0.0, attention_dropout=0.0))
        elif family == "roberta":
            self.encoder = hf.RobertaModel(hf.RobertaConfig(vocab_size=50, max_position_embeddings=40, hidden_dropout_prob=0.0,
                                                            attention_probs_dropout_prob=0.0, **small), add_pooling_layer=False)
        else:
            self.encoder = hf.ViTModel(hf.ViTConfig(image_size=16, patch_size=4, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                                    **small), add_pooling_layer=False)
        self.classifier = nn.Linear(64, CLASSES)

    def forward(self, **x):
        return self.classifier(self.encoder(**x).last_hidden_state[:, 0])


@pytest.mark.parametrize("family", ["distilbert", "roberta", "vit"])
def test_other_hugging_face_encoders_lose_whole_heads(family):
    torch.manual_seed(0)
    model = HFClassifier(family).eval()
    if family == "vit":
        spec = ModelSpec(inputs=[InputSpec(name="pixel_values", shape=[None, 3, 16, 16])], outputs=[OutputSpec(name="logits", shape=[None, CLASSES])],
                         class_names=[str(i) for i in range(CLASSES)])
        feed = {"pixel_values": torch.randn(3, 3, 16, 16)}
    else:
        spec, feed = token_spec("input_ids", "attention_mask"), bert_feed()
    pruned, rec = prune(model, spec, ratio=0.5, only=["heads"])
    assert len(rec["heads_removed"]) == 2 and all(v["after"] == 2 for v in rec["heads_removed"].values())
    zeroed = check_heads_by_value(model, pruned, rec)
    assert torch.allclose(run(zeroed, feed), run(pruned, feed), atol=1e-5)
    assert rec["after"]["macs"] < rec["before"]["macs"]


# ---------------------------------------------------------------- torch.nn.MultiheadAttention

def test_split_multihead_attention_computes_what_torch_does():
    torch.manual_seed(0)
    x, mem = torch.randn(3, 7, 32), torch.randn(3, 5, 24)
    pad = torch.zeros(3, 5, dtype=torch.bool)
    pad[0, 3:] = True
    causal = torch.ones(7, 7, dtype=torch.bool).triu(1)
    for mha, args, kw in [
        (nn.MultiheadAttention(32, 4, batch_first=True), (x, x, x), {"attn_mask": causal}),
        (nn.MultiheadAttention(32, 4, kdim=24, vdim=24, batch_first=True), (x, mem, mem), {"key_padding_mask": pad}),
        (nn.MultiheadAttention(32, 4), tuple(t.transpose(0, 1) for t in (x, x, x)), {"average_attn_weights": False}),
    ]:
        split = SplitMultiheadAttention.from_torch(mha.eval()).eval()
        want, got = mha(*args, **kw), split(*args, **kw)
        assert torch.allclose(want[0], got[0], atol=1e-5) and torch.allclose(want[1], got[1], atol=1e-5)


def test_multihead_attention_heads_are_removed_consistently(tmp_path):
    model, spec = build_mha({"d": 32}).eval(), token_spec("tokens")
    pruned, rec = prune(model, spec, ratio=0.5, only=["heads"])
    assert isinstance(pruned.attn, SplitMultiheadAttention) and pruned.attn.num_heads == 2
    assert set(rec["heads_removed"]) == {"attn", "encoder.layers.0.self_attn"}
    assert rec["plan"]["split_mha"] == ["attn", "encoder.layers.0.self_attn"]
    feed = {"tokens": tokens(4, seed=1, pad_from=(SEQ, 8, SEQ, 5))}
    zeroed = check_heads_by_value(model, pruned, rec)
    assert torch.allclose(run(zeroed, feed), run(pruned, feed), atol=1e-5)
    # the pruned model keeps torch's per-head attn_mask layout [B * original heads, L, S] working
    mask = torch.zeros(4 * 4, SEQ, SEQ)
    mask[1::4] = torch.zeros(SEQ, SEQ).masked_fill(torch.ones(SEQ, SEQ, dtype=torch.bool).triu(1), float("-inf"))
    x = torch.randn(4, SEQ, 32)
    kept = pruned.attn.kept_heads
    with torch.no_grad():
        got = pruned.attn(x, x, x, attn_mask=mask, need_weights=True, average_attn_weights=False)[1]
        want = zeroed.attn(x, x, x, attn_mask=mask, need_weights=True, average_attn_weights=False)[1][:, kept]
    assert torch.allclose(got, want, atol=1e-5)


def test_multihead_attention_model_prunes_everywhere_and_rebuilds(tmp_path):
    model, spec = build_mha({"d": 32}).eval(), token_spec("tokens")
    pruned, rec = prune(model, spec, ratio=0.5)
    assert pruned.encoder.layers[0].self_attn.num_heads == 2 and pruned.encoder.layers[0].linear1.out_features == 32
    assert pruned.embed.embedding_dim < 32  # the residual width too, past the split attention modules
    assert rec["after"]["macs"] < 0.5 * rec["before"]["macs"]
    check_onnx_and_checkpoint(pruned, spec, rec, "test_prune_heads:build_mha", {"d": 32}, {"tokens": tokens(4, seed=2)}, tmp_path)


# ---------------------------------------------------------------- timm-style packed qkv

def test_timm_style_qkv_heads_are_removed_consistently(tmp_path):
    model, spec = build_timm({}).eval(), token_spec("tokens")
    pruned, rec = prune(model, spec, ratio=0.3, ffn_ratio=0.5, only=["heads", "ffn"])
    for i, block in enumerate(pruned.blocks):
        assert block.attn.num_heads == 4 and block.attn.qkv.out_features == 3 * 4 * 8 and block.attn.proj.in_features == 32
        assert block.mlp.fc1.out_features == block.mlp.fc2.in_features == 48
    feed = {"tokens": tokens(4, seed=3)}
    zeroed = check_heads_by_value(model, pruned, rec)
    for name, (fc1, fc2) in {f"blocks.{i}.mlp": (b.mlp.fc1, b.mlp.fc2) for i, b in enumerate(pruned.blocks)}.items():
        orig = zeroed.get_submodule(name)
        units = [next(j for j in range(96) if torch.equal(orig.fc1.weight[j], w)) for w in fc1.weight]
        with torch.no_grad():
            gone = [j for j in range(96) if j not in units]
            orig.fc2.weight[:, gone] = 0  # removed hidden units: zero their outgoing weights
    assert torch.allclose(run(zeroed, feed), run(pruned, feed), atol=1e-5)
    assert rec["after"]["macs"] < rec["before"]["macs"]
    check_onnx_and_checkpoint(pruned, spec, rec, "test_prune_heads:build_timm", {}, feed, tmp_path)


def test_taylor_importance_ranks_heads_by_gradients():
    model, spec = build_timm({}).eval(), token_spec("tokens")
    cal = ArrayDataset({"tokens": tokens(16, seed=4, pad_from=()).numpy()}, np.arange(16) % CLASSES)
    pruned, rec = prune(model, spec, ratio=0.3, only=["heads"], importance="taylor", calibration=cal, calibration_batches=1)
    assert all(b.attn.num_heads == 4 for b in pruned.blocks) and rec["heads_removed"]


# ---------------------------------------------------------------- 3-D concats in fusion heads

class TokenConcatFusion(nn.Module):
    """Two token branches [B, N, C_i] joined on the feature axis (dim 2), one Linear over the joint features,
    with a positional table [1, N, C] upstream (it tripped Torch-Pruning's ViT heuristic, which then pruned
    both branches at the same indices); and two [B, C, L] sequence branches joined on the channel axis
    (dim 1) into a Conv1d."""

    def __init__(self, cfg=None):
        super().__init__()
        self.a, self.b = nn.Linear(8, 32), nn.Linear(6, 24)
        self.pos = nn.Parameter(torch.randn(1, 5, 32) * 0.02)
        self.fuse_tokens = nn.Linear(56, 40)
        self.conv_a, self.conv_b = nn.Conv1d(4, 16, 3, padding=1), nn.Conv1d(4, 12, 3, padding=1)
        self.fuse_seq = nn.Conv1d(28, 20, 1)
        self.classifier = nn.Linear(60, CLASSES)

    def forward(self, xa, xb, sa, sb):
        t = torch.cat([torch.relu(self.a(xa) + self.pos), torch.relu(self.b(xb))], dim=2)
        s = torch.cat([torch.relu(self.conv_a(sa)), torch.relu(self.conv_b(sb))], dim=1)
        return self.classifier(torch.cat([torch.relu(self.fuse_tokens(t)).mean(1), torch.relu(self.fuse_seq(s)).mean(2)], 1))


def test_concat_of_3d_features_maps_each_branch_to_its_own_columns():
    torch.manual_seed(0)
    model = TokenConcatFusion().eval()
    spec = ModelSpec(inputs=[InputSpec(name="xa", shape=[None, 5, 8]), InputSpec(name="xb", shape=[None, 5, 6]),
                             InputSpec(name="sa", shape=[None, 4, 9]), InputSpec(name="sb", shape=[None, 4, 9])],
                     outputs=[OutputSpec(name="logits", shape=[None, CLASSES])], class_names=[str(i) for i in range(CLASSES)])
    pruned, rec = prune(model, spec, ratio=0.5)
    assert rec["after"]["macs"] < 0.6 * rec["before"]["macs"]

    def kept(orig, new):  # which original units survived, found by their (distinct, random) biases
        return [int(torch.argmin((orig.bias - v).abs())) for v in new.bias.detach()]

    for branches, fuse, axis in [(("a", "b"), "fuse_tokens", 1), (("conv_a", "conv_b"), "fuse_seq", 1)]:
        cols, offset = [], 0
        for name in branches:
            orig = getattr(model, name)
            cols += [offset + r for r in kept(orig, getattr(pruned, name))]
            offset += orig.weight.shape[0]
        assert len(cols) < offset
        orig_fuse, new_fuse = getattr(model, fuse), getattr(pruned, fuse)
        rows = kept(orig_fuse, new_fuse)
        assert torch.equal(new_fuse.weight.detach(), orig_fuse.weight.detach()[rows][:, cols])
