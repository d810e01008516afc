"""A full disk during `train`: every file a run writes (checkpoint, metrics.jsonl, the event files,
orders, summary.json) fails in one line naming the file and the full disk, and the previous
complete checkpoint stays in place."""

import os
import shutil
import subprocess
import sys

import pytest

from kdstore.errors import KdstoreError
from kdstore.models.checkpoints import load_checkpoint
from kdstore.train import loop as train
from kdstore.train.config import TrainConfig

pytestmark = [pytest.mark.slow, pytest.mark.heavy]  # mounts a small tmpfs and trains


@pytest.fixture()
def small_disk(tmp_path):
    disk = tmp_path / "small"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("this machine does not let the tests mount a small tmpfs")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _fill(disk, leave: int) -> None:
    """Fill the disk with a real (not sparse) file, leaving about `leave` bytes free."""
    free = shutil.disk_usage(disk).free - leave
    with open(disk / f"filler-{len(os.listdir(disk))}", "wb") as f:
        while free > 0:
            block = min(free, 1 << 16)
            f.write(b"\0" * block)
            free -= block


def test_train_onto_a_full_disk_is_one_line_naming_the_file(small_store, small_disk):
    _fill(small_disk, 40_000)  # config.json and metrics.jsonl fit; the checkpoint does not
    exe = os.path.join(os.path.dirname(sys.executable), "kdstore")
    proc = subprocess.run(
        [
            exe,
            "train",
            "--store",
            str(small_store),
            "--out",
            str(small_disk / "run"),
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--workers",
            "1",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    err = proc.stderr.strip()
    assert proc.returncode == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "could not be written (the disk is full" in err and "MiB free there" in err, err
    assert "checkpoint.pt" in err or "tfevents" in err or "metrics.jsonl" in err, err


def test_a_full_disk_in_a_later_epoch_keeps_the_previous_checkpoint(small_store, small_disk):
    cfg = TrainConfig(
        out=str(small_disk / "run"),
        store=str(small_store),
        epochs=3,
        batch_size=8,
        workers=1,
        progress=False,
        tensorboard=False,
    )

    def fill_in_epoch_2(epoch, b, ids, lam):
        if epoch == 1 and b == 0:
            _fill(small_disk, 4_000)

    with pytest.raises(KdstoreError, match=r"could not be written \(the disk is full") as e:
        train.run(cfg, hook=fill_in_epoch_2)
    assert "\n" not in str(e.value)
    assert load_checkpoint(small_disk / "run" / "checkpoint.pt")["epoch"] == 1  # epoch 1's, whole
