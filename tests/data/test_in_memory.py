"""`--loader device` (the split decoded once, batches gathered in memory) feeds exactly what
FFCV's Loader feeds: the same images, labels and ids per batch, and identical metrics, for every
ordering (so every variant), pacing, scorer and views mode."""

import json

import pytest
import timm
import torch

from kdstore.cache import write as cache
from kdstore.cache.config import CacheConfig
from kdstore.data.beton import make_loader
from kdstore.data.in_memory import ResidentLoader, ResidentSplit
from kdstore.loader import StoreLoader
from kdstore.store.format import Store
from kdstore.train import loop as train
from kdstore.train import step as step_module
from kdstore.train.config import TrainConfig
from tests.helpers import untimed

pytestmark = pytest.mark.slow  # caches, trains or kills processes: the full suite only


def _run(store, out, loader, monkeypatch, **kw):
    """metrics.jsonl without the timings, and every batch the step received (images, labels)."""
    fed = []
    real = step_module.Step.__call__

    def recording(self, batch):
        fed.append((batch.images.clone(), batch.labels.clone()))
        return real(self, batch)

    monkeypatch.setattr(step_module.Step, "__call__", recording)
    train.run(TrainConfig(out=str(out), store=str(store), loader=loader, progress=False, tensorboard=False, **kw))
    monkeypatch.setattr(step_module.Step, "__call__", real)
    rows = [untimed(json.loads(line)) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert json.loads((out / "config.json").read_text())["loader_used"] == loader
    return rows, fed


# The loader sees only each epoch's positions, and every variant's positions come from one of
# three kinds of order: a per-epoch shuffle (kd, unguided), a fixed order (kd-cl-sr here: the
# curriculum, its inverse and random-cl are fixed permutations alike), a paced draw from a fixed
# order; and a student scorer rebuilds the order between epochs.
ARMS = [
    {"variant": "kd", "epochs": 2},
    {"variant": "kd-cl-sr", "epochs": 1},
    {"variant": "kd-icl", "pacing": "exp", "epochs": 2},
    {"variant": "kd-cl", "scorer": "student", "rescore_every": 1, "epochs": 2},
]


@pytest.mark.parametrize(
    "arm", ARMS, ids=lambda a: "+".join(str(v) for k, v in a.items() if k not in ("epochs", "rescore_every"))
)
def test_device_and_ffcv_loaders_feed_identical_batches(arm, digits_store):
    """Through the public loader that `train` runs on: every batch of every epoch (images after
    augmentation, labels, ids, lambda, teacher targets) is the same whichever reads the images;
    a student scorer rescoring between epochs with the same model reorders both alike."""
    arm = dict(arm)
    arm.pop("rescore_every", None)
    loaders = [StoreLoader(digits_store, batch_size=256, seed=3, loader=r, **arm) for r in ("ffcv", "device")]
    assert [x.loader_used for x in loaders] == ["ffcv", "device"]
    torch.manual_seed(0)
    scorer = timm.create_model("cifar_resnet8", num_classes=10)
    n = 0
    for epoch in range(arm["epochs"]):
        for loader in loaders:
            if loader.rescore_due(epoch):
                loader.rescore(scorer)
        for a, b in zip(*loaders, strict=True):
            assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.lam == b.lam
            assert (a.ids == b.ids).all() and torch.equal(a.target.logits, b.target.logits)
            n += 1
    assert n == arm["epochs"] * len(loaders[0]) > 0


@pytest.mark.parametrize("views", ["replay", "clean"])
def test_views_modes_are_identical_on_both_loaders(views, synthetic_folder, tmp_path_factory, tmp_path, monkeypatch):
    store = tmp_path_factory.getbasetemp() / "resident-views"
    if not store.exists():
        cache.run(
            CacheConfig(
                allow_untrained=True,
                dataset=f"imagefolder:{synthetic_folder}",
                teacher="cifar_resnet8",
                out=str(store),
                batch_size=8,
                views=2,
                progress=False,
            )
        )
    kw = dict(epochs=2, batch_size=8, seed=1, variant="kd-cl-sr", view_mode=views, workers=1, agreement_samples=0)
    ffcv_rows, ffcv_fed = _run(store, tmp_path / "ffcv", "ffcv", monkeypatch, **kw)
    dev_rows, dev_fed = _run(store, tmp_path / "dev", "device", monkeypatch, **kw)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(ffcv_fed, dev_fed)) and len(ffcv_fed) == len(dev_fed)
    assert ffcv_rows == dev_rows


def test_resident_split_holds_the_files_images_in_order(digits_store):
    store = Store.open(digits_store)  # its /proc/self/fd paths live as long as it does
    beton = store.beton("train")
    split = ResidentSplit(beton, torch.device("cpu"), workers=1)
    row = 0
    for images, labels, ids in make_loader(beton, 500, 1):
        assert torch.equal(split.images[row : row + len(images)], images) and torch.equal(
            split.labels[row : row + len(images)], labels.long()
        )
        assert torch.equal(split.sample_id[row : row + len(images)], ids.long())
        row += len(images)
    loader = ResidentLoader(
        split,
        100,
        order_fn=lambda epoch: torch.randperm(len(split), generator=torch.Generator().manual_seed(epoch)).numpy(),
        drop_last=True,
    )
    assert len(loader) == len(split) // 100
    first = [ids for _, _, ids in loader]
    assert loader.next_epoch == 1 and len(first) == len(loader) and all(len(i) == 100 for i in first)
