"""The public data API (kdstore.StoreLoader, Batch, Target, kd_loss) on its own: what a batch
carries, an exact resume mid-epoch, the validation split, and bad input in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kdstore
from kdstore import Batch, KdstoreError, Store, StoreLoader, Target, kd_loss


def _loader(store, **kw) -> StoreLoader:
    return StoreLoader(store, batch_size=kw.pop("batch_size", 8), workers=1, **kw)


def _same(a: Batch, b: Batch) -> None:
    assert (a.epoch, a.index, a.lam) == (b.epoch, b.index, b.lam)
    np.testing.assert_array_equal(a.ids, b.ids)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert (a.target.logits is None) == (b.target.logits is None)
    if a.target.logits is not None:
        assert torch.equal(a.target.logits, b.target.logits)


def test_public_names_are_exported():
    for name in ("StoreLoader", "LoaderConfig", "Batch", "Target", "LossTerms", "kd_loss"):
        assert name in kdstore.__all__ and getattr(kdstore, name).__doc__


def test_a_batch_carries_its_images_labels_ids_targets_and_lambda(ordering_store):
    """kd-cl-sr over a store whose sample ids are not positions: every batch's labels, ids and
    teacher rows are those of its positions, lambda follows SR's rule from the batch means."""
    store = Store.open(ordering_store)
    loader = _loader(ordering_store, variant="kd-cl-sr", augment=False)
    assert len(loader) == int(np.ceil(len(store.train) / 8))
    batches = list(loader)
    assert len(batches) == len(loader) and loader.epoch == 1
    conf = store.train.confidence
    order = np.concatenate([b.positions for b in batches])
    np.testing.assert_array_equal(order, store.train.curriculum_positions())  # the curriculum, easy first
    means = [conf[b.positions].astype(np.float64).mean() for b in batches]
    for b, mean in zip(batches, means):
        np.testing.assert_array_equal(b.ids, store.train.sample_id[b.positions])
        np.testing.assert_array_equal(b.labels.numpy(), store.train.labels[b.positions])
        assert b.target.kind == "logits" and b.target.logits.dtype == torch.float32
        np.testing.assert_array_equal(b.target.logits.numpy(), np.asarray(store.train.logits[b.positions], np.float32))
        expected = np.clip((1 - mean) / conf.max() - (1 - means[0]) / conf.max(), 0, 1)
        assert b.lam == pytest.approx(float(expected), abs=1e-12)
        assert b.images.dtype == torch.float32 and b.images.shape[1] == 3
    assert batches[0].lam == 0.0  # SR: the epoch's first batch is the reference


def test_the_validation_split_is_clean_with_the_teachers_val_logits(small_store):
    store = Store.open(small_store)
    val = _loader(small_store).val()
    batches = list(val)
    assert sum(len(b) for b in batches) == len(store.val) and all(b.lam == 0.0 for b in batches)
    pos = np.concatenate([b.positions for b in batches])
    np.testing.assert_array_equal(pos, np.arange(len(store.val)))
    logits = torch.cat([b.target.logits for b in batches]).numpy()
    np.testing.assert_array_equal(logits, np.asarray(store.val.logits, np.float32))
    again = list(val)  # no augmentation: every pass is the same
    assert all(torch.equal(a.images, b.images) for a, b in zip(batches, again))


@pytest.mark.parametrize("reader", ["device", "ffcv"])
def test_state_dict_resumes_mid_epoch_exactly(small_store, reader):
    """Random augmentation and a shuffled order: a loader loaded with the state saved after batch 1
    of epoch 1 yields exactly the batches the first one yields from there, into epoch 2."""
    a = _loader(small_store, variant="kd", loader=reader, seed=4)
    list(a)  # epoch 0
    it = iter(a)
    next(it), next(it)
    state = a.state_dict()
    assert (state["epoch"], state["batch"]) == (1, 2)
    rest = [*it, *list(a)]  # the rest of epoch 1, then epoch 2
    b = _loader(small_store, variant="kd", loader="device" if reader == "ffcv" else "ffcv", seed=4)
    b.load_state_dict(state)
    resumed = [*list(b), *list(b)]
    assert len(resumed) == len(rest) > 0
    for x, y in zip(rest, resumed):
        _same(x, y)
    assert b.state_dict()["epoch"] == 3


def test_set_epoch_rereads_an_epoch(small_store):
    loader = _loader(small_store, variant="kd", seed=2, augment=False)
    first, second = list(loader), list(loader)
    assert not np.array_equal(np.concatenate([b.ids for b in first]), np.concatenate([b.ids for b in second]))
    loader.set_epoch(1)
    for x, y in zip(second, list(loader)):
        _same(x, y)


def test_an_epoch_read_again_or_abandoned_keeps_augmenting_whole_batches(small_store):
    """Random augmentation after set_epoch to an epoch already read, and after a pass left
    half-way: every batch is augmented whole, with its own slice of the epoch's draws."""
    loader = _loader(small_store, variant="kd", seed=2)
    first = list(loader)
    loader.set_epoch(0)
    again = list(loader)  # epoch 0 once more
    assert [len(b) for b in again] == [len(b) for b in first]
    for a, b in zip(first, again):
        assert a.images.shape == b.images.shape and (a.ids == b.ids).all()  # the same order, fresh draws
    assert any(not torch.equal(a.images, b.images) for a, b in zip(first, again))
    it = iter(loader)
    next(it)  # epoch 1 left after one batch
    loader.set_epoch(1)
    assert [len(b) for b in loader] == [len(b) for b in first]


def test_bad_input_is_one_line(small_store):
    n = len(Store.open(small_store).train)
    cases = [
        (lambda: StoreLoader(small_store, split="test"), "unknown split 'test'"),
        (lambda: _loader(small_store, view_mode="replay"), "has no views"),
        (lambda: _loader(small_store, batch_size=n + 1), f"larger than the {n} training samples"),
        (lambda: _loader(small_store, batchsize=4), "did you mean batch_size"),
        (lambda: _loader(small_store, variant="kd-xx"), "unknown variant"),
        (lambda: _loader(small_store, variant="kd", pacing="exp"), "needs a variant with a fixed order"),
    ]
    for make, message in cases:
        with pytest.raises(KdstoreError, match=message) as e:
            make()
        assert "\n" not in str(e.value)
    state = _loader(small_store, seed=1).state_dict()
    other = _loader(small_store, seed=2)
    with pytest.raises(KdstoreError, match="saved with different seed"):
        other.load_state_dict(state)
    with pytest.raises(KdstoreError, match="other data"):
        _loader(small_store, seed=1).val().load_state_dict(state)


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("batch_size", "x", "--batch-size must be an integer, got 'x'"),
        ("batch_size", None, "--batch-size must be an integer, got None"),
        ("batch_size", 2.5, "--batch-size must be an integer, got 2.5"),
        ("epochs", 2.7, "--epochs must be an integer, got 2.7"),
        ("seed", 2**70, r"--seed must be in \[0, 2\*\*32\)"),
        ("augment", "no", "--augment must be True or False, got 'no'"),
        ("tau", "4", "--tau must be a number, got '4'"),
        ("tau", float("nan"), "--tau must be > 0, got nan"),
        ("lam", True, "--lam must be a number, got True"),
    ],
)
def test_options_are_checked_by_type_and_range_as_the_cli_does(small_store, option, value, message):
    with pytest.raises(KdstoreError, match=message):
        _loader(small_store, **{option: value})


def test_a_bad_loader_state_is_one_clear_error(small_store):
    loader = _loader(small_store, seed=1)
    good = loader.state_dict()
    cases = [
        (None, "is a NoneType, not the dict"),
        ({k: v for k, v in good.items() if k != "epoch"}, "lacks epoch"),
        ({**good, "batch": 10**9}, "has batch 1000000000, outside 0..3"),
        ({**good, "batch": -1}, "has batch -1, outside"),
        ({**good, "epoch": -1}, "has epoch -1, outside 0..30"),
        ({**good, "epoch": "1"}, "has epoch '1'"),
    ]
    assert len(loader) == 4
    for state, message in cases:
        with pytest.raises(KdstoreError, match=message):
            loader.load_state_dict(state)
    with pytest.raises(KdstoreError, match="set_epoch: the epoch must be an integer >= 0, got -2"):
        loader.set_epoch(-2)
    loader.load_state_dict({**good, "batch": 3})  # the last batch of an epoch is a valid place to resume
    assert len(list(loader)) == 1


def test_kd_loss_refuses_a_bad_tau_and_another_class_count():
    batch = _batch(None, [0, 1], 0.5, kind="logits", logits=torch.tensor([[1.0, 2.0, 0.5]] * 2))
    assert torch.isfinite(kd_loss(torch.zeros(2, 3), batch).loss)
    for tau in (float("nan"), float("inf"), 0.0, -1.0):
        with pytest.raises(KdstoreError, match="kd_loss: tau must be a finite number > 0"):
            kd_loss(torch.zeros(2, 3), batch, tau=tau)
    with pytest.raises(KdstoreError, match="the student gives 5 classes, the store's teacher 3"):
        kd_loss(torch.zeros(2, 5), batch)
    with pytest.raises(KdstoreError, match=r"student logits of shape \(3, 3\) for a batch of 2 samples"):
        kd_loss(torch.zeros(3, 3), batch)
    from kdstore.integrations.lightning import DistillationModule
    from kdstore.integrations.timm import OfflineDistillationTask

    for make in (
        lambda: DistillationModule(torch.nn.Linear(2, 3), tau=float("nan")),
        lambda: OfflineDistillationTask(torch.nn.Linear(2, 3), temperature=float("inf")),
    ):
        with pytest.raises(KdstoreError, match="tau must be a finite number > 0"):
            make()


def _batch(student_targets, labels, lam, **target) -> Batch:
    return Batch(
        images=torch.zeros(len(labels), 3, 2, 2),
        labels=torch.tensor(labels),
        ids=np.arange(len(labels)),
        positions=np.arange(len(labels)),
        lam=lam,
        target=Target(**target),
        epoch=0,
        index=0,
    )


def test_kd_loss_by_hand():
    """Two classes, tau 2: the terms computed by hand from their definitions (docs/method.md)."""
    z_s = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    z_t = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    batch = _batch(z_s, [0, 1], 0.25, kind="logits", logits=z_t)
    terms = kd_loss(z_s, batch, tau=2.0)
    ce = (np.log(1 + np.exp(-1.0)) + np.log(2.0)) / 2  # -log softmax(z_s)[y], averaged
    p_t = [1 / (1 + np.exp(-1.0)), 1 / (1 + np.exp(1.0))]  # softmax(z_t / 2) of row 0; row 1 reversed
    p_s0 = [1 / (1 + np.exp(-0.5)), 1 / (1 + np.exp(0.5))]
    kl0 = sum(p * np.log(p / q) for p, q in zip(p_t, p_s0))
    kl1 = sum(p * np.log(p / 0.5) for p in p_t)
    kd = 4.0 * (kl0 + kl1) / 2
    assert terms.ce.item() == pytest.approx(ce, rel=1e-6) and terms.kd.item() == pytest.approx(kd, rel=1e-5)
    assert terms.loss.item() == pytest.approx(0.75 * ce + 0.25 * kd, rel=1e-5)
    assert kd_loss(z_s, batch, tau=2.0, lam=1.0).loss.item() == pytest.approx(kd, rel=1e-5)
    plain = kd_loss(z_s, _batch(z_s, [0, 1], 0.25, kind="none"), tau=2.0)  # no teacher: CE alone
    assert plain.loss.item() == pytest.approx(ce, rel=1e-6) and plain.kd.item() == 0.0
    w = torch.tensor([0.25, 1.0])  # mixed views: CE mixes the partner's label by 1 - w
    mixed = kd_loss(z_s, _batch(z_s, [0, 1], 0.0, kind="none", partner_labels=torch.tensor([1, 0]), label_weight=w))
    ce_rows = F.cross_entropy(z_s, torch.tensor([0, 1]), reduction="none")
    ce_partner = F.cross_entropy(z_s, torch.tensor([1, 0]), reduction="none")
    assert mixed.ce.item() == pytest.approx((w * ce_rows + (1 - w) * ce_partner).mean().item(), rel=1e-6)
    with pytest.raises(KdstoreError, match="sampled at tau 4.0"):
        kd_loss(z_s, _batch(z_s, [0, 1], 0.5, kind="sampled", logits=z_t, tau=4.0), tau=2.0)
