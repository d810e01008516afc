"""`cache` writes the documented schema; its numbers match a direct teacher forward."""

import json

import h5py
import numpy as np
import pytest
import torch

from kdstore.cache import write as cache
from kdstore.cache.config import CacheConfig
from kdstore.data.augment import normalize
from kdstore.data.datasets import load_dataset
from kdstore.errors import KdstoreError
from kdstore.method.curriculum import confidence_and_correct, curriculum
from kdstore.models.build import build_from_meta
from kdstore.models.checkpoints import load_checkpoint
from kdstore.runtime.hashing import sha256_file
from kdstore.store.format import ROOT_ATTRS, Store
from kdstore.store.verification import verify


def test_schema_read_with_plain_h5py(digits_store, digits_teacher):
    with h5py.File(digits_store / "teacher.h5", "r") as f:
        assert set(ROOT_ATTRS) <= set(f.attrs)
        assert f.attrs["schema_version"] == 2 and f.attrs["num_classes"] == 10
        assert f.attrs["teacher"] == "cifar_resnet8" and f.attrs["dataset"] == "digits"
        assert f.attrs["checkpoint_sha256"] == sha256_file(digits_teacher / "checkpoint.pt")
        assert list(f.attrs["class_names"]) == [str(i) for i in range(10)]
        for split, n in (("train", 1437), ("val", 360)):
            g = f[split]
            assert g["logits"].shape == (n, 10) and g["logits"].dtype == np.float16
            assert g["labels"].shape == g["sample_id"].shape == g["confidence"].shape == g["correct"].shape == (n,)
            assert g["confidence"].dtype == np.float32 and g["correct"].dtype == bool
            assert g["labels"].fletcher32 and g["confidence"].fletcher32
            assert (
                g["logits"].chunks is None and not g["logits"].fletcher32 and g["logits"].compression is None
            )  # mappable
        assert sorted(f["train/curriculum"][()]) == sorted(f["train/sample_id"][()])
        np.testing.assert_array_equal(f["train/inverse"][()], f["train/curriculum"][()][::-1])
        assert 0.0 <= f.attrs["teacher_val_acc"] <= 1.0
    assert {"train.beton", "val.beton", "teacher.h5", "MANIFEST.json"} <= {p.name for p in digits_store.iterdir()}


def test_logits_match_a_direct_teacher_forward(digits_store, digits_teacher):
    ckpt = load_checkpoint(digits_teacher / "checkpoint.pt")
    model = build_from_meta(ckpt["meta"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    ds = load_dataset("digits")
    store = Store.open(digits_store)
    mean, std = torch.tensor(store.attrs["normalize_mean"]), torch.tensor(store.attrs["normalize_std"])
    idx = np.arange(0, 1437, 97)
    images = torch.from_numpy(np.stack([ds.train.get(i) for i in idx]))
    with torch.inference_mode():
        direct = model(normalize(images, mean, std)).numpy()
    rows = store.train.positions(ds.train.sample_ids[idx])
    np.testing.assert_allclose(store.train.logits[rows], direct, rtol=2e-3, atol=2e-3)  # stored as float16
    np.testing.assert_array_equal(store.train.labels[rows], ds.train.labels[idx])


def test_confidence_and_orders_follow_the_definitions(digits_store):
    s = Store.open(digits_store).train
    # confidence comes from the float32 logits; the stored logits are float16-rounded
    conf, correct = confidence_and_correct(s.logits, s.labels)
    np.testing.assert_allclose(s.confidence, conf, atol=2e-3)
    assert (s.correct == correct).mean() > 0.99
    np.testing.assert_array_equal(s.curriculum, s.sample_id[curriculum(s.confidence, s.correct, s.labels)])


def test_verify_finds_a_flipped_bit(digits_store, tmp_path):
    import shutil

    assert verify(digits_store) == []
    copy = tmp_path / "copy"
    shutil.copytree(digits_store, copy)
    data = bytearray((copy / "val.beton").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "val.beton").write_bytes(bytes(data))
    problems = verify(copy)
    assert len(problems) == 1 and problems[0].startswith("val.beton")


@pytest.mark.slow
def test_imagefolder_store_and_refusals(synthetic_folder, tmp_path):
    out = tmp_path / "syn"
    cache.run(
        CacheConfig(
            allow_untrained=True,
            dataset=f"imagefolder:{synthetic_folder}",
            teacher="cifar_resnet8",
            out=str(out),
            progress=False,
            logits_dtype="float32",
        )
    )
    store = Store.open(out)
    assert store.num_classes == 3 and len(store.train) == 30 and len(store.val) == 12
    assert store.train.logits.dtype == np.float32 and store.attrs["checkpoint_sha256"] == ""
    assert store.attrs["class_names"] == ["class0", "class1", "class2"]
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert set(manifest["sha256"]) == {"teacher.h5", "train.beton", "val.beton"}
    with pytest.raises(KdstoreError, match="already exists"):
        cache.run(
            CacheConfig(
                allow_untrained=True,
                dataset=f"imagefolder:{synthetic_folder}",
                teacher="cifar_resnet8",
                out=str(out),
                progress=False,
            )
        )


def test_fingerprint_tells_datasets_apart(digits_store, tmp_path, synthetic_folder):
    out = tmp_path / "syn2"
    cache.run(
        CacheConfig(
            allow_untrained=True,
            dataset=f"imagefolder:{synthetic_folder}",
            teacher="cifar_resnet8",
            out=str(out),
            progress=False,
        )
    )
    a, b = Store.open(digits_store).attrs, Store.open(out).attrs
    assert len(a["dataset_fingerprint"]) == 64 and a["dataset_fingerprint"] != b["dataset_fingerprint"]


@pytest.mark.parametrize("size", [16, 72])  # raw pixels, JPEG
def test_fingerprint_reads_stored_images_without_decoding(size, tmp_path, monkeypatch):
    """Same images (written by 1 or 2 processes: other page layouts), same fingerprint; one
    changed pixel, another; and FFCV's decoder is never asked."""
    from kdstore.data import beton as ffcv_files
    from kdstore.data.datasets import ImageSplit

    images = np.random.default_rng(0).integers(0, 256, (40, size, size, 3), dtype=np.uint8)
    changed = images.copy()
    changed[17, 3, 5, 1] ^= 0x40
    for name, arr, workers in (("a", images, 1), ("b", images, 2), ("c", changed, 1)):
        split = ImageSplit(get=lambda i, arr=arr: arr[i], labels=np.arange(40) % 3, sample_ids=np.arange(40) + 100)
        ffcv_files.write_beton(split, tmp_path / f"{name}.beton", workers=workers)
    monkeypatch.setattr(ffcv_files, "make_loader", lambda *a, **k: pytest.fail("the fingerprint decoded images"))
    a, b, c = (ffcv_files.fingerprint_beton(tmp_path / f"{name}.beton") for name in "abc")
    assert len(a) == 64 and a == b and a != c


def test_failed_cache_leaves_nothing_behind(synthetic_folder, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise KdstoreError("teacher pass failed")

    monkeypatch.setattr(cache, "score_beton", boom)
    out = tmp_path / "never"
    with pytest.raises(KdstoreError, match="teacher pass failed"):
        cache.run(
            CacheConfig(
                allow_untrained=True,
                dataset=f"imagefolder:{synthetic_folder}",
                teacher="cifar_resnet8",
                out=str(out),
                progress=False,
            )
        )
    assert list(tmp_path.iterdir()) == []
