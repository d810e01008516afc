"""Ctrl-C and SIGTERM that cannot be swallowed. Python raises KeyboardInterrupt wherever the main
thread is when the signal lands; inside a ctypes callback (numba compiling FFCV's pipeline, say)
ctypes prints "Exception ignored" and carries on, and a cache would run to the end. So the
handler also records the signal, and long loops call `check()` at safe points, which raises
KeyboardInterrupt once a signal has been recorded; and the "Exception ignored" report of such a
swallowed interrupt (a traceback on stderr) is left out: the command ends with its own one line."""

from __future__ import annotations

import signal
import sys

_received: list[int] = []


def handle(signum: int, frame: object) -> None:
    """The handler of SIGINT and SIGTERM: record the signal, then raise KeyboardInterrupt."""
    _received.append(signum)
    raise KeyboardInterrupt


def install() -> None:
    """Handle SIGINT and SIGTERM with `handle` (the CLI's entry points)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handle)
    sys.unraisablehook = _quiet_swallowed(sys.unraisablehook)


def _quiet_swallowed(previous):
    """An unraisablehook that says nothing of a KeyboardInterrupt this handler raised where it
    could not propagate (a ctypes callback): it is recorded, and `check()` raises it again."""

    def hook(unraisable) -> None:
        if _received and isinstance(unraisable.exc_value, KeyboardInterrupt):
            return
        previous(unraisable)

    return hook


def check() -> None:
    """Raise KeyboardInterrupt if a signal was received (and perhaps swallowed) since start-up."""
    if _received:
        raise KeyboardInterrupt
