"""Corrupt stores never train silently or crash; FFCV's writer never hangs; bad files are named.

Each corruption is made from a fresh copy of the digits store and must give a one-line error
and a non-zero exit from `train` (and `inspect`), never a traceback or a crash, except damage
to the pixels of a .beton, which only `verify` (or `train --verify`) finds."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from click.testing import CliRunner

from kdstore.cache import estimate as estimate_mod
from kdstore.cache import write as cache
from kdstore.cache.config import CacheConfig
from kdstore.cli.main import cli
from kdstore.data import beton as ffcv_files
from kdstore.data.datasets import ImageSplit
from kdstore.errors import KdstoreError
from kdstore.store.verification import verify
from tests.helpers import make_imagefolder

pytestmark = pytest.mark.slow  # caches, trains or kills processes: the full suite only

KDSTORE = os.path.join(os.path.dirname(sys.executable), "kdstore")


def _run(*args, timeout=300):
    return subprocess.run([KDSTORE, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def _one_line_failure(proc, needle=""):
    """Non-zero exit (not a signal), one line on stderr naming the problem, no traceback."""
    err = proc.stderr.strip()
    assert proc.returncode > 0, (proc.returncode, err[-2000:])
    assert "Traceback" not in err and len(err.splitlines()) == 1, err[-2000:]
    assert needle in err, err
    return err


def _flip(path: Path, at: int, mask: int = 0x01) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= mask
    path.write_bytes(bytes(data))


def _beton_layout(path: Path) -> dict:
    """Byte offsets in a .beton (FFCV's format: header, field descriptors, metadata, data, table)."""
    from ffcv.reader import Reader

    r = Reader(str(path))
    meta_at = 24 + r.field_descriptors.nbytes  # the header is 24 bytes
    f0 = r.metadata.dtype.fields["f0"]  # the image field: (dtype, offset)
    return {
        "table_at": int(r.header["alloc_table_ptr"]),
        "width_at": meta_at + f0[1] + f0[0].fields["width"][1],
        "data_ptr_at": meta_at + f0[1] + f0[0].fields["data_ptr"][1],
        "data_ptr": int(r.metadata["f0"]["data_ptr"][0]),
    }


def _flip_digest(store: Path) -> None:
    m = json.loads(_manifest(store).read_text())
    d = m["sha256"]["teacher.h5"]
    m["sha256"]["teacher.h5"] = ("1" if d[0] == "0" else "0") + d[1:]
    _manifest(store).write_text(json.dumps(m))


def _manifest(store: Path) -> Path:
    return store / "MANIFEST.json"


# name -> (what it does to a store copy, the message train must print); None: only verify finds it
CORRUPTIONS = {
    "teacher attribute string flipped": (
        lambda s: _flip(s / "teacher.h5", (s / "teacher.h5").read_bytes().find(b"cifar_resnet8") + 2),
        "teacher.h5 differs",
    ),
    "teacher last byte flipped": (
        lambda s: _flip(s / "teacher.h5", (s / "teacher.h5").stat().st_size - 1),
        "teacher.h5 differs",
    ),
    "teacher 4 KiB block zeroed": (lambda s: _zero(s / "teacher.h5", 4096, 4096), "teacher.h5 differs"),
    "manifest sha256 digit flipped": (_flip_digest, "teacher.h5 differs"),
    "manifest brace flipped": (
        lambda s: _manifest(s).write_text("[" + _manifest(s).read_text()[1:]),
        "MANIFEST.json is corrupt",
    ),
    "manifest truncated": (
        lambda s: _manifest(s).write_text(_manifest(s).read_text()[:40]),
        "MANIFEST.json is corrupt",
    ),
    "manifest zeroed": (lambda s: _manifest(s).write_bytes(b"\0" * 100), "MANIFEST.json is corrupt"),
    "manifest not utf-8": (
        lambda s: _manifest(s).write_bytes(b"\xff\xfe" + _manifest(s).read_bytes()),
        "MANIFEST.json is corrupt",
    ),
    "manifest without sha256": (
        lambda s: _manifest(s).write_text(json.dumps({"schema_version": 2})),
        "MANIFEST.json is corrupt",
    ),
    "beton truncated at its allocation table": (
        lambda s: _truncate(s / "train.beton", _beton_layout(s / "train.beton")["table_at"] + 10),
        "not a readable FFCV file",
    ),
    "beton field name flipped": (lambda s: _flip(s / "train.beton", 24 + 1 + 2), "not a readable FFCV file"),
    "beton image width flipped": (
        lambda s: _flip(s / "train.beton", _beton_layout(s / "train.beton")["width_at"], 0x02),
        "a raw image larger than its allocation",
    ),
    "beton data pointer flipped": (
        lambda s: _flip(s / "train.beton", _beton_layout(s / "train.beton")["data_ptr_at"] + 2, 0x10),
        "not a readable FFCV file",
    ),
    "beton allocation pointer flipped": (
        lambda s: _flip(s / "train.beton", _beton_layout(s / "train.beton")["table_at"] + 8 + 2, 0x10),
        "not a readable FFCV file",
    ),
    "foreign teacher.h5": (
        lambda s: shutil.copy(s.parent / "other" / "teacher.h5", s / "teacher.h5"),
        "teacher.h5 differs",
    ),
    "beton pixel flipped": (
        lambda s: _flip(s / "train.beton", _beton_layout(s / "train.beton")["data_ptr"] + 100),
        None,
    ),
    "val beton pixel flipped": (
        lambda s: _flip(s / "val.beton", _beton_layout(s / "val.beton")["data_ptr"] + 100),
        None,
    ),
    "beton 4 KiB data block zeroed": (
        lambda s: _zero(s / "train.beton", _beton_layout(s / "train.beton")["data_ptr"] + 4096, 4096),
        None,
    ),
}


def _zero(path: Path, at: int, n: int) -> None:
    data = bytearray(path.read_bytes())
    data[at : at + n] = bytes(n)
    path.write_bytes(bytes(data))


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


@pytest.fixture(scope="module")
def two_digit_stores(digits_teacher, tmp_path_factory):
    """The digits store and another store of the same dataset by another (random) teacher."""
    root = tmp_path_factory.mktemp("corrupt")
    cache.run(
        CacheConfig(
            dataset="digits",
            out=str(root / "store"),
            checkpoint=str(digits_teacher / "checkpoint.pt"),
            batch_size=400,
            progress=False,
        )
    )
    cache.run(
        CacheConfig(
            allow_untrained=True,
            dataset="digits",
            out=str(root / "other"),
            teacher="cifar_resnet8",
            batch_size=400,
            progress=False,
        )
    )
    return root


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corrupt_store_is_refused_in_one_line(name, two_digit_stores, tmp_path):
    damage, needle = CORRUPTIONS[name]
    store = tmp_path / "copy" / "store"
    shutil.copytree(two_digit_stores / "store", store)
    (tmp_path / "copy" / "other").symlink_to(two_digit_stores / "other")
    damage(store)
    if needle is None:  # pixel damage: the open checks cannot see it; verify and train --verify do
        assert any("sha256 differs" in line for line in verify(store))
        proc = _run(
            "train",
            "--store",
            store,
            "--variant",
            "kd",
            "--epochs",
            "1",
            "--batch-size",
            "512",
            "--verify",
            "--no-progress",
            "--out",
            tmp_path / "run",
        )
        _one_line_failure(proc, "sha256 differs")
        return
    proc = _run(
        "train",
        "--store",
        store,
        "--variant",
        "kd",
        "--epochs",
        "1",
        "--batch-size",
        "512",
        "--no-progress",
        "--out",
        tmp_path / "run",
    )
    _one_line_failure(proc, needle)
    assert not (tmp_path / "run" / "summary.json").exists()
    for command, code in (("inspect", 2), ("verify", 1)):  # in this process: a crash here fails the suite
        result = CliRunner().invoke(cli, [command, str(store)])
        assert result.exit_code == code, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        assert "Traceback" not in result.output


def test_corrupt_jpeg_is_named_and_nothing_is_left(tmp_path):
    folder = make_imagefolder(tmp_path / "imgs", classes=2, train_per_class=6, val_per_class=2)
    bad = folder / "train" / "class1" / "003.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))  # a PNG header, then garbage
    t0 = time.monotonic()
    proc = _run(
        "cache",
        "--allow-untrained",
        "--dataset",
        f"imagefolder:{folder}",
        "--teacher",
        "cifar_resnet8",
        "--out",
        tmp_path / "s",
        "--no-progress",
        timeout=120,
    )
    _one_line_failure(proc, f"{bad}: not a readable image")
    assert time.monotonic() - t0 < 120
    assert not (tmp_path / "s").exists() and not (tmp_path / ".s.partial").exists()


def test_unreadable_first_image_is_named(tmp_path):
    folder = make_imagefolder(tmp_path / "imgs", classes=2, train_per_class=3, val_per_class=2)
    first = folder / "train" / "class0" / "000.png"
    first.write_bytes(b"not an image")
    proc = _run(
        "cache",
        "--allow-untrained",
        "--dataset",
        f"imagefolder:{folder}",
        "--teacher",
        "cifar_resnet8",
        "--out",
        tmp_path / "s",
        "--no-progress",
        timeout=120,
    )
    _one_line_failure(proc, f"{first}: not a readable image")


def test_a_killed_writer_worker_fails_in_bounded_time(tmp_path, monkeypatch):
    """FFCV's writer would wait forever for a dead worker; write_beton stops it and says so."""
    monkeypatch.setattr(ffcv_files, "WRITER_STALL_S", 3.0)
    images = np.zeros((400, 8, 8, 3), dtype=np.uint8)

    def slow(i):
        time.sleep(0.01)
        return images[i]

    split = ImageSplit(get=slow, labels=np.zeros(400, dtype=np.int64), sample_ids=np.arange(400, dtype=np.int64))
    killed = []

    def kill_a_worker():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not killed:
            for writer in psutil.Process().children():
                workers = [
                    w for w in writer.children() if "resource_tracker" not in " ".join(w.cmdline())
                ]  # FFCV's forked workers
                if workers:
                    time.sleep(0.3)  # let it start on its chunk
                    os.kill(workers[0].pid, signal.SIGKILL)
                    killed.append(workers[0].pid)
                    return
            time.sleep(0.05)

    threading.Thread(target=kill_a_worker, daemon=True).start()
    t0 = time.monotonic()
    with pytest.raises(KdstoreError, match="lost a worker process"):
        ffcv_files.write_beton(split, tmp_path / "x.beton", workers=2)
    assert killed and time.monotonic() - t0 < 60
    assert not (tmp_path / "x.beton").exists()
    assert not [
        c for c in psutil.Process().children(recursive=True) if c.is_running() and c.status() != psutil.STATUS_ZOMBIE
    ]


def test_train_verify_option_and_one_store_file_held(two_digit_stores, tmp_path):
    """--verify hashes every file first; a clean store trains with it."""
    proc = _run(
        "train",
        "--store",
        two_digit_stores / "store",
        "--variant",
        "kd",
        "--epochs",
        "1",
        "--batch-size",
        "512",
        "--verify",
        "--no-progress",
        "--out",
        tmp_path / "run",
    )
    assert proc.returncode == 0, proc.stderr


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    """A cache onto a 3 MB filesystem: FFCV's writer dies of it, the error names the full disk.
    (The cache's estimate refuses such a cache before it writes, tests/cache/test_estimate.py;
    here it is told the disk is large, so that the writer meets the full disk itself.)"""
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("this machine does not let the tests mount a small tmpfs")
    try:
        monkeypatch.setattr(ffcv_files, "WRITER_STALL_S", 3.0)
        monkeypatch.setattr(estimate_mod, "free_mib", lambda path: 1e6)
        with pytest.raises(KdstoreError, match="disk holding .* MiB free"):
            cache.run(
                CacheConfig(
                    allow_untrained=True,
                    dataset="digits",
                    teacher="cifar_resnet8",
                    out=str(small / "s"),
                    progress=False,
                )
            )
        assert os.listdir(small) == []
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


def test_a_killed_checkpoint_write_leaves_nothing_behind(tmp_path):
    from kdstore.models.checkpoints import load_checkpoint, save_checkpoint

    stale = tmp_path / ".checkpoint.pt.tmp-4242"  # what a save killed mid-write leaves
    stale.write_bytes(b"half a checkpoint")
    save_checkpoint(tmp_path / "checkpoint.pt", {"state_dict": {}, "epoch": 1})
    assert not stale.exists() and load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
