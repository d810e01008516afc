"""Students trained together (`sweep --concurrent`): each student's metrics, summary and
checkpoint equal its separate run's, bit for bit on the CPU; a kill mid-epoch resumes every
student to the same end; a diverging student stops alone; what cannot be trained together is
refused in one line."""

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from kdstore.cli.main import cli
from kdstore.errors import KdstoreError
from kdstore.loader.source import TrainData
from kdstore.models.build import build_model
from kdstore.models.checkpoints import load_checkpoint
from kdstore.report import sweep
from kdstore.report.sweep import SweepConfig
from kdstore.train import concurrent, footprint
from kdstore.train import loop as train
from kdstore.train.concurrent import check_together, fit_together
from kdstore.train.config import TrainConfig
from kdstore.train.epochs import TrainPass
from tests.helpers import student_config, untimed

STUDENTS = (("kd", 0), ("kd", 1), ("kd-cl-sr", 0))


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _same_run(a: Path, b: Path) -> None:
    """Every metric of every epoch equal (timings aside), and the same final weights."""
    ra, rb = _rows(a), _rows(b)
    assert len(ra) == len(rb) == 2
    for x, y in zip(ra, rb):
        assert untimed(x) == untimed(y)
    wa, wb = load_checkpoint(a / "checkpoint.pt")["state_dict"], load_checkpoint(b / "checkpoint.pt")["state_dict"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def separate(digits_store, tmp_path_factory) -> Path:
    """The three students trained one by one, as `kdstore train` trains them."""
    out = tmp_path_factory.mktemp("separate")
    for variant, seed in STUDENTS:
        train.run(student_config(out, digits_store, variant, seed))
    return out


def test_together_equals_separate_and_a_diverging_student_stops_alone(separate, digits_store, tmp_path):
    cfgs = [student_config(tmp_path, digits_store, v, s) for v, s in STUDENTS]
    wild = student_config(tmp_path / "wild", digits_store, "kd", 0, lr=1e6)  # its loss goes NaN in the first epoch
    summaries = fit_together(cfgs + [wild])
    for (variant, seed), summary in zip(STUDENTS, summaries):
        name = f"{variant}-s{seed}"
        _same_run(separate / name, tmp_path / name)
        alone = json.loads((separate / name / "summary.json").read_text())
        assert untimed(summary) == untimed(alone)
        meta = load_checkpoint(tmp_path / name / "checkpoint.pt")["meta"]
        plain, _ = build_model(meta["model"], meta["num_classes"], meta["input_size"])  # a plain timm model
        plain.load_state_dict(load_checkpoint(tmp_path / name / "checkpoint.pt")["state_dict"])
    assert summaries[-1] is None
    stopped = json.loads((Path(wild.out) / "stopped.json").read_text())
    assert stopped["epoch"] == 1 and "nan" in stopped["reason"].lower()
    assert not (Path(wild.out) / "summary.json").exists()


def test_a_sweep_killed_mid_epoch_resumes_every_student(separate, digits_store, tmp_path, monkeypatch):
    base = TrainConfig(out=str(tmp_path), store=str(digits_store), epochs=2, batch_size=128, progress=False)
    swept = SweepConfig(variants="kd,kd-cl-sr", seeds="0", concurrent="auto", base=base)
    real, calls = TrainPass.__call__, []

    def killed_mid_second_epoch(self, batch):
        calls.append(1)
        if len(calls) == 2 * 12 + 5:  # students in turn, 12 batches an epoch: mid-way through the first's epoch 2
            raise KeyboardInterrupt
        return real(self, batch)

    monkeypatch.setattr(TrainPass, "__call__", killed_mid_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        sweep.run(swept)
    assert all(len(_rows(tmp_path / name)) == 1 for name in ("kd-s0", "kd-cl-sr-s0"))  # epoch 1 kept
    calls.clear()
    sweep.run(swept)
    assert len(calls) == 2 * 12  # only the second epoch trained again
    for name in ("kd-s0", "kd-cl-sr-s0"):
        _same_run(separate / name, tmp_path / name)
    assert (tmp_path / "report" / "results.json").is_file()


def test_a_device_too_small_names_the_largest_number_that_fits(digits_store, tmp_path, monkeypatch):
    cfgs = [student_config(tmp_path, digits_store, "kd", s) for s in range(3)]
    per = footprint.student_bytes(cfgs[0], concurrent.data_from_store(concurrent.Store.open(str(digits_store))))
    monkeypatch.setattr(footprint, "free_bytes", lambda device: int(2.5 * per / footprint.HEADROOM))
    monkeypatch.setattr(footprint, "holds", lambda *a: False)
    with pytest.raises(KdstoreError, match=r"--concurrent 3: too many students .* room for 2 .* pass --concurrent 2"):
        fit_together(cfgs)
    assert not any(Path(c.out).exists() for c in cfgs)  # refused before any run starts


def _data(image_size: int = 32) -> TrainData:
    return TrainData(
        train_beton=Path("-"), val_beton=Path("-"), num_classes=10, image_size=image_size, mean=(0.5,), std=(0.5,)
    )


def test_a_students_footprint_is_its_state_plus_what_autograd_saves(tmp_path):
    cfg = TrainConfig(out=str(tmp_path), student="cifar_resnet8", device="cpu", batch_size=16)
    model, _ = build_model("cifar_resnet8", 10, 32)
    params = sum(p.numel() * 4 for p in model.parameters())
    at = {b: footprint.student_bytes(TrainConfig(**{**cfg.__dict__, "batch_size": b}), _data()) for b in (16, 32, 64)}
    # activations grow with the batch, by the same bytes per sample (BatchNorm's per-channel statistics do not)
    assert at[64] - at[32] == 2 * (at[32] - at[16]) > 0
    assert at[16] > 3 * params
    images = torch.zeros(16, 3, 32, 32)
    assert footprint.saved_bytes(model, images, torch.device("cpu"), False) >= images.numel() * 4  # the input is saved


def test_students_that_cannot_train_together_are_refused_naming_the_first_mismatch(tmp_path):
    a = TrainConfig(out=str(tmp_path / "a"), store="s", student="cifar_resnet8", batch_size=64)
    with pytest.raises(KdstoreError, match=r"differ in student \('cifar_resnet8' .*'cifar_resnet20'"):
        check_together([a, TrainConfig(out=str(tmp_path / "b"), store="s", student="cifar_resnet20", batch_size=64)])
    with pytest.raises(KdstoreError, match=r"differ in batch_size \(64 .*, 32 "):
        check_together([a, TrainConfig(out=str(tmp_path / "b"), store="s", student="cifar_resnet8", batch_size=32)])
    with pytest.raises(KdstoreError, match="same run directory"):
        check_together([a, a])


@pytest.mark.parametrize("value", ["0", "-2", "many"])
def test_concurrent_must_be_a_positive_number_or_auto(tmp_path, value):
    result = CliRunner().invoke(cli, ["sweep", "--out", str(tmp_path / "s"), "--concurrent", value, "--no-progress"])
    text = result.output.strip()
    assert result.exit_code != 0 and len(text.splitlines()) == 1 and "Traceback" not in text, text
    assert f"--concurrent must be a positive number of students or auto, got '{value}'" in text


def test_a_single_run_whose_loss_diverges_stops_with_one_line(digits_store, tmp_path):
    from kdstore.errors import Diverged

    cfg = student_config(tmp_path, digits_store, "kd", 0, lr=1e6)
    with pytest.raises(Diverged, match=r"kd seed 0: the training loss is nan at epoch 1; stopped"):
        train.run(cfg)
    out = Path(cfg.out)
    assert json.loads((out / "stopped.json").read_text())["epoch"] == 1
    assert not (out / "summary.json").exists() and (out / "metrics.jsonl").read_text() == ""


# Fields of a row that do not depend on the student's weights: the same in a stacked run
BY_THE_STORE = ("epoch", "lr", "lam", "lam_mean", "lam_min", "lam_max", "pace", "scores")


def test_stacked_students_write_the_runs_of_separate_students(separate, digits_store, tmp_path):
    """`--stack on` on the CPU: the same run directories, the same order, lambda and schedule, and
    metrics that agree to the tolerance float32 rounding leaves after early training amplifies it
    (tests/train/test_stacked.py checks the stack's arithmetic itself, in float64, to 1e-12)."""
    pair = STUDENTS[1:]  # two variants, two seeds: the suite's time is short
    fit_together([student_config(tmp_path, digits_store, v, s) for v, s in pair], stack="on")
    for variant, seed in pair:
        name = f"{variant}-s{seed}"
        alone, stacked = _rows(separate / name), _rows(tmp_path / name)
        assert len(stacked) == 2 and all(r.pop("stacked") == 2 for r in stacked)
        assert stacked[0].keys() == alone[0].keys()
        for a, b in zip(alone, stacked):
            assert {k: a.get(k) for k in BY_THE_STORE} == {k: b.get(k) for k in BY_THE_STORE}
            for k in ("train_loss", "train_ce", "train_kd"):  # measured: within 0.2%
                assert b[k] == pytest.approx(a[k], rel=1e-2), (name, k)
            for k in ("val_loss", "kl_val"):  # measured: within 1.1%
                assert b[k] == pytest.approx(a[k], rel=5e-2), (name, k)
            for k in ("train_acc", "val_acc", "agree_val"):
                assert b[k] == pytest.approx(a[k], abs=0.03), (name, k)
        meta = load_checkpoint(tmp_path / name / "checkpoint.pt")["meta"]
        plain, _ = build_model(meta["model"], meta["num_classes"], meta["input_size"])
        plain.load_state_dict(load_checkpoint(tmp_path / name / "checkpoint.pt")["state_dict"])
        assert (tmp_path / name / "summary.json").is_file()
