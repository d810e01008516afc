"""The distillation losses in training: `train --loss` end to end from a store, a step from the
store equal to a step with the online teacher for dkd (the store's float16 targets within their
rounding), a store that cannot serve a loss refused in one line before training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import kdstore
from kdstore.cli.main import cli
from kdstore.loader.teacher_targets import online_teacher
from kdstore.models.teachers import TeacherSpec, load_teacher
from kdstore.runtime.precision import for_device
from kdstore.store.store import Store

pytestmark = pytest.mark.slow


def _train(store, out, *extra) -> tuple[int, str]:
    args = ["train", "--store", store, "--out", out, "--epochs", "1", "--batch-size", "8", "--workers", "1"]
    result = CliRunner().invoke(cli, [str(a) for a in [*args, "--no-progress", *extra]])
    return result.exit_code, result.output.strip()


@pytest.mark.parametrize("loss", ["dkd", "dist", "nkd", "wttm"])
def test_train_with_each_loss(small_store, tmp_path, loss):
    code, text = _train(small_store, tmp_path / "r", "--variant", "kd-cl-sr", "--loss", loss)
    assert code == 0, text
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["loss"] == loss and config["loss_options"] == ""
    row = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[0])
    assert np.isfinite(row["train_loss"]) and row["train_kd"] > 0


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
    code, text = _train(out, tmp_path / "r2", "--loss", "dkd", "--views", "clean")
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
