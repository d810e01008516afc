"""Bounded memory: mapped teacher rows give the same training as an in-memory table, the cache
streams its chunks into teacher.h5, and block-wise reads agree with whole ones."""

import json

import h5py
import numpy as np
import pytest
import torch

from kdstore.cache import write as cache
from kdstore.cache.config import CacheConfig
from kdstore.errors import KdstoreError
from kdstore.runtime.blocks import Blocks, release_pages, row_blocks
from kdstore.store.file_rows import file_rows
from kdstore.store.format import Store, mean_blocks, write_teacher_h5
from kdstore.store.rows import Rows
from kdstore.train import loop as train
from kdstore.train.config import TrainConfig
from tests.helpers import reseal

pytestmark = pytest.mark.slow  # caches, trains or kills processes: the full suite only


def test_row_blocks_cover_the_array_in_order():
    a = np.zeros((10, 3), dtype=np.float16)  # 6 bytes a row
    assert list(row_blocks(a, block_bytes=24)) == [(0, 4), (4, 8), (8, 10)]
    assert list(row_blocks(a, block_bytes=1)) == [(i, i + 1) for i in range(10)]  # at least one row a block


def test_mean_blocks_by_hand():
    a = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=np.float16)
    b = np.array([[3.0, 0.0], [1.0, 0.0], [5.0, 2.0]], dtype=np.float16)
    m = mean_blocks([a, b])
    assert m.shape == (3, 2) and m.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(m), [[2.0, 1.0], [2.0, 2.0], [5.0, 4.0]])


def test_file_rows_equal_the_table(digits_store, views_topk_store):
    store = Store.open(digits_store)
    logits = store.train.logits
    assert not logits.flags.writeable and logits.dtype == np.float16  # a read-only map in the stored dtype
    mapped = Rows(logits, torch.device("cpu"), "mapped")
    table = Rows(logits, torch.device("cpu"), "device")
    assert mapped.file is not None and table.table is not None and table.table.dtype == torch.float16
    rng = np.random.default_rng(0)
    for _ in range(5):
        pos = rng.choice(len(logits), 64, replace=False)
        got = mapped(pos)
        assert torch.equal(got, table(pos)) and torch.equal(got, torch.from_numpy(np.array(logits[pos])))
    assert file_rows(np.array(logits)) is None and file_rows(logits[:3]) is None  # only the opened array itself
    release_pages(logits)  # verify and merge drop their pages this way: the values are still there afterwards
    assert torch.equal(mapped(np.arange(3)), torch.from_numpy(np.array(logits[:3])))
    v = Store.open(views_topk_store).train.views  # (N, K, ...) arrays, read by (position, view)
    pos, view = rng.integers(0, 30, 20), rng.integers(0, 2, 20)
    for array in (v.params, v.topk_values, v.topk_indices, v.fill):
        assert torch.equal(
            Rows(array, torch.device("cpu"), "mapped")(pos, view), torch.from_numpy(np.array(array[pos, view]))
        )


@pytest.fixture(scope="module")
def views_topk_store(synthetic_folder, tmp_path_factory):
    store = tmp_path_factory.mktemp("vt") / "store"
    cache.run(
        CacheConfig(
            allow_untrained=True,
            dataset=f"imagefolder:{synthetic_folder}",
            teacher="cifar_resnet8",
            out=str(store),
            batch_size=8,
            views=2,
            topk=2,
            progress=False,
        )
    )
    return store


@pytest.mark.parametrize("store_name", ["digits", "views-topk"])
def test_mapped_and_device_rows_train_bit_identically(store_name, digits_store, views_topk_store, tmp_path):
    store, variant = (digits_store, "kd-cl-sr") if store_name == "digits" else (views_topk_store, "kd")
    rows = {}
    for placement in ("mapped", "device"):
        cfg = TrainConfig(
            out=str(tmp_path / placement),
            store=str(store),
            variant=variant,
            epochs=1 if store_name == "digits" else 2,
            batch_size=128 if store_name == "digits" else 8,
            teacher_rows=placement,
            progress=False,
        )
        train.run(cfg)
        rows[placement] = [json.loads(x) for x in (tmp_path / placement / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(rows["mapped"], rows["device"]):
        for key in ("train_loss", "train_ce", "train_kd", "train_acc", "val_acc", "val_loss", "lam_mean"):
            assert a[key] == b[key], key


def test_cache_chunking_does_not_change_the_store(synthetic_folder, tmp_path, monkeypatch):
    """Chunks of one batch and one chunk for everything give the same teacher.h5 datasets."""
    made = {}
    for chunk in (8, 10**6):
        monkeypatch.setattr(cache, "CHUNK_SAMPLES", chunk)
        out = tmp_path / f"c{chunk}"
        cache.run(
            CacheConfig(
                allow_untrained=True,
                dataset=f"imagefolder:{synthetic_folder}",
                teacher="cifar_resnet8",
                out=str(out),
                batch_size=8,
                views=2,
                progress=False,
            )
        )
        made[chunk] = out
    with h5py.File(made[8] / "teacher.h5") as a, h5py.File(made[10**6] / "teacher.h5") as b:
        keys = []
        a.visit(lambda k: keys.append(k) if isinstance(a[k], h5py.Dataset) else None)
        assert "train/views/logits" in keys and "val/logits" in keys
        for k in keys:
            np.testing.assert_array_equal(a[k][()], b[k][()], err_msg=k)
    assert not list(made[8].glob("chunks-*")) and not (made[8] / "cache-state.json").exists()


def test_blocks_are_written_block_by_block(tmp_path, digits_store):
    """write_teacher_h5 takes a Blocks source and never asks for more than one block at a time."""
    s = Store.open(digits_store)
    mapped, handed = s.train.logits, []

    def read():
        for lo, hi in row_blocks(mapped, block_bytes=2000):
            handed.append(hi - lo)
            yield np.array(mapped[lo:hi])

    s.train.logits = Blocks(mapped.shape, mapped.dtype, read)
    write_teacher_h5(tmp_path / "t.h5", {"train": s.train, "val": s.val}, s.attrs)
    with h5py.File(tmp_path / "t.h5") as f:
        np.testing.assert_array_equal(f["train/logits"][()], Store.open(digits_store).train.logits)
    assert len(handed) > 10 and sum(handed) == len(s.train)


def test_an_old_schema_is_refused_in_one_line(tmp_path, digits_store):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(digits_store, old)
    with h5py.File(old / "teacher.h5", "a") as f:
        f.attrs["schema_version"] = 1
    reseal(old)
    with pytest.raises(KdstoreError, match="has schema version 1, this kdstore reads 2 and 3: cache it again"):
        Store.open(old)
