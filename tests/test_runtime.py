"""edgekit.runtime.load(bundle): raw inputs in, class out, preprocessing identical to training's, and usable
from the bundle alone (no edgekit, torch or pydantic importable)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.agent import predictor as P
from edgekit.errors import EdgekitError


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, fsdd):
    import torch

    from edgekit.data import avdigits
    from edgekit.deploy.bundle import eval_samples, make_bundle, variant_from_onnx
    from edgekit.export import to_onnx
    from edgekit.models import build_model, preset_config
    from edgekit.train import reference_spec

    d = tmp_path_factory.mktemp("bundle")
    torch.manual_seed(0)
    cfg = preset_config("tiny", "late")
    onnx = d / "src" / "late" / "model.onnx"
    onnx.parent.mkdir(parents=True)
    to_onnx(build_model(cfg), reference_spec(cfg, avdigits.preprocessing(fsdd)), onnx, max_samples=16)
    v = variant_from_onnx(onnx)
    make_bundle(d / "bundle", [v], eval_samples(None, v.spec, 16), None, None)
    return d / "bundle"


@pytest.fixture(scope="module")
def raw(fsdd):
    """One raw sample of each modality: an 8x8 digit image (0..16), a recording, a sentence."""
    from sklearn.datasets import load_digits

    from edgekit.data.audio import read_wav

    wav = sorted(Path(fsdd, "recordings").glob("7_*.wav"))[0] if fsdd else None
    wave, rate = read_wav(wav) if wav else (np.sin(np.linspace(0, 800, 4000)).astype(np.float32), 8000)
    return {"image": load_digits().images[7], "audio_wave": wave, "sample_rate": rate, "text": "please dial seven now"}


def test_log_mel_matches_training_frontend():
    from edgekit.data.audio import FRONTEND, log_mel

    rng = np.random.default_rng(0)
    for rate, n in ((8000, 5000), (8000, 20000), (16000, 12000)):
        x = rng.standard_normal(n).astype(np.float32) * 0.1
        ours = P.log_mel(x, rate, target_rate=FRONTEND["sample_rate"],
                         **{k: FRONTEND[k] for k in ("n_fft", "hop", "n_mels", "frames")})
        np.testing.assert_allclose(ours, log_mel(x, rate), rtol=1e-5, atol=1e-5)


def test_image_resize_matches_torch_bilinear():
    import torch
    from sklearn.datasets import load_digits

    img = load_digits().images[3].astype(np.float32) / 16.0
    ref = torch.nn.functional.interpolate(torch.from_numpy(img)[None, None], size=(28, 28), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(P.resize_bilinear(img, 28, 28), ref[0, 0].numpy(), atol=1e-6)


def test_tokenize_uses_the_vocabulary():
    from edgekit.data.avdigits import VOCAB

    ids = P.tokenize("The PIN is Seven, xyzzy!", VOCAB, 8)
    assert list(ids) == [VOCAB.index("the"), VOCAB.index("pin"), VOCAB.index("is"), VOCAB.index("seven"), 1, 0, 0, 0]
    assert len(P.tokenize(" ".join(["one"] * 40), VOCAB, 16)) == 16


def test_predictor_applies_preprocessing(bundle, raw):
    import onnxruntime as ort
    import torch

    from edgekit.data.audio import log_mel
    from edgekit.runtime import load

    p = load(bundle, runtime="onnxruntime")
    assert p.variant == "late" and p.info["runtime"] == "onnxruntime"
    pre = p.spec["preprocessing"]
    feed = p.feed(**raw)
    img = torch.nn.functional.interpolate(torch.from_numpy(raw["image"].astype(np.float32) / 16)[None, None], size=(28, 28),
                                          mode="bilinear", align_corners=False).numpy()
    np.testing.assert_allclose(feed["image"], img, atol=1e-6)
    mel = (log_mel(raw["audio_wave"], raw["sample_rate"]) - pre["audio"]["mean"]) / pre["audio"]["std"]
    np.testing.assert_allclose(feed["audio"][0, 0], mel, rtol=1e-5, atol=1e-5)
    assert feed["text"].dtype == np.int64 and feed["text"][0, 2] == pre["text"]["vocab"].index("seven")
    assert feed["modality_mask"].tolist() == [[1.0, 1.0, 1.0]]
    out = p.predict(**raw)
    sess = ort.InferenceSession(str(bundle / "variants/late/model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(out["logits"], sess.run(None, feed)[0][0], rtol=1e-5, atol=1e-5)
    assert out["label"] == p.class_names[out["index"]] and abs(float(out["probabilities"].sum()) - 1) < 1e-5


def test_missing_modalities_are_zeros_with_mask(bundle, raw):
    from edgekit.runtime import load

    p = load(bundle, "late", runtime="onnxruntime")
    feed = p.feed(image=raw["image"], text=raw["text"])
    assert feed["modality_mask"].tolist() == [[1.0, 0.0, 1.0]] and not feed["audio"].any() and feed["audio"].shape == (1, 1, 40, 64)
    features = p.feed(audio=np.ones((40, 64), np.float32))  # model-ready features pass through
    assert features["modality_mask"].tolist() == [[0.0, 1.0, 0.0]] and features["audio"].shape == (1, 1, 40, 64)
    with pytest.raises(ValueError, match="every modality is missing"):
        p.predict()


def test_load_errors(bundle, tmp_path):
    from edgekit.runtime import load

    with pytest.raises(EdgekitError, match="not an edgekit bundle"):
        load(tmp_path)
    with pytest.raises(EdgekitError, match="variant 'int8' is not in the bundle") as e:
        load(bundle, "int8")
    assert "variant names" in e.value.hint
    with pytest.raises(EdgekitError, match="unknown runtime"):
        load(bundle, runtime="tflite")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(EdgekitError, match="runtime 'tensorrt' is not installed"):
            load(bundle, runtime="tensorrt")


def test_bundle_works_without_edgekit(bundle, raw, tmp_path):
    """On a device only the bundle exists: its own copy of the predictor, numpy and the runtime."""
    from edgekit.runtime import load

    np.savez(tmp_path / "raw.npz", image=raw["image"], audio_wave=raw["audio_wave"])
    code = f"""
import sys, json
for blocked in ("edgekit", "torch", "pydantic", "scipy"):
    sys.modules[blocked] = None  # importing any of them now fails
sys.path.insert(0, {str(bundle)!r})
import numpy as np
from edgekit_agent.predictor import load
raw = np.load({str(tmp_path / "raw.npz")!r})
p = load({str(bundle)!r}, runtime="auto")
out = p.predict(image=raw["image"], audio_wave=raw["audio_wave"], sample_rate={raw["sample_rate"]}, text={raw["text"]!r})
print(json.dumps({{"label": out["label"], "logits": out["logits"].tolist(), "runtime": p.info["runtime"]}}))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    want = load(bundle, runtime="onnxruntime").predict(**raw)
    assert got["label"] == want["label"] and got["runtime"] == "onnxruntime"
    # without scipy, audio at the model's own rate needs no resampling: identical logits
    np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-4, atol=1e-4)
