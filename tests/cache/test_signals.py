"""A cache killed while FFCV writes, or sent SIGTERM: no writer outlives it, and a rerun or
--resume gives the store a clean cache gives."""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from kdstore.store.verification import verify

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


def test_sigterm_during_a_cache_says_what_was_kept_and_resumes(writing_folder, tmp_path):
    """`timeout`, a scheduler or `kill` sends SIGTERM: one line saying the partial cache is kept for
    --resume, a non-zero exit, and --resume finishes the store."""
    out = tmp_path / "store"
    proc = _cache_cli(out, writing_folder, "--workers", "1")
    partial = tmp_path / ".store.partial"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (partial / "train.beton").is_file():
        time.sleep(0.05)
    time.sleep(0.5)  # into the teacher's pass
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    err = err.strip()
    assert proc.returncode == 2, err
    last = err.splitlines()[-1]  # after the estimate's table: one line
    assert "Traceback" not in err and sum(line.startswith("error:") for line in err.splitlines()) == 1, err
    assert "interrupted; the partial cache is kept in" in last and "--resume" in last, err
    assert partial.is_dir() and not out.exists()
    resumed = _cache_cli(out, writing_folder, "--workers", "1", "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert verify(out) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_clean_teacher_pass_exits_cleanly(writing_folder, tmp_path, sig):
    """TERM or INT to the process group (as a terminal's Ctrl-C sends it) while the teacher scores
    the clean images (no views): one line, exit status 2, never SIGABRT from FFCV's reader thread
    left decoding as Python exits ("terminate called without an active exception")."""
    out = tmp_path / "store"
    exe = os.path.join(os.path.dirname(sys.executable), "kdstore")
    args = ["cache", "--allow-untrained", "--dataset", f"imagefolder:{writing_folder}", "--teacher", "resnet18"]
    proc = subprocess.Popen(
        [exe, *args, "--out", str(out), "--batch-size", "16", "--workers", "2", "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    chunks = tmp_path / ".store.partial" / ".kdstore-staging" / "chunks-train-r0of1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not chunks.is_dir():
        time.sleep(0.02)
    assert chunks.is_dir(), "the teacher's pass never started"
    time.sleep(0.3)
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "terminate called" not in err, (proc.returncode, err[-2000:])
    assert err.strip().splitlines()[-1].startswith("error: interrupted; the partial cache is kept in"), err
