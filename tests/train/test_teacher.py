"""`kdstore teacher`: training, fine-tuning options, the held-out split, distillation paths."""

import json

import numpy as np
import pytest
import timm
import torch

from kdstore.cache import write as cache
from kdstore.cache.config import CacheConfig
from kdstore.data.datasets import load_dataset
from kdstore.data.splits import holdout, split_record, stratified_members
from kdstore.errors import KdstoreError
from kdstore.models import build as models
from kdstore.models.build import build_model
from kdstore.models.checkpoints import load_checkpoint
from kdstore.store.format import Store
from kdstore.train import build as train_build
from kdstore.train import loop as train
from kdstore.train import teacher
from kdstore.train.config import TrainConfig
from kdstore.train.teacher import TeacherConfig

pytestmark = pytest.mark.slow  # caches, trains or kills processes: the full suite only


def test_teacher_beats_chance_on_digits(digits_teacher):
    summary = json.loads((digits_teacher / "summary.json").read_text())
    assert summary["kind"] == "teacher" and summary["epochs"] == 4
    assert summary["final_val_acc"] > 0.7  # chance is 0.1
    meta = load_checkpoint(digits_teacher / "checkpoint.pt")["meta"]
    assert meta["model"] == "cifar_resnet8" and meta["input_size"] == 32 and meta["num_classes"] == 10
    assert meta["class_names"] == [str(i) for i in range(10)] and meta["split"] is None


def test_split_is_disjoint_complete_and_stratified():
    ds = load_dataset("digits")
    mask = stratified_members(ds.train.labels, 0.6, seed=0)
    assert mask.sum() + (~mask).sum() == len(ds.train)
    for c in range(10):
        in_class = ds.train.labels == c
        assert abs(mask[in_class].sum() - 0.6 * in_class.sum()) <= 1
    np.testing.assert_array_equal(mask, stratified_members(ds.train.labels, 0.6, seed=0))
    assert not np.array_equal(mask, stratified_members(ds.train.labels, 0.6, seed=1))
    _, record = split_record(ds.train, 0.6, 0)
    rest = holdout(ds.train, record)
    assert set(rest.sample_ids) == set(ds.train.sample_ids[~mask])
    assert set(rest.sample_ids).isdisjoint(ds.train.sample_ids[mask])
    with pytest.raises(KdstoreError, match="fraction in"):
        stratified_members(ds.train.labels, 1.5, 0)


def test_holdout_teacher_cache_and_student(tmp_path, capsys):
    t = teacher.run(
        TeacherConfig(
            model="cifar_resnet8",
            dataset="digits",
            split=0.6,
            split_seed=3,
            training=TrainConfig(out=str(tmp_path / "t"), epochs=1, batch_size=128, progress=False),
        )
    )
    assert t["kind"] == "teacher" and t["split"]["size"] == t_size(0.6)  # the teacher's own run records the split
    # a teacher has no KD term: neither its epoch line nor its TensorBoard scalars show kd or lambda
    line = next(x for x in capsys.readouterr().err.splitlines() if "epoch 1/1: loss" in x)
    assert "kd " not in line and "lambda" not in line and "val acc" in line, line
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "t"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert "train/loss" in tags and not tags & {"train/kd", "lambda/mean", "batch/lambda"}, tags
    meta = load_checkpoint(tmp_path / "t" / "checkpoint.pt")["meta"]
    assert meta["split"]["fraction"] == 0.6 and meta["split"]["seed"] == 3 and meta["split"]["size"] == t_size(0.6)
    cache.run(
        CacheConfig(
            dataset="digits",
            out=str(tmp_path / "s"),
            checkpoint=str(tmp_path / "t" / "checkpoint.pt"),
            split_part="holdout",
            progress=False,
        )
    )
    store = Store.open(tmp_path / "s")
    ds = load_dataset("digits")
    seen_by_teacher = ds.train.sample_ids[stratified_members(ds.train.labels, 0.6, 3)]
    assert len(store.train) == len(ds.train) - len(seen_by_teacher)
    assert set(store.train.sample_id).isdisjoint(seen_by_teacher)
    assert store.attrs["split_part"] == "holdout" and store.attrs["split_fraction"] == 0.6
    assert len(store.val) == len(ds.val)
    ids = []
    train.run(
        TrainConfig(
            out=str(tmp_path / "r"),
            store=str(tmp_path / "s"),
            variant="kd-cl",
            epochs=1,
            batch_size=128,
            progress=False,
        ),
        hook=lambda e, b, i, lam: ids.append(i),
    )
    np.testing.assert_array_equal(np.concatenate(ids), store.train.curriculum)
    assert set(np.concatenate(ids)).isdisjoint(seen_by_teacher)


def t_size(fraction):
    labels = load_dataset("digits").train.labels
    return int(sum(round(fraction * (labels == c).sum()) for c in range(10)))


def test_split_mismatch_and_missing_split_refused(digits_teacher, tmp_path):
    with pytest.raises(KdstoreError, match="was not trained with --split"):
        cache.run(
            CacheConfig(
                dataset="digits",
                out=str(tmp_path / "s"),
                checkpoint=str(digits_teacher / "checkpoint.pt"),
                split_part="holdout",
                progress=False,
            )
        )
    ckpt = load_checkpoint(digits_teacher / "checkpoint.pt")
    ckpt["meta"]["split"] = {"fraction": 0.6, "seed": 0, "members_sha256": "0" * 64, "size": 1}
    torch.save(ckpt, tmp_path / "forged.pt")
    with pytest.raises(KdstoreError, match="split does not match"):
        cache.run(
            CacheConfig(
                dataset="digits",
                out=str(tmp_path / "s"),
                checkpoint=str(tmp_path / "forged.pt"),
                split_part="holdout",
                progress=False,
            )
        )
    assert not (tmp_path / "s").exists() and not (tmp_path / ".s.partial").exists()


def test_student_checkpoint_is_a_cache_teacher(digits_store, tmp_path):
    """teacher -> assistant -> student (Mirzadeh et al.) is three commands."""
    train.run(
        TrainConfig(
            out=str(tmp_path / "ta"),
            store=str(digits_store),
            variant="kd",
            student="cifar_resnet8",
            epochs=1,
            batch_size=256,
            progress=False,
        )
    )
    cache.run(
        CacheConfig(
            dataset="digits",
            out=str(tmp_path / "ta-store"),
            checkpoint=str(tmp_path / "ta" / "checkpoint.pt"),
            progress=False,
        )
    )
    store = Store.open(tmp_path / "ta-store")
    assert store.attrs["teacher"] == "cifar_resnet8" and store.attrs["checkpoint_sha256"]
    s = train.run(
        TrainConfig(
            out=str(tmp_path / "student"),
            store=str(tmp_path / "ta-store"),
            variant="kd",
            epochs=1,
            batch_size=256,
            progress=False,
        )
    )
    assert s["teacher"] == "cifar_resnet8"


def test_pretrained_file_loads_local_weights(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("resnet10t", num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "resnet10t.pth")
    model, meta = build_model("resnet10t", 10, 224, "imagenet", pretrained_file=str(tmp_path / "resnet10t.pth"))
    torch.testing.assert_close(model.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    assert model.get_classifier().out_features == 10
    with pytest.raises(KdstoreError, match="does not exist"):
        build_model("resnet10t", 10, 224, pretrained_file=str(tmp_path / "none.pth"))


def test_pretrained_unreachable_names_the_weights(monkeypatch):
    with pytest.raises(KdstoreError, match=r"no network to fetch pretrained weights for resnet10t .*--pretrained-file"):
        build_model("resnet10t", 10, 224, pretrained=True)  # offline: refused before timm tries
    # A host that answers but a download that fails (HF_HUB_OFFLINE here): timm's error, named.
    monkeypatch.setattr(models, "_online", lambda host, timeout=3.0: True)
    with pytest.raises(KdstoreError, match=r"could not fetch pretrained weights for resnet10t .*--pretrained-file"):
        build_model("resnet10t", 10, 224, pretrained=True)


def test_freeze_epochs_train_only_the_head_and_head_lr(digits_store, tmp_path):
    torch.manual_seed(0)
    initial, _ = build_model("cifar_resnet8", 10, 32)
    snapshots = {}

    def snap(epoch, b, ids, lam):
        if b == 0:
            snapshots[epoch] = {k: v.detach().clone() for k, v in model_ref["m"].state_dict().items()}

    model_ref = {}
    real_build = train_build.build_model

    def keep(*args, **kwargs):
        model, meta = real_build(*args, **kwargs)
        model_ref["m"] = model
        return model, meta

    train_build.build_model = keep
    try:
        train.run(
            TrainConfig(
                out=str(tmp_path / "f"),
                store=str(digits_store),
                variant="unguided",
                epochs=2,
                freeze_epochs=1,
                head_lr=0.5,
                batch_size=256,
                progress=False,
            ),
            hook=snap,
        )
    finally:
        train_build.build_model = real_build
    after_frozen = snapshots[1]  # the start of epoch 2 = after the frozen epoch
    start = initial.state_dict()
    torch.testing.assert_close(after_frozen["stem.0.weight"], start["stem.0.weight"])
    torch.testing.assert_close(after_frozen["stages.2.0.conv2.weight"], start["stages.2.0.conv2.weight"])
    assert not torch.equal(after_frozen["fc.weight"], start["fc.weight"])
    final = load_checkpoint(tmp_path / "f" / "checkpoint.pt")
    assert not torch.equal(final["state_dict"]["stem.0.weight"], start["stem.0.weight"])
    lrs = [g["initial_lr"] for g in final["optimizer"]["param_groups"]]
    assert lrs == [0.05, 0.5]  # body at --lr, head at --head-lr, both under the same cosine
