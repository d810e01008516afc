"""Shared fixtures: tiny datasets, a trained tiny teacher and its store (built once per session)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from filelock import FileLock

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no network here: fail fast instead of retrying

from kdstore.cache import write as cache  # noqa: E402
from kdstore.cache.config import CacheConfig  # noqa: E402
from kdstore.runtime import allocator  # noqa: E402
from kdstore.train import teacher  # noqa: E402
from kdstore.train.config import TrainConfig  # noqa: E402
from kdstore.train.teacher import TeacherConfig  # noqa: E402
from tests.helpers import make_imagefolder  # noqa: E402

allocator.tune()  # the in-process runs allocate as the `kdstore` commands do (runtime/allocator.py)

# A test that needs one of these trains a teacher on the digits data first (about 30 s on 2 cores,
# once per session): it belongs to the slow tier whatever it does itself.
SLOW_FIXTURES = {"digits_teacher", "digits_store", "digits_views_store"}


# The files whose tests take longest (`--durations`, make test on 2 cores): run first, so that
# under `--dist loadfile` no worker is left alone with one of them at the end of the session
LONGEST_FIRST = (
    "tests/train/test_concurrent.py",
    "tests/train/test_distributed.py",
    "tests/e2e/test_any_loop.py",
    "tests/store/test_bounded_memory.py",
    "tests/train/test_stacked.py",
    "tests/store/test_mixed_views.py",
    "tests/store/test_sampled_views.py",
    "tests/train/test_teacher.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    root = Path(str(config.rootpath))
    items.sort(key=lambda item: rank.get(Path(str(item.path)).relative_to(root).as_posix(), len(rank)))


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory) -> Path:
    """A cifar_resnet8 teacher trained for 4 epochs on digits; returns its run directory. Trained
    once for all of a session's pytest-xdist workers (the first to ask trains it under a file lock,
    the others wait and read it): tests only read it."""
    base = tmp_path_factory.getbasetemp()
    out = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "digits-teacher"
    with FileLock(f"{out}.lock"):
        if not (out / "summary.json").is_file():
            teacher.run(
                TeacherConfig(
                    model="cifar_resnet8",
                    dataset="digits",
                    training=TrainConfig(out=str(out), epochs=4, batch_size=64, lr=0.1, progress=False, overwrite=True),
                )
            )
    return out


def _cache_digits(out: Path, teacher_dir: Path, **options) -> Path:
    cache.run(
        CacheConfig(
            dataset="digits",
            out=str(out),
            checkpoint=str(teacher_dir / "checkpoint.pt"),
            batch_size=200,
            progress=False,
            **options,
        )
    )
    return out


@pytest.fixture(scope="session")
def digits_store(tmp_path_factory, digits_teacher) -> Path:
    return _cache_digits(tmp_path_factory.mktemp("stores") / "digits", digits_teacher)


@pytest.fixture(scope="session")
def digits_views_store(tmp_path_factory, digits_teacher) -> Path:
    """The digits teacher's store with 2 augmented views of every training image."""
    return _cache_digits(tmp_path_factory.mktemp("views") / "digits", digits_teacher, views=2)


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
    teacher.run(
        TeacherConfig(
            model="cifar_resnet8",
            dataset=spec,
            training=TrainConfig(
                out=str(root / "teacher"), epochs=6, batch_size=10, lr=0.05, workers=1, progress=False
            ),
        )
    )
    cache.run(
        CacheConfig(
            dataset=spec,
            checkpoint=str(root / "teacher" / "checkpoint.pt"),
            out=str(root / "store"),
            batch_size=8,
            progress=False,
        )
    )
    return root / "store"


@pytest.fixture(scope="session")
def shuffled_ids_store(tmp_path_factory, small_store, synthetic_folder) -> Path:
    """small_store's images and teacher, but sample ids that are not .beton positions: the training
    split's ids are 100 + 7 * a permutation, so a sample id used as a position (or the reverse)
    reads another sample or fails, instead of passing silently as it would with ids == positions."""
    from dataclasses import replace

    import numpy as np

    from kdstore.data.datasets import load_dataset

    def shuffled(spec, root=None, image_size=None):
        ds = load_dataset(spec, root, image_size)
        ids = 100 + 7 * np.random.default_rng(3).permutation(len(ds.train))
        ds.train = replace(ds.train, sample_ids=ids.astype(np.int64))
        return ds

    out = tmp_path_factory.mktemp("shuffled") / "store"
    checkpoint = small_store.parent / "teacher" / "checkpoint.pt"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cache, "load_dataset", shuffled)
        cfg = CacheConfig(
            dataset=f"imagefolder:{synthetic_folder}",
            checkpoint=str(checkpoint),
            out=str(out),
            batch_size=8,
            progress=False,
        )
        cache.run(cfg)
    return out


@pytest.fixture(params=["small_store", "shuffled_ids_store"])
def ordering_store(request) -> Path:
    """small_store, and the same with sample ids that are not positions (shuffled_ids_store)."""
    return request.getfixturevalue(request.param)
