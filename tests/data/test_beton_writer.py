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
beton.write_beton(split, sys.argv[1], workers=2, image_bytes=beton.PAGE_SIZE)  # counted a page each: 2 writers
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


def test_writers_are_one_per_sixteen_data_pages_so_a_files_size_is_known():
    """CIFAR's 3,072-byte images: 682 to a 2 MiB page. 1,437 digits fill 3 pages: one writer (the
    size exact); 50,000 fill 74: 4 writers of the 8 asked for, so at most 3 pages (4%) unknown."""
    assert beton.writer_workers(1437, 3072, 2) == 1
    assert beton.writer_workers(50_000, 3072, 8) == 4
    assert beton.writer_workers(50_000, 3072, 2) == 2
    assert beton.writer_workers(150, 3 * beton.PAGE_SIZE, 8) == 2  # no more than its chunks of 100
    one, four = (beton.beton_bytes(50_000, 3072, w) for w in (1, 8))
    assert four - one == 3 * beton.PAGE_SIZE and (four - one) / one < 0.05
