import json

import pytest

from conftest import run_cli


def test_help_lists_commands():
    r = run_cli("--help")
    assert r.returncode == 0
    for cmd in ("doctor", "train", "evaluate"):
        assert cmd in r.stdout


def test_doctor_json_reports_backends_and_isa():
    r = run_cli("doctor", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert "avx2" in info["cpu"]["isa"]
    assert info["libraries"]["torch"].startswith("2.13")
    assert set(info["backends"]) >= {"onnxruntime", "openvino", "tensorrt"}
    trt = info["backends"]["tensorrt"]
    assert trt["available"] or trt["reason"]


@pytest.mark.parametrize("args, message", [
    (["evaluate", "/no/such/ck"], "does not exist"),
    (["train", "--fusion", "sum", "--out", "{tmp}/o"], "unknown fusion type"),
    (["train", "--fsdd", "{tmp}/nowhere", "--out", "{tmp}/o"], "does not exist"),
    (["train", "--fsdd", "{tmp}", "--out", "{tmp}/o"], "holds no WAV"),
])
def test_bad_input_is_one_line_error_exit_2_and_no_output(tmp_path, args, message):
    r = run_cli(*[a.format(tmp=tmp_path) for a in args])
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "hint:" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_evaluate_cli_on_a_checkpoint(tiny_checkpoint, fsdd):
    r = run_cli("evaluate", tiny_checkpoint, "--json", *(["--fsdd", fsdd] if fsdd else []))
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["accuracy"] > 0.4 and "missing_modality_accuracy" in m


def test_corrupt_checkpoint_via_cli(tiny_checkpoint, tmp_path):
    (tmp_path / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 10)
    r = run_cli("evaluate", tmp_path)
    assert r.returncode == 2 and "corrupt" in r.stderr and "Traceback" not in r.stderr


def test_unknown_option_is_a_usage_error_exit_2():
    r = run_cli("train", "--no-such-option")
    assert r.returncode == 2
    assert "No such option" in r.stderr and "Traceback" not in r.stderr


def test_a_bug_in_edgekit_says_so_exit_1(monkeypatch, capsys):
    """The last line of defence in main(): an exception that is not the user's fault."""
    from edgekit import cli

    def broken(**_):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(cli, "app", broken)
    monkeypatch.delenv("EDGEKIT_DEBUG", raising=False)
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 1
    out = capsys.readouterr()
    text = out.out + out.err
    assert "internal error (a bug in edgekit)" in text and "ZeroDivisionError: boom" in text and "Traceback" not in text


def test_an_internal_error_is_reported_as_a_bug_exit_1(monkeypatch, capsys):
    """InternalError (edgekit's own bug, e.g. a graph rewrite that made an invalid graph) is not a user mistake:
    it says "bug, please report" with where to report it, no hint to fix the input, and exits 1 (not 2)."""
    from edgekit import cli
    from edgekit.errors import ISSUES_URL, InternalError

    def broken(**_):
        raise InternalError("rewriting the Q/DQ pairs made an invalid graph")

    monkeypatch.setattr(cli, "app", broken)
    monkeypatch.delenv("EDGEKIT_DEBUG", raising=False)
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 1
    out = capsys.readouterr()
    text = out.out + out.err
    assert "internal error (a bug in edgekit)" in text and "made an invalid graph" in text and ISSUES_URL in text
    assert "hint:" not in text and "Traceback" not in text
    monkeypatch.setenv("EDGEKIT_DEBUG", "1")  # the traceback is one variable away
    with pytest.raises(InternalError):
        cli.main()
