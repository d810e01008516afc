"""The distillation losses in training: `train --loss` end to end from a store, a step from the
store equal to a step with the online teacher for dkd (the store's float16 targets within their
rounding), a store that cannot serve a loss refused in one line before training."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import kdstore
from kdstore.cli.main import cli
from kdstore.loader.teacher_targets import online_teacher
from kdstore.models.teachers import TeacherSpec, load_teacher
from kdstore.runtime.precision import for_device
from kdstore.store.format import Store
from kdstore.train import loop as train
from kdstore.train.config import TrainConfig

pytestmark = pytest.mark.slow


def _train(store, out, *extra) -> tuple[int, str]:
    args = ["train", "--store", store, "--out", out, "--epochs", "1", "--batch-size", "8", "--workers", "1"]
    result = CliRunner().invoke(cli, [str(a) for a in [*args, "--no-progress", *extra]])
    return result.exit_code, result.output.strip()


@pytest.mark.parametrize("loss", ["dkd", "dist", "nkd", "wttm", "ctkd"])
def test_train_with_each_loss(small_store, tmp_path, loss):
    code, text = _train(small_store, tmp_path / "r", "--variant", "kd-cl-sr", "--loss", loss)
    assert code == 0, text
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["loss"] == loss and config["loss_options"] == ""
    row = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[0])
    assert np.isfinite(row["train_loss"]) and row["train_kd"] > 0
    ckpt = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    if loss == "ctkd":  # its temperature is learnt with the student: recorded each epoch, kept in the checkpoint
        theta = float(ckpt["loss"]["learnt.theta"])
        assert theta != 1.0 and row["loss_temperature"] == pytest.approx(1 + 20 / (1 + np.exp(-theta)), rel=1e-6)
    else:
        assert "loss" not in ckpt and "loss_temperature" not in row


@pytest.mark.heavy  # several runs (keeps `make test` under 10 minutes)
def test_ctkd_resumes_its_learnt_temperature(small_store, tmp_path):
    """Two epochs straight equal two epochs killed in the second and resumed: the checkpoint keeps
    the temperature (its `loss`) and its optimiser state."""
    base = TrainConfig(
        out="",
        store=str(small_store),
        loss="ctkd",
        loss_options="loops=2",
        epochs=2,
        batch_size=8,
        workers=1,
        progress=False,
    )
    straight = train.run(replace(base, out=str(tmp_path / "straight")))

    def die_in_epoch_2(epoch, b, ids, lam):
        if epoch == 1 and b == 1:
            raise KeyboardInterrupt

    killed = replace(base, out=str(tmp_path / "killed"))
    with pytest.raises(KeyboardInterrupt):
        train.run(killed, hook=die_in_epoch_2)
    resumed = train.run(replace(killed, resume=True))
    rows = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    again = json.loads((tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()[-1])
    assert again["loss_temperature"] == rows[-1]["loss_temperature"] != rows[0]["loss_temperature"]
    assert (again["train_loss"], resumed["final_val_acc"]) == (rows[-1]["train_loss"], straight["final_val_acc"])


def test_kd_by_name_trains_bit_identically_to_the_default(small_store, tmp_path):
    rows = []
    for name, extra in (("default", []), ("named", ["--loss", "kd"])):
        code, text = _train(small_store, tmp_path / name, "--variant", "kd", *extra)
        assert code == 0, text
        rows.append((tmp_path / name / "metrics.jsonl").read_text().splitlines()[0])
    a, b = (json.loads(r) for r in rows)
    assert (a["train_loss"], a["val_acc"], a["val_loss"]) == (b["train_loss"], b["val_acc"], b["val_loss"])


def test_bad_loss_options_are_one_line(small_store, tmp_path):
    for extra, needle in (
        (["--loss", "dkdd"], "unknown --loss 'dkdd'; known: kd, dkd, dist, nkd, wttm"),
        (["--loss", "dkd", "--loss-options", "beta=-1"], "beta of dkd must be a finite number >= 0"),
        (["--loss", "nkd", "--logit-standardize"], "--logit-standardize is not defined for --loss nkd"),
    ):
        code, text = _train(small_store, tmp_path / "r", *extra)
        assert code == 2 and len(text.splitlines()) == 1 and needle in text, text
        assert not (tmp_path / "r").exists()


def test_dkd_from_the_store_equals_dkd_with_the_online_teacher(digits_store, digits_teacher):
    store = Store.open(digits_store)
    spec = TeacherSpec(checkpoint=str(digits_teacher / "checkpoint.pt"), input_size=int(store.attrs["input_size"]))
    teacher = load_teacher(spec, store.num_classes, int(store.attrs["image_size"]))
    model = for_device(teacher.model, torch.device("cpu")).eval()
    live = online_teacher(model, int(teacher.meta["input_size"]), torch.device("cpu"))
    options = dict(variant="kd-cl-sr", batch_size=64, workers=1, seed=3, loss="dkd", augment=False)  # clean images
    offline = next(iter(kdstore.StoreLoader(store, **options)))
    online = next(iter(kdstore.StoreLoader(store, teacher=live, **options)))
    assert torch.equal(offline.images, online.images) and online.target.kind == "online"
    student = torch.randn(64, store.num_classes, generator=torch.Generator().manual_seed(0))
    dkd = kdstore.distill_loss("dkd")
    a, b = dkd(student, offline), dkd(student, online)
    # the store keeps float16 logits: the targets agree to float16's rounding, and so do the losses
    assert torch.allclose(offline.target.logits, online.target.logits, rtol=2e-3, atol=2e-3)
    assert float(a.kd) == pytest.approx(float(b.kd), rel=1e-3) and float(a.loss) == pytest.approx(
        float(b.loss), rel=1e-3
    )


def test_a_store_that_cannot_serve_the_loss_is_refused(synthetic_folder, tmp_path):
    out = tmp_path / "topk"
    args = ["cache", "--allow-untrained", "--teacher", "cifar_resnet8", "--dataset", f"imagefolder:{synthetic_folder}"]
    args += ["--views", "1", "--topk", "2", "--workers", "1"]
    result = CliRunner().invoke(cli, [*args, "--out", str(out), "--batch-size", "8", "--no-progress"])
    assert result.exit_code == 0, result.output
    code, text = _train(out, tmp_path / "r", "--loss", "dkd")
    assert code == 2 and "--loss dkd needs the teacher's full logits" in text and "top-k" in text, text
    code, text = _train(out, tmp_path / "r2", "--loss", "dkd", "--view-mode", "clean")
    assert code == 0, text


def test_a_sweep_over_losses_reports_each_against_kd(small_store, tmp_path):
    args = ["sweep", "--store", small_store, "--out", tmp_path / "sw", "--variants", "kd", "--losses", "kd,dkd,wttm"]
    args += ["--baseline", "kd"]
    result = CliRunner().invoke(
        cli, [str(a) for a in [*args, "--seeds", "0,1", "--epochs", "1", "--batch-size", "8", "--workers", "1"]]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "sw" / "report" / "results.json").read_text())["rows"]
    arms = {r["variant"]: r for r in rows}  # a row per arm: variant, and the loss when not kd
    assert set(arms) == {"kd", "kd+dkd", "kd+wttm"} and all(r["n"] == 2 for r in rows)
    assert arms["kd"]["diff_vs_baseline"] is None
    assert all(arms[a]["diff_vs_baseline"] is not None for a in ("kd+dkd", "kd+wttm"))  # paired with kd by seed
    for arm in ("kd+dkd", "kd+wttm"):
        config = json.loads((tmp_path / "sw" / f"{arm}-s0" / "config.json").read_text())
        assert config["loss"] == arm.split("+")[1]


def _cache_views(folder, out, views: int) -> None:
    args = ["cache", "--allow-untrained", "--teacher", "cifar_resnet8", "--dataset", f"imagefolder:{folder}"]
    args += ["--views", str(views), "--workers", "1", "--batch-size", "8", "--no-progress", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output


@pytest.mark.heavy  # several runs (keeps `make test` under 10 minutes)
def test_mlkd_reads_two_distinct_stored_views_of_each_image(synthetic_folder, small_store, tmp_path):
    """Each batch carries a second view of every sample (Pair): another of its stored views than
    the batch's own, augmented with that view's parameters, with that view's stored logits; train
    runs two forward passes on them. A store that cannot give two views is refused in one line."""
    from kdstore.loader.prepare import choose

    _cache_views(synthetic_folder, tmp_path / "v3", 3)
    store = Store.open(tmp_path / "v3")
    loader = kdstore.StoreLoader(store, loss="mlkd", batch_size=8, workers=1, seed=5)
    own = choose(5, 0, len(loader.sample_id), 3)
    for batch in loader:
        pair = batch.pair
        assert pair is not None and pair.images.shape == batch.images.shape
        assert (pair.views != own[batch.positions]).all() and not torch.equal(pair.images, batch.images)
        rows = np.asarray(store.train.views.logits[batch.positions, pair.views], dtype=np.float32)
        assert torch.equal(pair.target.logits, torch.from_numpy(rows))
    assert kdstore.StoreLoader(store, batch_size=8, workers=1).__iter__().__next__().pair is None  # kd: one view
    code, text = _train(tmp_path / "v3", tmp_path / "r", "--loss", "mlkd", "--variant", "kd-cl-sr")
    assert code == 0 and "warning" not in text, text
    row = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[0])
    assert np.isfinite(row["train_loss"]) and row["train_kd"] > 0
    # a fixed lambda above MLKD's own 1:1 is warned of (its students collapsed at 0.9 on CIFAR-10)
    code, text = _train(tmp_path / "v3", tmp_path / "r9", "--loss", "mlkd", "--variant", "kd")
    assert code == 0 and "warning: --loss mlkd at --lam 0.9: MLKD weighs its CE 1:1" in text, text
    for store_dir, extra, needle in (
        (small_store, [], "--loss mlkd reads two stored views of every image: the store has no views"),
        (tmp_path / "v3", ["--view-mode", "clean"], "they are not replayed (--view-mode clean or --no-augment)"),
        (tmp_path / "v3", ["--tau", "2"], "--loss mlkd needs --tau > its spread (2), got --tau 2"),
    ):
        code, text = _train(store_dir, tmp_path / "bad", "--loss", "mlkd", *extra)
        assert code == 2 and len(text.splitlines()) == 1 and needle in text, text
    _cache_views(synthetic_folder, tmp_path / "v1", 1)
    code, text = _train(tmp_path / "v1", tmp_path / "bad", "--loss", "mlkd")
    assert code == 2 and "the store has 1 per image" in text, text


@pytest.mark.heavy  # several runs (keeps `make test` under 10 minutes)
def test_mlkd_from_the_store_equals_mlkd_with_the_online_teacher(digits_views_store, digits_teacher):
    """One batch of both views from the store and from the live teacher on the same pixels: the
    same images, targets equal to float16's rounding, and the same MLKD loss."""
    store = Store.open(digits_views_store)
    spec = TeacherSpec(checkpoint=str(digits_teacher / "checkpoint.pt"), input_size=int(store.attrs["input_size"]))
    teacher = load_teacher(spec, store.num_classes, int(store.attrs["image_size"]))
    model = for_device(teacher.model, torch.device("cpu")).eval()
    live = online_teacher(model, int(teacher.meta["input_size"]), torch.device("cpu"))
    options = dict(variant="kd-cl-sr", batch_size=64, workers=1, seed=3, loss="mlkd")
    offline = next(iter(kdstore.StoreLoader(store, **options)))
    online = next(iter(kdstore.StoreLoader(store, teacher=live, **options)))
    assert offline.pair is not None and online.pair is not None
    assert torch.equal(offline.images, online.images) and torch.equal(offline.pair.images, online.pair.images)
    for a, b in ((offline.target, online.target), (offline.pair.target, online.pair.target)):
        assert torch.allclose(a.logits, b.logits, rtol=2e-3, atol=2e-3)
    g = torch.Generator().manual_seed(0)
    student, second = (torch.randn(64, store.num_classes, generator=g) for _ in range(2))
    mlkd = kdstore.distill_loss("mlkd")
    a, b = mlkd(student, offline, pair_logits=second), mlkd(student, online, pair_logits=second)
    assert float(a.kd) == pytest.approx(float(b.kd), rel=1e-3) and float(a.loss) == pytest.approx(
        float(b.loss), rel=1e-3
    )
    with pytest.raises(kdstore.KdstoreError, match="needs pair_logits=model"):
        mlkd(student, offline)
