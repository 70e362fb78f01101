import os
import subprocess
import sys
import textwrap

import pytest

from edgekit.errors import EdgekitError
from edgekit.rundir import RunLock, Stages, stage_key


def test_second_writer_is_refused_with_the_pid(tmp_path):
    import subprocess
    import sys

    take = f"from edgekit.rundir import RunLock; RunLock({str(tmp_path)!r}).__enter__(); print('held', flush=True); input()"
    holder = subprocess.Popen([sys.executable, "-c", take], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(EdgekitError, match=f"PID {holder.pid}"):
            with RunLock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with RunLock(tmp_path):  # released when its holder is gone
        with RunLock(tmp_path):  # re-entrant in one process: a stage inside `edgekit run` takes it again
            pass
        assert (tmp_path / ".lock").read_text() == str(os.getpid())  # still held after the inner exit
    assert (tmp_path / ".lock").read_text() == ""


def test_lock_of_a_killed_process_is_released(tmp_path):
    code = textwrap.dedent(f"""
        import os, signal
        from edgekit.rundir import RunLock
        RunLock({str(tmp_path)!r}).__enter__()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    subprocess.run([sys.executable, "-c", code])
    with RunLock(tmp_path):
        pass


def test_stage_is_skipped_only_when_inputs_settings_and_outputs_match(tmp_path):
    inp, out = tmp_path / "in.txt", tmp_path / "out.txt"
    inp.write_text("a")
    out.write_text("result")
    st = Stages(tmp_path)
    key = stage_key({"lr": 1}, inp)
    assert not st.done("train", key)
    st.mark("train", key, [out])
    assert st.done("train", key)
    assert not st.done("train", stage_key({"lr": 2}, inp))
    inp.write_text("b")
    assert not st.done("train", stage_key({"lr": 1}, inp))
    inp.write_text("a")
    assert Stages(tmp_path, force={"train"}).done("train", key) is False
    out.unlink()
    assert not st.done("train", key)
