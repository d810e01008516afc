"""A store replaced by `cache --overwrite` while runs read it: each run keeps reading the files it
opened, so its metrics are those of an undisturbed run, whichever loader streams its images."""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest

from kdstore.train import loop as train
from kdstore.train.config import TrainConfig

pytestmark = pytest.mark.slow  # caches and trains in several processes

KEYS = ("train_loss", "train_ce", "train_kd", "train_acc", "val_acc", "val_loss", "lam_mean", "agree_val", "kl_val")
KDSTORE = os.path.join(os.path.dirname(sys.executable), "kdstore")


def _metrics(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: r.get(k) for k in KEYS} for r in rows]


def _cache_args(folder, out, *teacher):
    return [
        KDSTORE,
        "cache",
        "--dataset",
        f"imagefolder:{folder}",
        "--out",
        str(out),
        "--batch-size",
        "8",
        "--workers",
        "1",
        "--no-progress",
        "--overwrite",
        *teacher,
    ]


@pytest.mark.parametrize("loader", ["ffcv", "device"])
def test_a_store_replaced_mid_run_does_not_change_the_run(loader, small_store, synthetic_folder, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(small_store, store)
    base = TrainConfig(
        out="",
        store=str(store),
        variant="kd-cl-sr",
        epochs=2,
        batch_size=8,
        workers=1,
        loader=loader,
        progress=False,
        tensorboard=False,
    )
    train.run(replace(base, out=str(tmp_path / "calm")))
    replaced = []

    def replace_the_store(epoch, b, ids, lam):
        if epoch == 0 and b == 1 and not replaced:  # another teacher (random weights): other logits, orders
            proc = subprocess.run(
                _cache_args(synthetic_folder, store, "--teacher", "cifar_resnet8", "--allow-untrained"),
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert proc.returncode == 0, proc.stderr
            replaced.append(True)

    train.run(replace(base, out=str(tmp_path / "disturbed")), hook=replace_the_store)
    assert replaced
    assert _metrics(tmp_path / "disturbed") == _metrics(tmp_path / "calm")
