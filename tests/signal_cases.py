"""A `cache` interrupted at one of its phases, measured from outside (shared by
tests/cache/test_signal_phases.py and the whole matrix, tests/signal_matrix.py).

The cache runs as a user runs it (the installed `kdstore`, its own session as a terminal gives
it) with KDSTORE_TRACE_PHASES set, so that it says on stderr when each phase starts; the signal
goes to the process alone or to its whole process group (a terminal's Ctrl-C) a moment into the
phase. The publish phase is too short to hit from outside (tens of milliseconds): the cache is
held at its start (KDSTORE_HOLD_AT_PHASE) until the signal comes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

PHASES = ("estimate", "betons", "teacher", "views", "publish")
DELAY_S = {"estimate": 0.6, "betons": 0.1, "teacher": 0.3, "views": 0.5, "publish": 0.0}
KDSTORE = Path(sys.executable).parent / "kdstore"


def cache_args(out: Path, *extra: str) -> list[str]:
    return [
        str(KDSTORE),
        "cache",
        "--dataset",
        "digits",
        "--allow-untrained",
        "--teacher",
        "cifar_resnet8",
        "--views",
        "4",
        "--workers",
        "2",
        "--no-progress",
        "--out",
        str(out),
        *extra,
    ]


@dataclass
class Outcome:
    phase: str
    signal: str
    target: str  # "process" or "group"
    returncode: int
    seconds: float  # from the signal to the exit
    stderr: str
    left: list[str]  # processes of the cache still alive after it exited

    @property
    def lines(self) -> list[str]:
        """stderr without the phase markers and the estimate's table."""
        table = set("┃│┏┗┡└━─╇╍")
        return [
            line
            for line in self.stderr.splitlines()
            if line.strip() and not line.startswith("phase ") and not table & set(line[:2])
        ]


def interrupt(out: Path, phase: str, sig: signal.Signals, group: bool, *extra: str) -> Outcome:
    """Start a cache into `out`, send `sig` a moment into `phase`, and measure how it ends."""
    env = {**os.environ, "KDSTORE_TRACE_PHASES": "1", "COLUMNS": "200"}
    if phase == "publish":
        env["KDSTORE_HOLD_AT_PHASE"] = "publish"
    proc = subprocess.Popen(
        cache_args(out, *extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if line.strip() == f"phase {phase}":
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not started.wait(timeout=180):
        proc.kill()
        raise AssertionError(f"the cache never reached phase {phase}: {''.join(lines)[-2000:]}")
    time.sleep(DELAY_S[phase])
    family = psutil.Process(proc.pid).children(recursive=True)
    t0 = time.monotonic()
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    try:
        returncode = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        returncode = proc.wait()
    seconds = time.monotonic() - t0
    reader.join(timeout=10)
    _, alive = psutil.wait_procs(family, timeout=1)
    left = [f"{p.pid} {' '.join(p.cmdline())}" for p in alive if p.is_running() and p.status() != "zombie"]
    left += [
        f"{p.pid} {' '.join(p.info['cmdline'] or [])}"
        for p in psutil.process_iter(["cmdline"])
        if str(out) in " ".join(p.info["cmdline"] or []) and p.pid not in {q.pid for q in alive}
    ]
    return Outcome(phase, sig.name, "group" if group else "process", returncode, seconds, "".join(lines), left)


def resume(out: Path, *extra: str) -> subprocess.CompletedProcess:
    """The interrupted cache continued with --resume."""
    return subprocess.run(cache_args(out, "--resume", *extra), capture_output=True, text=True, timeout=300)
