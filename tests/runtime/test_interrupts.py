"""Signals that cannot be swallowed (kdstore.runtime.interrupts): a SIGTERM that lands inside a
ctypes callback (where numba compiles FFCV's pipeline) is recorded and raised again as soon as
the callback returns (and by any later check), and Python's "Exception ignored ... Traceback"
report of it is left out of stderr."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # subprocesses importing torch (the fast tier runs none)

SCRIPT = """
import ctypes, os, signal, time
from kdstore.runtime import interrupts
interrupts.install()

@ctypes.CFUNCTYPE(None)
def callback():
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.5)  # the handler runs here, inside the callback: its KeyboardInterrupt cannot propagate

try:
    callback()
    time.sleep(2)  # Python code after the callback (numba's compiler goes on)
    print("not raised after the callback", flush=True)
except KeyboardInterrupt:
    print("raised again after the callback", flush=True)
try:
    interrupts.check()
except KeyboardInterrupt:
    print("and at the check", flush=True)
"""


def test_a_signal_swallowed_by_a_ctypes_callback_is_raised_again_and_not_reported():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["raised again after the callback", "and at the check"], proc.stdout
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr


def test_other_unraisable_errors_are_still_reported():
    script = SCRIPT.replace("os.kill(os.getpid(), signal.SIGTERM)", "raise ValueError('boom')")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "ValueError: boom" in proc.stderr and "Exception ignored" in proc.stderr, proc.stderr
