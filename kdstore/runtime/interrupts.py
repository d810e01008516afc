"""Ctrl-C and SIGTERM that cannot be swallowed, nor run in a forked child.

Python raises KeyboardInterrupt wherever the main thread is when the signal lands; inside a
ctypes callback (numba compiling FFCV's pipeline, say) ctypes prints "Exception ignored" and
carries on, and a cache would run to the end. So the handler also records the signal, and long
loops call `check()` at safe points (`phase()` at the start of each phase of a command), which
raises KeyboardInterrupt once a signal has been recorded, and a swallowed interrupt is delivered
to the main thread again, to be raised as soon as it leaves the callback; the "Exception ignored"
report of such a swallowed interrupt (a traceback on stderr) is left out: the command ends with
its own one line.

A process forked from the command (FFCV's writer and its workers, the estimate's sample writer)
does not run this handler: SIGINT and SIGTERM are back at their defaults in it from the fork on
(it ends, as a process without a handler does), and the command decides: it stops its children
and says what it kept."""

from __future__ import annotations

import _thread
import os
import signal
import sys
import threading
import time

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []
_raised: list[int] = []  # KeyboardInterrupts raised (by the handler, or by check()), swallowed or not
_owner: list[int] = []  # the pid that installed the handler (a forked child has another)


def handle(signum: int, frame: object) -> None:
    """The handler of SIGINT and SIGTERM: record the signal, then raise KeyboardInterrupt. In a
    forked child that has not yet reset it (the signal landed during the fork's own hooks), the
    signal's default action instead: the child ends, the command decides."""
    if _owner and os.getpid() != _owner[0]:
        _reset()
        os.kill(os.getpid(), signum)
        return
    _received.append(signum)
    _raised.append(signum)
    raise KeyboardInterrupt


def _reset() -> None:
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_DFL)


def install() -> None:
    """Handle SIGINT and SIGTERM with `handle` (the CLI's entry points); a process forked from
    here starts with both at their defaults."""
    if not _owner:
        os.register_at_fork(after_in_child=_reset)
    _owner[:] = [os.getpid()]
    for sig in SIGNALS:
        signal.signal(sig, handle)
    sys.unraisablehook = _quiet_swallowed(sys.unraisablehook)


def _quiet_swallowed(previous):
    """An unraisablehook that says nothing of a KeyboardInterrupt this handler raised where it
    could not propagate (a ctypes callback): it is recorded, and delivered again to the main
    thread (`_thread.interrupt_main`, from a thread of its own so that it lands after this
    hook), which raises it as soon as it runs Python code outside such a callback (numba's
    compiler, between two of llvmlite's callbacks; in one, it is swallowed and delivered again):
    the command stops within moments, not at the next `check()` seconds later."""

    def hook(unraisable) -> None:
        if _received and isinstance(unraisable.exc_value, KeyboardInterrupt):
            if _owner == [os.getpid()]:
                _deliver_again()
            return
        previous(unraisable)

    return hook


DELIVER_AFTER_S = 0.02  # a swallowed interrupt is delivered again this long after (once the hook has returned)


def _deliver_again() -> None:
    """Deliver the last signal to the main thread again, from a timer thread, unless the main
    thread raises an interrupt meanwhile (one KeyboardInterrupt is enough: a second one would
    land in the command's clean-up)."""
    for _ in range(3):  # the timer's start waits for its thread: the signal may land in there
        timer = threading.Timer(DELIVER_AFTER_S, _interrupt_unless_raised, (len(_raised),))
        timer.daemon = True
        try:
            timer.start()
            return
        except KeyboardInterrupt:
            continue


def _interrupt_unless_raised(raised: int) -> None:
    if len(_raised) == raised and _received:
        _thread.interrupt_main(signal.Signals(_received[-1]))


def check() -> None:
    """Raise KeyboardInterrupt if a signal was received (and perhaps swallowed) since start-up."""
    if _received:
        _raised.append(1)
        raise KeyboardInterrupt


TRACE = "KDSTORE_TRACE_PHASES"  # tests: print `phase NAME` on stderr as each phase starts
HOLD = "KDSTORE_HOLD_AT_PHASE"  # tests: wait at the start of phase NAME until a signal comes
HOLD_MAX_S = 60.0  # ... or this long at most


def phase(name: str) -> None:
    """A phase of a long command starts (`cache`: estimate, betons, teacher, views, publish): a
    signal swallowed before it is raised now. Two seams for the tests that send signals at every phase: with
    KDSTORE_TRACE_PHASES set, `phase NAME` goes to stderr; with KDSTORE_HOLD_AT_PHASE=NAME, the
    command waits here (a phase too short to hit otherwise) until a signal interrupts it, or
    HOLD_MAX_S at most."""
    check()
    if os.environ.get(TRACE):
        print(f"phase {name}", file=sys.stderr, flush=True)
    if os.environ.get(HOLD) == name:
        deadline = time.monotonic() + HOLD_MAX_S
        while time.monotonic() < deadline:
            time.sleep(0.01)
            check()


def interrupted() -> bool:
    """Whether this process, the one that installed the handler, has received SIGINT or SIGTERM."""
    return bool(_received) and _owner == [os.getpid()]


def exit_now(code: int) -> None:
    """End an interrupted command at once, once it has said its one line: stdout and stderr are
    flushed and the interpreter's teardown is skipped (a second or two of unloading torch, numba
    and FFCV: a signal is answered within 2 s). Everything the command keeps is closed by then:
    the exception that carried the interrupt has run every `finally` and `with` on its way out,
    stopped the child processes and kept the partial cache; metrics and event files are flushed
    each epoch."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
