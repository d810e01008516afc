"""`train` for every variant: files written, samples visited in the variant's order, lambda per batch."""

import json

import numpy as np
import pytest

from kdstore.method.kd_weight import POLICIES
from kdstore.method.variants import VARIANTS
from kdstore.store.format import Store
from kdstore.train import build as train_build
from kdstore.train import loop as train
from kdstore.train.config import TrainConfig

BATCH = 4  # small_store: 30 training images, 8 batches an epoch
METRIC_KEYS = {
    "epoch",
    "train_loss",
    "train_ce",
    "train_kd",
    "lam_mean",
    "lam_min",
    "lam_max",
    "val_acc",
    "val_loss",
    "seconds",
    "images_per_s",
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_trains_and_follows_its_order(variant, small_store, tmp_path, monkeypatch):
    _trains_and_follows_its_order(variant, small_store, tmp_path, monkeypatch)


@pytest.mark.parametrize("variant", ["kd-cl", "kd-icl-sr", "random-cl"])
def test_orders_are_sample_ids_not_positions(variant, shuffled_ids_store, tmp_path, monkeypatch):
    """The same checks on a store whose sample ids are not its .beton positions."""
    t = Store.open(shuffled_ids_store).train
    assert not np.array_equal(t.sample_id, np.arange(len(t)))
    _trains_and_follows_its_order(variant, shuffled_ids_store, tmp_path, monkeypatch)


def _trains_and_follows_its_order(variant, small_store, tmp_path, monkeypatch):
    built = []
    real_build = train_build.build_model

    def recording_build(name, *args, **kwargs):
        built.append(name)
        return real_build(name, *args, **kwargs)

    monkeypatch.setattr(train_build, "build_model", recording_build)
    seen: list[tuple[int, int, np.ndarray, float]] = []
    out = tmp_path / variant
    cfg = TrainConfig(
        out=str(out),
        store=str(small_store),
        variant=variant,
        student="cifar_resnet8",
        epochs=2,
        batch_size=BATCH,
        workers=1,
        progress=False,
    )
    summary = train.run(cfg, hook=lambda e, b, ids, lam: seen.append((e, b, ids, lam)))

    assert built == ["cifar_resnet8"]  # the student only: no teacher is ever constructed
    for name in ("config.json", "metrics.jsonl", "summary.json", "checkpoint.pt"):
        assert (out / name).is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and METRIC_KEYS <= set(rows[0])
    config = json.loads((out / "config.json").read_text())
    assert config["variant"] == variant and config["tau"] == 4.0 and config["data"]["store"] == str(small_store)
    assert summary["final_val_acc"] == rows[-1]["val_acc"]

    store = Store.open(small_store)
    t = store.train
    v = VARIANTS[variant]
    for epoch in (0, 1):
        batches = [s for s in seen if s[0] == epoch]
        ids = np.concatenate([s[2] for s in batches])
        lams = np.array([s[3] for s in batches])
        assert sorted(ids.tolist()) == sorted(t.sample_id.tolist())  # every sample exactly once
        if v.ordering == "curriculum":
            np.testing.assert_array_equal(ids, t.curriculum)
        elif v.ordering == "inverse":
            np.testing.assert_array_equal(ids, t.inverse)
        conf_in_order = t.confidence[t.positions(ids)]
        expected = POLICIES[v.policy](conf_in_order, BATCH, 0.9, float(t.confidence.max()))
        np.testing.assert_allclose(lams, expected, rtol=1e-12)
        assert rows[epoch]["lam_mean"] == pytest.approx(float(expected.mean()))
    if v.ordering == "shuffle":
        first = np.concatenate([s[2] for s in seen if s[0] == 0])
        second = np.concatenate([s[2] for s in seen if s[0] == 1])
        assert first.tolist() != second.tolist()  # a new permutation each epoch
    if v.policy == "sr":
        assert lams[0] == 0.0 and lams.max() > 0.0
    if v.policy == "zero":
        assert rows[0]["train_kd"] == 0.0


def test_a_batch_whose_teacher_rows_are_not_its_images_is_refused(small_store, tmp_path, monkeypatch):
    """The loader checks every batch's positions against the sample ids FFCV returned."""
    from kdstore.errors import KdstoreError
    from kdstore.loader.store_loader import StoreLoader

    real = StoreLoader._inner_order
    monkeypatch.setattr(
        StoreLoader, "_inner_order", lambda self, epoch: real(self, epoch)[::-1].copy()
    )  # the images read are not those of the positions the targets are looked up for
    with pytest.raises(KdstoreError, match="holds other samples than its teacher rows"):
        train.run(
            TrainConfig(
                out=str(tmp_path / "r"),
                store=str(small_store),
                variant="kd",
                epochs=1,
                batch_size=10,
                workers=1,
                progress=False,
            )
        )
