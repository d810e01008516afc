"""Shared fixtures: tiny datasets, a trained tiny teacher and its store (built once per session)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no network here: fail fast instead of retrying

from kdstore import cache, teacher  # noqa: E402
from kdstore.cache import CacheConfig  # noqa: E402
from kdstore.teacher import TeacherConfig  # noqa: E402
from kdstore.train import TrainConfig  # noqa: E402

def reseal(store: Path) -> None:
    """Record teacher.h5's new sha256 in the manifest: a store whose files agree with its manifest
    but whose content is wrong (as a faulty writer would make), for the checks behind the sha256."""
    import json

    from kdstore.models import sha256_file

    manifest = json.loads((store / "MANIFEST.json").read_text())
    manifest["sha256"]["teacher.h5"] = sha256_file(store / "teacher.h5")
    (store / "MANIFEST.json").write_text(json.dumps(manifest))


SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def make_imagefolder(root: Path, classes: int = 3, train_per_class: int = 10, val_per_class: int = 4, size: int = 16, val_dir: str = "test") -> Path:
    """A learnable synthetic ImageFolder: class k is a bright square at a class-specific place."""
    rng = np.random.default_rng(0)
    for split, per_class in (("train", train_per_class), (val_dir, val_per_class)):
        for k in range(classes):
            d = root / split / f"class{k}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
                o = (k * size) // (classes + 1)
                img[o:o + size // 3, o:o + size // 3] = 255
                Image.fromarray(img).save(d / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory) -> Path:
    """A cifar_resnet8 teacher trained for 4 epochs on digits; returns its run directory."""
    out = tmp_path_factory.mktemp("teacher")
    teacher.run(TeacherConfig("cifar_resnet8", "digits", training=TrainConfig(out=str(out), epochs=4, batch_size=64, lr=0.1, progress=False)))
    return out


@pytest.fixture(scope="session")
def digits_store(tmp_path_factory, digits_teacher) -> Path:
    out = tmp_path_factory.mktemp("stores") / "digits"
    cache.run(CacheConfig(dataset="digits", out=str(out), checkpoint=str(digits_teacher / "checkpoint.pt"), batch_size=200, progress=False))
    return out


@pytest.fixture(scope="session")
def synthetic_folder(tmp_path_factory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="session")
def small_store(tmp_path_factory, synthetic_folder) -> Path:
    """30 + 12 synthetic 16-px images scored by a cifar_resnet8 trained on them for a few epochs:
    for tests of what the loop visits, where speed matters and the teacher need only be better
    than chance (so that confidences, the curriculum and SR's lambda vary)."""
    root = tmp_path_factory.mktemp("small")
    spec = f"imagefolder:{synthetic_folder}"
    teacher.run(TeacherConfig("cifar_resnet8", spec, training=TrainConfig(out=str(root / "teacher"), epochs=6, batch_size=10, lr=0.05, workers=1,
                                                                          progress=False)))
    cache.run(CacheConfig(dataset=spec, checkpoint=str(root / "teacher" / "checkpoint.pt"), out=str(root / "store"), batch_size=8, progress=False))
    return root / "store"
