"""Real CIFAR-10 images (../shared/data/cifar10-jpeg.tar.gz) read as an imagefolder: teacher,
cache and a curriculum student on a small subset."""

import json

import numpy as np
import pytest

from kdstore.cache import write as cache
from kdstore.cache.config import CacheConfig
from kdstore.data.datasets import unpack_imagefolder_subset
from kdstore.store.format import Store
from kdstore.train import loop as train
from kdstore.train import teacher
from kdstore.train.config import TrainConfig
from kdstore.train.teacher import TeacherConfig
from tests.helpers import SHARED_CIFAR

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SHARED_CIFAR.is_file(), reason=f"real CIFAR-10 JPEGs not found at {SHARED_CIFAR}"),
]


def test_cifar10_jpeg_cache_and_train(tmp_path):
    root = unpack_imagefolder_subset(SHARED_CIFAR, tmp_path / "cifar10", {"train": 40, "test": 10})
    spec = f"imagefolder:{root}"
    t = teacher.run(
        TeacherConfig(
            model="cifar_resnet8",
            dataset=spec,
            training=TrainConfig(out=str(tmp_path / "teacher"), epochs=1, batch_size=50, progress=False),
        )
    )
    assert t["kind"] == "teacher"
    cache.run(
        CacheConfig(
            dataset=spec,
            out=str(tmp_path / "store"),
            checkpoint=str(tmp_path / "teacher" / "checkpoint.pt"),
            progress=False,
        )
    )
    store = Store.open(tmp_path / "store")
    assert store.attrs["class_names"] == [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    assert len(store.train) == 400 and len(store.val) == 100 and store.attrs["image_size"] == 32
    seen = []
    summary = train.run(
        TrainConfig(
            out=str(tmp_path / "run"),
            store=str(tmp_path / "store"),
            variant="kd-cl-sr",
            epochs=1,
            batch_size=64,
            progress=False,
        ),
        hook=lambda e, b, ids, lam: seen.append(ids),
    )
    np.testing.assert_array_equal(np.concatenate(seen), store.train.curriculum)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["final_val_acc"] == metrics[-1]["val_acc"] and metrics[-1]["train_kd"] > 0  # the KD term was live
    assert (
        np.isfinite([metrics[-1][k] for k in ("train_loss", "train_ce", "val_loss")]).all()
        and metrics[-1]["lam_max"] > 0
    )
