"""Runs left unattended (overnight): no silent random teacher, live unwrapped
log lines, sweeps that never keep a stale run, runs that record how to reproduce them,
byte-identical caches, TensorBoard event files, eval, defaults for --out and --store, help."""

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from kdstore.cache import write as cache
from kdstore.cache.config import CacheConfig
from kdstore.cli.main import cli
from kdstore.errors import KdstoreError
from kdstore.models import build as models
from kdstore.report import sweep
from kdstore.report.sweep import SweepConfig
from kdstore.store.format import Store
from kdstore.store.publish import default_store
from kdstore.train import eval_checkpoint as evaluation
from kdstore.train import loop as train
from kdstore.train.config import TrainConfig
from kdstore.train.eval_checkpoint import EvalConfig

pytestmark = pytest.mark.slow  # caches, trains or kills processes: the full suite only

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "80"}


def _one_line_error(result, *needles):
    text = result.output.strip()
    assert result.exit_code == 2 and len(text.splitlines()) == 1 and "Traceback" not in text, text
    for needle in needles:
        assert needle in text, text


def test_a_teacher_without_weights_is_refused_before_anything_is_written(tmp_path):
    result = CliRunner().invoke(
        cli, ["cache", "--dataset", "digits", "--teacher", "cifar_resnet8", "--out", str(tmp_path / "s")]
    )
    _one_line_error(
        result,
        "no trained weights",
        "kdstore teacher --model cifar_resnet8 --dataset digits",
        "--checkpoint",
        "--allow-untrained",
    )
    assert list(tmp_path.iterdir()) == []


def test_an_untrained_teacher_is_allowed_on_request_and_warned_about(tmp_path):
    out = tmp_path / "s"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kdstore",
            "cache",
            "--allow-untrained",
            "--dataset",
            "digits",
            "--teacher",
            "cifar_resnet8",
            "--out",
            str(out),
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "warning: the teacher's val acc" in proc.stderr and "near chance (10.00% for 10 classes)" in proc.stderr
    inspected = CliRunner().invoke(cli, ["inspect", str(out)])
    assert inspected.exit_code == 0 and "near chance" in inspected.output


def test_a_trained_teacher_is_not_warned_about(digits_store):
    inspected = CliRunner().invoke(cli, ["inspect", str(digits_store)])
    assert inspected.exit_code == 0 and "near chance" not in inspected.output


@pytest.mark.heavy  # a subprocess training 3 epochs (27 s): make test stays under its 10 minutes
def test_epoch_lines_are_live_whole_and_flushed_in_a_pipe(digits_store, tmp_path):
    """Piped (as a batch job's log is), each epoch's line appears when the epoch ends, on one
    line however long, with --no-progress too."""
    args = [
        sys.executable,
        "-m",
        "kdstore",
        "train",
        "--store",
        str(digits_store),
        "--out",
        str(tmp_path / "deeply" / "nested" / "run-directory"),
        "--variant",
        "kd-cl-sr",
        "--epochs",
        "3",
        "--batch-size",
        "128",
        "--no-progress",
    ]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=ENV)
    lines = []
    for line in proc.stderr:
        lines.append(line.rstrip("\n"))
        if "epoch 1/3:" in line:
            still_running = proc.poll() is None  # epochs 2 and 3 are still to come
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=300) == 0, rest
    lines += rest.splitlines()
    assert still_running, "the first epoch's line arrived only after the run ended"
    epochs = [line for line in lines if " epoch " in line]
    assert len(epochs) == 3 and all(line.startswith("kd-cl-sr seed 0 epoch ") for line in epochs), lines
    assert all(
        len(line) > 80 and "val acc" in line and "img/s" in line and "ETA" in line for line in epochs
    )  # never wrapped at 80 columns
    assert lines[-1].endswith(f"wrote {tmp_path / 'deeply' / 'nested' / 'run-directory'}")


@pytest.fixture(scope="module")
def one_run(digits_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "kd"
    train.run(
        TrainConfig(out=str(out), store=str(digits_store), variant="kd-cl-sr", epochs=2, batch_size=256, progress=False)
    )
    return out


def test_config_json_records_versions_command_absolute_store_and_real_amp(one_run, digits_store):
    config = json.loads((one_run / "config.json").read_text())
    assert set(config["versions"]) >= {"python", "kdstore", "torch", "timm", "ffcv", "numpy", "h5py"}
    assert config["versions"]["torch"] and config["versions"]["ffcv"]
    assert isinstance(config["command"], str) and config["command"]
    assert config["store"] == str(Path(digits_store).resolve()) and Path(config["store"]).is_absolute()
    assert config["amp"] is False  # CPU: no mixed precision ran, whatever was asked


def test_tensorboard_event_files_hold_the_logged_scalars(one_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert list(one_run.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(one_run))
    events.Reload()
    rows = [json.loads(line) for line in (one_run / "metrics.jsonl").read_text().splitlines()]
    tags = events.Tags()["scalars"]
    assert {
        "train/loss",
        "train/kd",
        "val/acc",
        "val/loss",
        "lambda/mean",
        "opt/lr",
        "speed/images_per_s",
        "batch/lambda",
    } <= set(tags)
    for tag, key in (("val/acc", "val_acc"), ("train/loss", "train_loss"), ("opt/lr", "lr")):
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in logged] == [r["epoch"] for r in rows]
        assert [v for _, v in logged] == pytest.approx([r[key] for r in rows], rel=1e-6)
    per_batch = [e.value for e in events.Scalars("batch/lambda")]
    assert per_batch == pytest.approx([lam for r in rows for lam in r["lam"]], rel=1e-6)


def test_eval_matches_the_runs_own_validation_accuracy(one_run, digits_store, digits_teacher, tmp_path):
    student = evaluation.run(
        EvalConfig(
            checkpoint=str(one_run / "checkpoint.pt"),
            store=str(digits_store),
            logits=str(tmp_path / "l.npz"),
            progress=False,
        )
    )
    last = json.loads((one_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert student["accuracy"] == pytest.approx(last["val_acc"]) and student["loss"] == pytest.approx(
        last["val_loss"], rel=1e-3
    )
    with np.load(tmp_path / "l.npz") as z:
        assert z["logits"].shape == (360, 10) and z["logits"].dtype == np.float32 and len(z["labels"]) == 360
        assert (z["logits"].argmax(1) == z["labels"]).mean() == pytest.approx(student["accuracy"])
    # A teacher on the dataset itself (no store): the accuracy its own run measured.
    result = CliRunner().invoke(
        cli, ["eval", str(digits_teacher / "checkpoint.pt"), "--dataset", "digits", "--json", str(tmp_path / "t.json")]
    )
    assert result.exit_code == 0, result.output
    teacher_last = json.loads((digits_teacher / "metrics.jsonl").read_text().splitlines()[-1])
    assert json.loads((tmp_path / "t.json").read_text())["accuracy"] == pytest.approx(teacher_last["val_acc"])
    bad = CliRunner().invoke(cli, ["eval", str(digits_teacher / "checkpoint.pt")])
    _one_line_error(bad, "exactly one of --dataset and --store")


def test_identical_caches_are_byte_identical_with_one_writer_and_same_identity_always(digits_teacher, tmp_path):
    ckpt = str(digits_teacher / "checkpoint.pt")
    for name, workers in (("a", 1), ("b", 1), ("c", 2)):
        cache.run(
            CacheConfig(
                dataset="digits",
                out=str(tmp_path / name),
                checkpoint=ckpt,
                workers=workers,
                batch_size=400,
                progress=False,
            )
        )
    for f in ("teacher.h5", "train.beton", "val.beton"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert (tmp_path / "a" / "teacher.h5").read_bytes() == (tmp_path / "c" / "teacher.h5").read_bytes()
    assert len({Store.open(tmp_path / n).identity() for n in "abc"}) == 1


def test_default_out_and_default_store(tmp_path, monkeypatch, digits_store):
    assert CacheConfig(dataset="digits", teacher="cifar_resnet8").out_path == Path("stores/digits-cifar_resnet8")
    assert CacheConfig(
        dataset="imagefolder:/data/flowers", checkpoint="runs/big-teacher/checkpoint.pt"
    ).out_path == Path("stores/flowers-big-teacher")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KdstoreError, match="no store under stores/"):
        default_store()
    (tmp_path / "stores").mkdir()
    (tmp_path / "stores" / "digits").symlink_to(digits_store)
    assert default_store() == Path("stores/digits")
    (tmp_path / "stores" / "other").symlink_to(digits_store)
    result = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "r"), "--epochs", "1"])
    _one_line_error(result, "2 stores under stores/", "stores/digits", "stores/other")


def test_offline_pretrained_fails_at_once_and_uses_cached_weights(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "_online", lambda host, timeout=3.0: False)
    monkeypatch.setattr(models.huggingface_hub, "try_to_load_from_cache", lambda repo, filename: None)
    monkeypatch.setattr(models.torch.hub, "get_dir", lambda: str(tmp_path))
    t0 = time.perf_counter()
    with pytest.raises(KdstoreError, match="no network to fetch pretrained weights for resnet18 .* --pretrained-file"):
        models.build_model("resnet18", 10, 32, pretrained=True)
    assert time.perf_counter() - t0 < 5
    cached = tmp_path / "model.safetensors"
    monkeypatch.setattr(
        models.huggingface_hub,
        "try_to_load_from_cache",
        lambda repo, filename: str(cached) if filename == "model.safetensors" else None,
    )
    assert models.offline_weights("resnet18") == str(cached)


def test_stale_sweep_runs_are_refused_or_redone_never_kept(digits_store, tmp_path):
    out = tmp_path / "sweep"
    base = TrainConfig(
        out=str(out), store=str(digits_store), epochs=1, batch_size=256, progress=False, tensorboard=False
    )
    sweep.run(SweepConfig(variants="unguided", seeds="0", base=base))
    first = (out / "unguided-s0" / "metrics.jsonl").read_text()
    with pytest.raises(
        KdstoreError, match="unguided-s0 holds a finished run made with different epochs, lr; pass --overwrite"
    ):
        sweep.run(SweepConfig(variants="unguided", seeds="0", base=replace(base, epochs=2, lr=0.2)))
    assert (out / "unguided-s0" / "metrics.jsonl").read_text() == first
    sweep.run(SweepConfig(variants="unguided", seeds="0", base=base))  # the same options: kept as it is
    assert (out / "unguided-s0" / "metrics.jsonl").read_text() == first
    summary = sweep.run(
        SweepConfig(variants="unguided", seeds="0", overwrite=True, baseline="kd", base=replace(base, epochs=2))
    )
    assert len((out / "unguided-s0" / "metrics.jsonl").read_text().splitlines()) == 2
    assert summary["baseline"] == "kd"
    assert "paired by seed against `kd`" in (out / "report" / "results.md").read_text()


def test_sweep_help_describes_the_sweep(tmp_path):
    text = CliRunner().invoke(cli, ["sweep", "--help"]).output
    assert "--baseline" in text and "Redo finished runs" in text and "--seed " not in text and "--resume" not in text


def test_every_option_of_every_command_has_help():
    missing = [
        f"{name} {p.name}"
        for name, cmd in cli.commands.items()
        for p in cmd.params
        if getattr(p, "help", "x") in (None, "") and p.param_type_name == "option"
    ]
    assert missing == []
    assert "convergence.png" in CliRunner().invoke(cli, ["report", "--help"]).output
    assert "fletcher32" in CliRunner().invoke(cli, ["verify", "--help"]).output


def test_agreement_terms_by_hand():
    import torch

    from kdstore.train.agreement import agreement_terms

    teacher = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    student = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    agree, kl = agreement_terms(student, teacher)
    assert agree.tolist() == [True, False]

    def softmax(z):
        e = [np.exp(v) for v in z]
        return [v / sum(e) for v in e]

    for i in range(2):
        p, q = softmax(teacher[i].tolist()), softmax(student[i].tolist())
        assert kl[i].item() == pytest.approx(sum(a * np.log(a / b) for a, b in zip(p, q)), rel=1e-5)


def test_logged_agreement_is_the_definition_on_the_students_logits(one_run, digits_store, tmp_path):
    """agree_* and kl_* of the last epoch, recomputed from the final student's logits (kdstore eval)
    and the store's teacher logits, by definition in numpy."""
    last = json.loads((one_run / "metrics.jsonl").read_text().splitlines()[-1])
    store = Store.open(digits_store)
    for split, teacher in (("val", store.val.logits), ("train", store.train.logits)):
        evaluation.run(
            EvalConfig(
                checkpoint=str(one_run / "checkpoint.pt"),
                store=str(digits_store),
                split=split,
                logits=str(tmp_path / f"{split}.npz"),
                progress=False,
            )
        )
        with np.load(tmp_path / f"{split}.npz") as z:
            s = z["logits"].astype(np.float64)
        t = np.asarray(teacher, dtype=np.float64)
        log_ps = s - s.max(1, keepdims=True) - np.log(np.exp(s - s.max(1, keepdims=True)).sum(1, keepdims=True))
        log_pt = t - t.max(1, keepdims=True) - np.log(np.exp(t - t.max(1, keepdims=True)).sum(1, keepdims=True))
        assert last[f"agree_{split}"] == pytest.approx(np.mean(s.argmax(1) == t.argmax(1)))
        assert last[f"kl_{split}"] == pytest.approx(np.mean((np.exp(log_pt) * (log_pt - log_ps)).sum(1)), rel=1e-3)
    text = CliRunner().invoke(cli, ["report", str(one_run), "--out", str(tmp_path / "rep")]).output
    assert "agreement train / val" in text and (tmp_path / "rep" / "agreement.png").is_file()
