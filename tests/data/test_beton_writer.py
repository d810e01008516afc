"""FFCV's writer, watched: a stalled writer is stopped even while its workers live, and the writer
and its workers die with the process that started them."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from kdstore.data import beton
from kdstore.data.datasets import ImageSplit
from kdstore.errors import KdstoreError

pytestmark = pytest.mark.slow  # forks FFCV's writer and waits for it


def _live_children() -> list[psutil.Process]:
    return [
        c for c in psutil.Process().children(recursive=True) if c.is_running() and c.status() != psutil.STATUS_ZOMBIE
    ]


def test_a_stalled_writer_with_live_workers_is_stopped(tmp_path, monkeypatch):
    """A worker that blocks on one image (a hung network read, a deadlock) while every worker
    lives: the writer is stopped after WRITER_HANG_S without an image, with a one-line error."""
    monkeypatch.setattr(beton, "WRITER_HANG_S", 2.0)
    images = np.zeros((64, 8, 8, 3), dtype=np.uint8)

    def get(i: int) -> np.ndarray:
        if i == 20:
            time.sleep(3600)  # stalls; the worker stays alive
        return images[i]

    split = ImageSplit(get=get, labels=np.zeros(64, dtype=np.int64), sample_ids=np.arange(64, dtype=np.int64))
    t0 = time.monotonic()
    with pytest.raises(KdstoreError, match=r"FFCV's writer stalled \(\d+ s without an image, its workers alive\)"):
        beton.write_beton(split, tmp_path / "x.beton", workers=2)
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "x.beton").exists()
    assert _live_children() == []


WRITER = """
import sys, time
import numpy as np
from kdstore.data import beton
from kdstore.data.datasets import ImageSplit
images = np.zeros((200, 8, 8, 3), dtype=np.uint8)
def get(i):
    time.sleep(0.05)
    return images[i]
split = ImageSplit(get=get, labels=np.zeros(200, dtype=np.int64), sample_ids=np.arange(200, dtype=np.int64))
beton.write_beton(split, sys.argv[1], workers=2)
"""


@pytest.mark.heavy
def test_the_writer_and_its_workers_die_with_a_killed_parent(tmp_path):
    """SIGKILL the process writing a .beton: within a moment no writer or worker of it is left."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "x.beton")])
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 60
    family: list[psutil.Process] = []
    while time.monotonic() < deadline and len(family) < 3:  # the writer and its two workers
        family = [c for c in parent.children(recursive=True) if "resource_tracker" not in " ".join(c.cmdline())]
        time.sleep(0.05)
    assert len(family) >= 3, "the writer never started its workers"
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(family, timeout=5)
    assert alive == [], [p.cmdline() for p in alive]
