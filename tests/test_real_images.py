"""Real CIFAR-10 images (../shared/data/cifar10-jpeg.tar.gz) read as an imagefolder: teacher,
cache and a curriculum student on a small subset."""
import tarfile
from pathlib import Path

import numpy as np
import pytest

from kdstore import cache, teacher, train
from kdstore.cache import CacheConfig
from kdstore.store import Store
from kdstore.train import TrainConfig

from .conftest import SHARED_CIFAR

pytestmark = pytest.mark.skipif(not SHARED_CIFAR.is_file(), reason=f"real CIFAR-10 JPEGs not found at {SHARED_CIFAR}")


def extract_subset(dest: Path, train_per_class: int, test_per_class: int) -> Path:
    """Unpack the first N images of every class of each split (streamed; never the whole archive)."""
    want = {"train": train_per_class, "test": test_per_class}
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(SHARED_CIFAR, "r:gz") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 3 or parts[-3] not in want:
                continue
            key = (parts[-3], parts[-2])
            if taken.get(key, 0) >= want[parts[-3]]:
                continue
            taken[key] = taken.get(key, 0) + 1
            target = dest / parts[-3] / parts[-2] / parts[-1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
    return dest


def test_cifar10_jpeg_cache_and_train(tmp_path):
    root = extract_subset(tmp_path / "cifar10", train_per_class=40, test_per_class=10)
    spec = f"imagefolder:{root}"
    t = teacher.run(TrainConfig(out=str(tmp_path / "teacher"), student="cifar_resnet8", variant="unguided", epochs=1, batch_size=50, progress=False), spec)
    assert t["kind"] == "teacher"
    cache.run(CacheConfig(dataset=spec, out=str(tmp_path / "store"), checkpoint=str(tmp_path / "teacher" / "checkpoint.pt"), progress=False))
    store = Store.open(tmp_path / "store")
    assert store.attrs["class_names"] == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert len(store.train) == 400 and len(store.val) == 100 and store.attrs["image_size"] == 32
    seen = []
    summary = train.run(TrainConfig(out=str(tmp_path / "run"), store=str(tmp_path / "store"), variant="kd-cl-sr", epochs=1, batch_size=64, progress=False),
                        hook=lambda e, b, ids, lam: seen.append(ids))
    np.testing.assert_array_equal(np.concatenate(seen), store.train.curriculum)
    assert 0.0 <= summary["final_val_acc"] <= 1.0
