"""A store with int8 logits (`cache --logits-dtype int8`): what it stores and costs, that train
reads it as the float16 store of the same values, and what verify and merge do with it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from kdstore import StoreLoader
from kdstore.errors import KdstoreError
from kdstore.store import merge
from kdstore.store.format import BETONS, H5_NAME, Store, write_manifest, write_teacher_h5
from kdstore.store.merge import MergeConfig
from kdstore.store.publish import link_or_copy
from kdstore.store.quantized import Quantized, stored_dtype
from kdstore.store.verification import verify
from kdstore.train import loop as train
from kdstore.train.config import TrainConfig

pytestmark = pytest.mark.slow


def _exact(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Rows o + q / 8 with q in -128..127, both ends in every row: float16 holds them exactly,
    and so do int8 codes (scale 1/8, offset o)."""
    q = rng.integers(-128, 128, shape)
    q[..., 0], q[..., 1] = -128, 127
    q = rng.permuted(q, axis=-1)
    return (rng.integers(-4, 5, shape[:-1])[..., None] + q / 8).astype(np.float32)


def _rewritten(src: Path, out: Path, dtype: str, logits: dict[str, np.ndarray]) -> Path:
    """`src` with the given logits (train, val, views) written as `dtype`; .beton files linked."""
    store = Store.open(src)
    out.mkdir()
    for name in BETONS.values():
        link_or_copy(src / name, out / name)
    views = dataclasses.replace(store.train.views, logits=logits["views"])
    splits = {
        "train": dataclasses.replace(store.train, logits=logits["train"], views=views),
        "val": dataclasses.replace(store.val, logits=logits["val"]),
    }
    write_teacher_h5(out / H5_NAME, splits, dict(store.attrs), dtype)
    write_manifest(out, {"dataset_fingerprint": store.attrs["dataset_fingerprint"]})
    return out


@pytest.fixture(scope="module")
def exact_stores(digits_views_store, tmp_path_factory) -> dict[str, Path]:
    s = Store.open(digits_views_store)
    rng = np.random.default_rng(0)
    logits = {
        "train": _exact(s.train.logits.shape, rng),
        "val": _exact(s.val.logits.shape, rng),
        "views": _exact(s.train.views.logits.shape, rng),
    }
    root = tmp_path_factory.mktemp("int8")
    return {d: _rewritten(digits_views_store, root / d, d, logits) for d in ("float16", "int8")}


def test_int8_and_float16_stores_of_the_same_values_train_bit_identically(exact_stores, tmp_path):
    rows = {}
    for dtype in ("float16", "int8"):
        store = exact_stores[dtype]
        opened = Store.open(store, full=True)
        assert stored_dtype(opened.train.logits) == stored_dtype(opened.train.views.logits) == dtype
        out = tmp_path / dtype
        cfg = TrainConfig(out=str(out), store=str(store), variant="kd-cl-sr", epochs=1, progress=False)
        train.run(cfg)
        rows[dtype] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(rows["float16"], rows["int8"], strict=True):
        assert (a["train_loss"], a["val_acc"], a["val_loss"]) == (b["train_loss"], b["val_acc"], b["val_loss"])
    # int8 rows read from the file (mapped) and from a table in memory (device placement on the CPU)
    loaders = [
        StoreLoader(exact_stores["int8"], variant="kd-cl-sr", view_mode="replay", workers=1, teacher_rows=placement)
        for placement in ("mapped", "device")
    ]
    pairs = list(zip(*loaders, strict=True))
    assert pairs
    for mapped, table in pairs:
        assert torch.equal(mapped.target.logits, table.target.logits) and np.array_equal(mapped.ids, table.ids)
    with h5py.File(exact_stores["int8"] / H5_NAME) as f:
        assert f.attrs["schema_version"] == 3 and f["train/logits"].dtype == np.int8
        assert f["train/views/logits_scale"].shape == f["train/views/logits"].shape[:2]
        n, c = f["train/logits"].shape
        int8_bytes = sum(f[f"train/logits{s}"].nbytes for s in ("", "_scale", "_offset"))
    with h5py.File(exact_stores["float16"] / H5_NAME) as f:
        assert f.attrs["schema_version"] == 2
        assert int8_bytes == n * (c + 8) and f["train/logits"].nbytes == n * c * 2


def test_verify_refuses_a_negative_or_nan_scale(exact_stores, tmp_path):
    store = Store.open(exact_stores["int8"])
    q = store.train.logits
    for bad in (-1.0, np.nan):
        scale = np.array(q.scale)
        scale[3] = bad
        out = tmp_path / f"bad{bad}"
        out.mkdir()
        for name in BETONS.values():
            link_or_copy(exact_stores["int8"] / name, out / name)
        train_split = dataclasses.replace(store.train, logits=Quantized(q.codes, scale, q.offset))
        write_teacher_h5(out / H5_NAME, {"train": train_split, "val": store.val}, dict(store.attrs), "int8")
        write_manifest(out, {})
        problems = verify(out)
        assert (
            len(problems) == 1 and "train/logits_scale or train/logits_offset hold NaN, inf or negative" in problems[0]
        )
        with pytest.raises(KdstoreError, match="logits"):
            Store.open(out, full=True)


def test_merge_keeps_int8_unless_told(exact_stores, tmp_path):
    a = exact_stores["int8"]
    merge.run(MergeConfig(stores=(str(a), str(a)), out=str(tmp_path / "m8")))
    merge.run(MergeConfig(stores=(str(a), str(a)), out=str(tmp_path / "m16"), logits_dtype="float16"))
    m8, m16, src = (Store.open(p, full=True) for p in (tmp_path / "m8", tmp_path / "m16", a))
    assert stored_dtype(m8.train.logits) == "int8" and stored_dtype(m16.train.logits) == "float16"
    # the mean of a store with itself is the store: re-quantising its values gives its codes back
    np.testing.assert_array_equal(np.asarray(m8.train.logits.codes), np.asarray(src.train.logits.codes))
    np.testing.assert_array_equal(np.asarray(m16.train.logits, dtype=np.float32), np.asarray(src.train.logits))
