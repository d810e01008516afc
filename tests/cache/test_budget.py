"""`cache --budget` (cache/budget.py): the storage chosen by the byte, on constructed cases whose
answer is known, and the one-line refusals."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from kdstore.cache import write as cache
from kdstore.cache.budget import Layout, parse_budget, plan
from kdstore.cache.config import CacheConfig
from kdstore.errors import KdstoreError
from kdstore.method.sparse_targets import bytes_per_view
from kdstore.store.format import Store
from kdstore.store.quantized import stored_dtype

C, N = 1000, 100
LAYOUT = Layout(fixed=1_000_000, clean_rows=N, view_rows=N, classes=C, per_view_extra=16)
NOTHING = {"logits_dtype": None, "topk": 0, "sample": 0}


def _budget(views: int, per_view: int, dtype: str = "float16") -> float:
    """A budget leaving `per_view` bytes for what each view keeps, clean logits in `dtype`."""
    return LAYOUT.fixed + N * bytes_per_view("logits", 0, C, dtype) + N * views * (per_view + LAYOUT.per_view_extra)


def test_budgets_are_read_in_decimal_and_binary_units_and_per_sample():
    assert parse_budget("20GB") == (20e9, False) and parse_budget("1.5 GiB") == (1.5 * 2**30, False)
    assert parse_budget("4KB/sample") == (4000.0, True) and parse_budget("123") == (123.0, False)
    for bad in ("lots", "-3GB", "3XB", "0"):
        with pytest.raises(KdstoreError, match="--budget"):
            parse_budget(bad)
    with pytest.raises(KdstoreError, match="--budget"):
        CacheConfig(dataset="digits", checkpoint="t.pt", budget="20 furlongs").validate()
    with pytest.raises(KdstoreError, match="not to --extend"):
        CacheConfig(extend="stores/s", views=4, budget="1GB").validate()


def test_a_teacher_sure_of_two_classes_is_kept_whole_by_top_2():
    # every row: two classes share the mass, the rest lie 400 below: top-2 keeps it (its fill,
    # floored at 1e-30 of the mass at tau = 1, leaves ~6e-6 at tau = 4), while 12 sampled ids at
    # the same bytes see only an empirical split of the two
    rows = np.full((N, C), -400.0, dtype=np.float32)
    rows[:, 3], rows[:, 7] = 2.0, 1.0
    chosen, found = plan(LAYOUT, _budget(2, 24), 2, NOTHING, rows, 4.0)
    assert (chosen.storage, chosen.views) == ("topk", 2) and chosen.k >= 2 and chosen.kl < 1e-3
    kinds = {c.storage for c in found}
    assert kinds == {"topk", "sample"}  # full logits (2,000 or 1,008 bytes a view) do not fit 24 bytes
    assert min(c.kl for c in found if c.storage == "sample") > 10 * chosen.kl


def test_a_flat_teacher_is_kept_by_int8_full_logits_when_they_fit():
    # near-uniform rows: any top-k misses most of the mass; int8 rows (1,008 bytes) fit, float16 do not
    rows = np.random.default_rng(0).normal(0, 0.5, (N, C)).astype(np.float32)
    chosen, found = plan(LAYOUT, _budget(2, 1100, "int8"), 2, NOTHING, rows, 4.0)
    assert (chosen.storage, chosen.dtype) == ("logits", "int8")
    assert all(c.kl > chosen.kl for c in found if c != chosen) and chosen.kl < 1e-4


def test_views_are_lowered_only_when_no_storage_fits_and_given_options_are_kept():
    # 10 classes: float16 clean rows (20 B) and 3 views of one sampled id (2 B + 16 B) a sample;
    # 4 views do not fit even beside int8 clean rows (18 B), nor does anything else with 3
    small = Layout(fixed=1_000_000, clean_rows=N, view_rows=N, classes=10, per_view_extra=16)
    budget = small.fixed + N * 20 + N * 3 * 18
    rows = np.random.default_rng(1).normal(0, 3, (N, 10)).astype(np.float32)
    chosen, _ = plan(small, budget, 4, NOTHING, rows, 4.0)
    assert (chosen.views, chosen.storage, chosen.k, chosen.dtype) == (3, "sample", 1, "float16")
    with pytest.raises(KdstoreError, match="cannot hold this store with --topk 5"):
        plan(small, budget, 4, {**NOTHING, "topk": 5}, rows, 4.0)
    with pytest.raises(KdstoreError, match="images and per-sample arrays alone take"):
        plan(LAYOUT, LAYOUT.fixed, 0, NOTHING, rows, 4.0)
    chosen, _ = plan(LAYOUT, _budget(0, 0, "float32"), 0, NOTHING, rows, 4.0)  # no views: the clean dtype
    assert (chosen.storage, chosen.dtype, chosen.kl) == ("logits", "float32", 0.0)


@pytest.mark.slow
def test_a_budgeted_cache_stores_and_records_its_plan(digits_teacher, tmp_path):
    common = dict(dataset="digits", checkpoint=str(digits_teacher / "checkpoint.pt"), batch_size=200, progress=False)
    est = cache.dry_run(CacheConfig(out=str(tmp_path / "s"), views=2, workers=1, dry_run=True, **common))
    images = est.parts["train.beton"] + est.parts["val.beton"]  # .beton sizes are exact with one writer worker
    budget = images + est.parts["logits"] + 0.95 * est.parts["views"]  # float16 views do not fit, int8 ones do
    cache.run(CacheConfig(out=str(tmp_path / "s"), views=2, workers=1, budget=f"{int(budget)}B", **common))
    with h5py.File(tmp_path / "s" / "teacher.h5") as f:
        recorded = json.loads(f.attrs["budget_plan"])
    chosen = recorded["chosen"]
    store = Store.open(tmp_path / "s")
    assert recorded["budget"] == f"{int(budget)}B" and len(recorded["candidates"]) >= 2
    assert chosen["kl"] == min(c["kl"] for c in recorded["candidates"])
    assert (chosen["storage"], chosen["dtype"]) == ("logits", "int8")
    assert stored_dtype(store.train.logits) == "int8" and store.train.views.storage == "logits"
    assert sum(p.stat().st_size for p in (tmp_path / "s").iterdir()) <= budget
