"""Ctrl-C and `kill` mean stop, within a second or two, whatever the command is doing.

SIGINT and SIGTERM both raise KeyboardInterrupt in the main thread, so every `finally` and `with` on the way out
runs: an atomic write removes its temp file, a half-built artifact never gets its "finished" file (those are
written last). The CLI then prints one line and exits 128 + the signal's number (130, 143).

Python runs a signal handler only between bytecodes of the main thread: a native call that does not return (a
long inference, a model compile, a thread pool's join at exit) would delay it. So the signal also wakes a
watchdog thread (signal.set_wakeup_fd); if the process is still alive GRACE_SECONDS later, the watchdog removes
the temp files of writes in progress, says the same line and ends the process. A temp file left by a run killed
with SIGKILL is removed by the next write into its folder (edgekit.io.remove_stale_temp_files)."""
from __future__ import annotations

import os
import signal
import sys
import threading

GRACE_SECONDS = 2.0
MESSAGE = "interrupted; rerun the same command to resume"
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_state = {"received": None, "reported": False, "lock": threading.Lock()}


def received() -> int | None:
    """The number of the first SIGINT/SIGTERM this process got (after install()), or None."""
    return _state["received"]


def exit_code(default: int = 130) -> int:
    """128 + the signal's number: 130 for SIGINT (Ctrl-C), 143 for SIGTERM."""
    return 128 + _state["received"] if _state["received"] else default


def report(say=None) -> bool:
    """Print MESSAGE once (the main thread and the watchdog may both get here); True if this call printed it."""
    with _state["lock"]:
        if _state["reported"]:
            return False
        _state["reported"] = True
    (say or (lambda m: print(m, file=sys.stderr, flush=True)))(MESSAGE)
    return True


def leave() -> None:
    """End an interrupted process once its main thread has unwound (every `finally` has run): exit with exit_code()
    without the interpreter's finalization and atexit handlers, which join worker threads and child processes
    (OpenVINO's telemetry senders wait seconds for a network) and would keep a stopped command alive."""
    _remove_temp_files()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 — a closed pipe
            pass
    os._exit(exit_code())


def _handler(signum, frame):
    if not _state.get("raised"):
        _state["raised"] = True
        _state["received"] = _state["received"] or signum  # the watchdog may have read it first
        raise KeyboardInterrupt(signal.Signals(signum).name)
    # a second signal while unwinding is not a second exception (it would cut a cleanup short): the watchdog
    # ends the process within GRACE_SECONDS of the first one anyway


def _watch(fd: int) -> None:
    while True:
        try:
            got = os.read(fd, 64)
        except InterruptedError:
            continue
        first = next((b for b in got if b in _SIGNALS), None)
        if first is not None:
            break
    if _state["received"] is None:  # the main thread has not run the handler yet (it is inside native code)
        _state["received"] = first
    threading.Event().wait(GRACE_SECONDS)
    _hard_exit()


def _remove_temp_files() -> None:
    """The temp files of writes still in progress (another thread's, or one cut short between its steps)."""
    try:
        from edgekit.io import remove_active_temp_files

        remove_active_temp_files()
    except Exception:  # noqa: BLE001 — leaving now matters more; the next run removes stale temp files
        pass


def _hard_exit() -> None:
    """The main thread did not get out in time: drop the temp files of writes in progress, say so, and exit."""
    _remove_temp_files()
    try:
        report()
        sys.stdout.flush()
    except Exception:  # noqa: BLE001
        pass
    os._exit(exit_code())


def install() -> None:
    """SIGINT/SIGTERM -> KeyboardInterrupt in the main thread, plus the watchdog. For the CLI's main() only: a
    library must not take over its host program's signals."""
    if threading.current_thread() is not threading.main_thread() or _state.get("installed"):
        return
    _state["installed"] = True
    for s in _SIGNALS:
        signal.signal(s, _handler)
    r, w = os.pipe()
    os.set_blocking(w, False)
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    threading.Thread(target=_watch, args=(r,), name="edgekit-signal-watchdog", daemon=True).start()
    os.register_at_fork(after_in_child=_default_in_child)


def _default_in_child() -> None:
    """A process forked from ours (multiprocessing, e.g. OpenVINO's telemetry senders, SIGTERMed after a timeout)
    must not wake our watchdog, and stops at once and silently on Ctrl-C (the terminal signals the whole group)."""
    try:
        signal.set_wakeup_fd(-1)
        for s in _SIGNALS:
            signal.signal(s, signal.SIG_DFL)
    except (ValueError, OSError):  # not the child's main thread: it keeps what it inherited
        pass
