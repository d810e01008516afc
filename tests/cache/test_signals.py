"""A cache killed (SIGKILL) while FFCV writes: no writer outlives it, and a rerun gives the store a
clean cache gives. SIGINT and SIGTERM at every phase: test_signal_phases.py."""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.heavy]  # caches in child processes and kills them


def _cache_cli(out, folder, *extra):
    exe = os.path.join(os.path.dirname(sys.executable), "kdstore")
    args = [
        exe,
        "cache",
        "--allow-untrained",
        "--dataset",
        f"imagefolder:{folder}",
        "--teacher",
        "cifar_resnet8",
        "--out",
        str(out),
        "--batch-size",
        "8",
        "--no-progress",
        *extra,
    ]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def writing_folder(tmp_path_factory):
    """An imagefolder whose .beton takes a few seconds to write (so a kill lands inside the write)."""
    from tests.helpers import make_imagefolder

    return make_imagefolder(tmp_path_factory.mktemp("big"), classes=4, train_per_class=250, val_per_class=5, size=40)


def test_a_cache_killed_while_writing_leaves_no_writer_and_a_rerun_is_byte_identical(writing_folder, tmp_path):
    """SIGKILL `cache` while FFCV writes train.beton; rerun at once with --workers 1: the bytes equal
    a clean --workers 1 cache's, and no writer or worker of the killed run is left."""
    clean = _cache_cli(tmp_path / "clean", writing_folder, "--workers", "1")
    assert clean.wait(timeout=300) == 0, clean.stderr.read()
    out = tmp_path / "store"
    killed = _cache_cli(out, writing_folder, "--workers", "2")
    tmp = tmp_path / ".store.partial" / ".train.beton.tmp"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (tmp.is_file() and tmp.stat().st_size > 0):
        time.sleep(0.02)
    assert tmp.is_file(), "the cache never started writing train.beton"
    family = psutil.Process(killed.pid).children(recursive=True)
    assert family, "the writer had already finished: nothing to kill"
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    _, alive = psutil.wait_procs(family, timeout=5)
    assert alive == [], [p.cmdline() for p in alive]
    rerun = _cache_cli(out, writing_folder, "--workers", "1", "--overwrite")
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read()
    for name in ("train.beton", "val.beton", "teacher.h5"):
        assert (out / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name
