import json
import pickle

import pytest
import torch

from edgekit import checkpoint
from edgekit.errors import EdgekitError
from edgekit.train import to_torch


def test_round_trip_is_bit_identical(tiny_checkpoint, tmp_path):
    model, spec, cfg = checkpoint.load(tiny_checkpoint)
    x = to_torch(spec.example_inputs(4))
    checkpoint.save(model, spec, tmp_path / "copy", cfg["model"])
    again, spec2, _ = checkpoint.load(tmp_path / "copy")
    with torch.no_grad():
        assert torch.equal(model(**x), again(**x))
    assert spec2 == spec
    # the file itself also loads (config.json found beside it)
    checkpoint.load(tmp_path / "copy" / "model.safetensors")


def test_pickle_is_refused_without_unpickling(tiny_checkpoint, tmp_path):
    bad = tmp_path / "ck"
    bad.mkdir()
    (bad / "config.json").write_text((tiny_checkpoint / "config.json").read_text())

    class Boom:
        def __reduce__(self):
            return (exec, ("open('%s','w').write('pwned')" % (tmp_path / "pwned"),))

    (bad / "model.safetensors").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(EdgekitError, match="contains a pickle"):
        checkpoint.load(bad)
    torch.save({"x": Boom()}, bad / "model.safetensors")
    with pytest.raises(EdgekitError, match="contains a pickle"):
        checkpoint.load(bad)
    (bad / "model.safetensors").unlink()
    torch.save({"x": Boom()}, bad / "model.pt")
    with pytest.raises(EdgekitError, match="not a plain tensor file"):
        checkpoint.load(bad)
    assert not (tmp_path / "pwned").exists()


def test_safetensors_whose_header_length_starts_with_0x80_is_not_a_pickle(tmp_path):
    """A safetensors file begins with its header's length; when that length's low byte is 0x80 (one file in 256) it
    looks like a pickle's first byte. A pruned model's weights hit this: they must load, not be refused."""
    from safetensors.torch import save_file

    state = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    for pad in range(300):
        save_file(state, tmp_path / "w.safetensors", metadata={"pad": "x" * pad})
        head = (tmp_path / "w.safetensors").read_bytes()[:8]
        if head[0] == 0x80:
            break
    assert head[0] == 0x80
    assert torch.equal(checkpoint.read_state(tmp_path / "w.safetensors")["w"], state["w"])


def test_corrupt_truncated_and_mismatched(tiny_checkpoint, tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    data = (tiny_checkpoint / "model.safetensors").read_bytes()
    (ck / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    (ck / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(EdgekitError, match="corrupt or truncated"):
        checkpoint.load(ck)
    (ck / "model.safetensors").write_bytes(data)
    cfg = json.loads((ck / "config.json").read_text())
    cfg["model"]["image"]["stem"] = 4
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EdgekitError, match="do not match the model"):
        checkpoint.load(ck)
    (ck / "config.json").write_text("{not json")
    with pytest.raises(EdgekitError, match="not valid JSON"):
        checkpoint.load(ck)
    with pytest.raises(EdgekitError, match="does not exist"):
        checkpoint.load(tmp_path / "missing")
