"""Datasets by name: digits is deterministic and stratified; imagefolder layouts."""

import numpy as np
import pytest

from kdstore.data.datasets import load_dataset
from kdstore.errors import KdstoreError
from tests.helpers import make_imagefolder


def test_digits_split_is_deterministic_and_stratified():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert len(a.train) == 1437 and len(a.val) == 360 and a.num_classes == 10
    np.testing.assert_array_equal(a.train.labels, b.train.labels)
    np.testing.assert_array_equal(a.train.get(5), b.train.get(5))
    img = a.train.get(0)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8 and img.max() > 200
    counts = np.bincount(a.val.labels)
    assert counts.min() >= 35 and counts.max() <= 37  # 20% of each class


def test_imagefolder_val_dir_and_resizing(tmp_path):
    root = make_imagefolder(tmp_path / "f", classes=2, train_per_class=3, val_per_class=2, size=40, val_dir="val")
    ds = load_dataset(f"imagefolder:{root}", image_size=24)
    assert ds.class_names == ["class0", "class1"] and len(ds.train) == 6 and len(ds.val) == 4
    assert ds.train.get(0).shape == (24, 24, 3)


def test_imagefolder_layout_errors(tmp_path):
    (tmp_path / "x" / "train" / "a").mkdir(parents=True)
    with pytest.raises(KdstoreError, match="needs train/<class>/ and test/<class>/"):
        load_dataset(f"imagefolder:{tmp_path / 'x'}")
