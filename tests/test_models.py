import numpy as np
import pytest
import torch

from edgekit.errors import EdgekitError
from edgekit.models import build_model, count_macs, count_params, preset_config
from edgekit.models.fusion import FUSION_HEADS


def _inputs(b=3):
    g = torch.Generator().manual_seed(0)
    return dict(image=torch.randn(b, 1, 28, 28, generator=g), audio=torch.randn(b, 1, 40, 64, generator=g),
                text=torch.randint(0, 64, (b, 16), generator=g), modality_mask=torch.ones(b, 3))


@pytest.mark.parametrize("fusion", list(FUSION_HEADS))
@pytest.mark.parametrize("text_kind", ["transformer", "lstm"])
def test_every_fusion_type_gives_logits_and_handles_missing(fusion, text_kind):
    torch.manual_seed(0)
    model = build_model(preset_config("tiny", fusion, text_kind=text_kind)).eval()
    x = _inputs()
    logits = model(**x)
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    # a missing modality (zeros + mask 0) must not change the output whatever garbage sits in its input
    x2 = dict(x, modality_mask=torch.tensor([[1.0, 0, 1]] * 3))
    a = model(**dict(x2, audio=torch.zeros(3, 1, 40, 64)))
    b = model(**dict(x2, audio=torch.randn(3, 1, 40, 64) * 100))
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, logits, atol=1e-4)  # ...but it does matter that it is missing
    only_text = dict(x, modality_mask=torch.tensor([[0.0, 0, 1]] * 3))
    assert torch.isfinite(model(**only_text)).all()


def test_base_preset_is_a_realistic_edge_model():
    model = build_model(preset_config("base", "attention"))
    macs = count_macs(model, {k: v[:1] for k, v in _inputs().items()})
    assert 5e6 <= count_params(model) <= 20e6
    assert 0.3e9 <= macs <= 2e9


def test_config_fixes_every_width():
    cfg = preset_config("tiny", "early")
    cfg["image"]["stages"][0]["mids"] = [5]
    cfg["text"]["layers"][0]["heads"] = 1
    model = build_model(cfg)
    assert model.image.body[6].conv1.out_channels == 5
    assert model.text.layers[0].attn.q.out_features == 16
    assert model(**_inputs()).shape == (3, 10)


def test_unknown_fusion_and_preset_are_user_errors():
    with pytest.raises(EdgekitError, match="unknown fusion type 'sum'"):
        preset_config("tiny", "sum")
    with pytest.raises(EdgekitError, match="unknown preset"):
        preset_config("huge", "early")


def test_macs_drop_with_width():
    small, big = preset_config("tiny", "early"), preset_config("tiny", "early")
    small["image"]["stages"][1]["width"] = 8
    x = {k: v[:1] for k, v in _inputs().items()}
    assert count_macs(build_model(small), x) < count_macs(build_model(big), x)
    assert np.isclose(count_macs(build_model(big), x), count_macs(build_model(big), x))
