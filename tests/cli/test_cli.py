"""Bad input: one line naming the problem, a non-zero exit, no traceback, nothing half-written."""

import os
import shutil
import subprocess
import sys
import urllib.error

import h5py
import pytest
from click.testing import CliRunner

from kdstore.cli.main import cli
from kdstore.data import datasets
from kdstore.errors import KdstoreError
from tests.helpers import reseal


def _fails(args, *needles):
    result = CliRunner().invoke(cli, args)
    text = result.output.strip()
    assert result.exit_code == 2, text
    assert "Traceback" not in text and len(text.splitlines()) == 1, text
    assert text.startswith("error: ")
    for needle in needles:
        assert needle in text, text
    return text


@pytest.fixture()
def store_copy(digits_store, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(digits_store, dst)
    return dst


def test_unknown_variant_lists_known(digits_store, tmp_path):
    _fails(
        ["train", "--store", str(digits_store), "--variant", "kd-xx", "--out", str(tmp_path / "r")],
        "unknown variant 'kd-xx'",
        "kd-cl-sr",
        "kd-cl'",
    )
    assert not (tmp_path / "r").exists()


def test_unknown_model(digits_store, tmp_path):
    _fails(
        [
            "train",
            "--store",
            str(digits_store),
            "--student",
            "resnet_999",
            "--out",
            str(tmp_path / "r"),
            "--epochs",
            "1",
        ],
        "unknown model 'resnet_999'",
    )


def test_unknown_dataset(tmp_path):
    _fails(
        [
            "cache",
            "--allow-untrained",
            "--dataset",
            "mnist9",
            "--teacher",
            "cifar_resnet8",
            "--out",
            str(tmp_path / "s"),
        ],
        "unknown dataset 'mnist9'",
        "imagefolder:PATH",
    )
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--tau", "0"], "--tau must be > 0"),
        (["--tau", "-1"], "--tau must be > 0"),
        (["--lam", "1.5"], "--lam must be in [0, 1]"),
        (["--lam", "-0.1"], "--lam must be in [0, 1]"),
        (["--epochs", "-3"], "--epochs must be >= 1"),
        (["--batch-size", "0"], "--batch-size must be >= 2"),
        (["--lr", "0"], "--lr must be > 0"),
        (["--pacing", "cubic"], "unknown --pacing 'cubic'"),
        (["--pacing", "linear"], "needs a variant with a fixed order"),
        (["--variant", "kd-cl", "--pacing", "linear", "--pacing-a", "0"], "--pacing-a must be in (0, 1]"),
        (["--variant", "kd-cl", "--scorer", "student", "--rescore-every", "0"], "--rescore-every must be >= 1"),
        (["--variant", "kd-cl", "--view-mode", "replay"], "the store has no views"),
    ],
)
def test_absurd_values(args, needle, digits_store, tmp_path):
    _fails(["train", "--store", str(digits_store), "--out", str(tmp_path / "r"), *args], needle)
    assert not (tmp_path / "r").exists()


def test_missing_and_incomplete_store(store_copy, tmp_path):
    _fails(["train", "--store", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")], "does not exist")
    (store_copy / "MANIFEST.json").unlink()
    _fails(["train", "--store", str(store_copy), "--out", str(tmp_path / "r")], "incomplete")
    _fails(["inspect", str(store_copy)], "incomplete")


def test_store_with_wrong_class_count(store_copy, tmp_path):
    with h5py.File(store_copy / "teacher.h5", "a") as f:
        f.attrs["num_classes"] = 9
        f.attrs["class_names"] = [str(i) for i in range(9)]
    _fails(
        ["train", "--store", str(store_copy), "--out", str(tmp_path / "r")],
        "teacher.h5 differs from the one its MANIFEST.json records",
    )
    reseal(store_copy)
    _fails(
        ["train", "--store", str(store_copy), "--out", str(tmp_path / "r")],
        "logits have shape (1437, 10), expected (1437, 9)",
    )


def test_store_with_wrong_sample_count(store_copy, tmp_path):
    shutil.copy(store_copy / "train.beton", store_copy / "val.beton")
    _fails(
        ["train", "--store", str(store_copy), "--out", str(tmp_path / "r")],
        "val has 360 samples but val.beton has 1437",
    )


def test_nan_logits_refused(store_copy, tmp_path):
    with h5py.File(store_copy / "teacher.h5", "a") as f:
        f["train/logits"][3, 2] = float("nan")
    _fails(["inspect", str(store_copy)], "teacher.h5 differs from the one its MANIFEST.json records")
    reseal(store_copy)  # a faulty writer's store: verify reads every value
    result = CliRunner().invoke(cli, ["verify", str(store_copy)])
    assert result.exit_code == 1 and "NaN or inf" in result.output


def test_checkpoint_class_count_must_match(digits_teacher, synthetic_folder, tmp_path):
    _fails(
        [
            "cache",
            "--dataset",
            f"imagefolder:{synthetic_folder}",
            "--checkpoint",
            str(digits_teacher / "checkpoint.pt"),
            "--out",
            str(tmp_path / "s"),
        ],
        "has 10 classes but the dataset has 3",
    )
    assert not (tmp_path / "s").exists()


def test_inspect_and_verify(digits_store):
    result = CliRunner().invoke(cli, ["inspect", str(digits_store)])
    assert result.exit_code == 0 and "cifar_resnet8" in result.output and "confidence" in result.output
    result = CliRunner().invoke(cli, ["verify", str(digits_store)])
    assert result.exit_code == 0 and "match" in result.output


def test_cifar_offline_message(monkeypatch, tmp_path):
    import torchvision

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(KdstoreError, match=r"cifar10 is not in .* could not be downloaded"):
        datasets.load_dataset("cifar10", tmp_path)
    _fails(
        [
            "cache",
            "--allow-untrained",
            "--dataset",
            "cifar10",
            "--teacher",
            "cifar_resnet8",
            "--data-root",
            str(tmp_path),
            "--out",
            str(tmp_path / "s"),
        ],
        "could not be downloaded",
    )


@pytest.mark.slow
def test_installed_entry_point_prints_one_line(tmp_path):
    exe = shutil.which("kdstore", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe is not None, "the kdstore script is not installed beside this Python"
    proc = subprocess.run(
        [exe, "train", "--store", str(tmp_path / "none"), "--out", str(tmp_path / "r")], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: store {tmp_path / 'none'} does not exist (make one with `kdstore cache`)"
    ]
    for alias in ("distill-cache", "distill-train"):
        assert shutil.which(alias, path=str(__import__("pathlib").Path(sys.executable).parent))


def test_merge_and_views_bad_input(digits_store, tmp_path):
    _fails(["merge", str(digits_store), "--out", str(tmp_path / "m")], "at least two stores")
    _fails(
        ["merge", str(digits_store), str(digits_store), "--out", str(tmp_path / "m"), "--confidence", "7"],
        "--confidence must be",
    )
    _fails(
        [
            "cache",
            "--allow-untrained",
            "--dataset",
            "digits",
            "--teacher",
            "cifar_resnet8",
            "--topk",
            "3",
            "--out",
            str(tmp_path / "s"),
        ],
        "--topk applies to stored views",
    )
    _fails(
        [
            "cache",
            "--allow-untrained",
            "--dataset",
            "digits",
            "--teacher",
            "cifar_resnet8",
            "--views",
            "2",
            "--topk",
            "10",
            "--out",
            str(tmp_path / "s"),
        ],
        "--topk 10 must be below the 10 classes",
    )
    assert not (tmp_path / "m").exists() and not (tmp_path / "s").exists() and not (tmp_path / ".s.partial").exists()


def test_train_reruns_from_its_config_json(digits_store, tmp_path):
    import json

    from kdstore.options import differing

    first, second = tmp_path / "a", tmp_path / "b"
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--store",
            str(digits_store),
            "--variant",
            "kd-cl-sr",
            "--epochs",
            "1",
            "--batch-size",
            "512",
            "--lr",
            "0.07",
            "--momentum",
            "0.8",
            "--no-progress",
            "--out",
            str(first),
        ],
    )
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(
        cli, ["train", "--config", str(first / "config.json"), "--seed", "3", "--out", str(second)]
    )
    assert result.exit_code == 0, result.output
    a, b = (json.loads((d / "config.json").read_text()) for d in (first, second))
    assert differing(a, b) == ["out", "seed"] and b["lr"] == 0.07 and b["momentum"] == 0.8 and b["progress"] is False
    _fails(["train", "--config", str(tmp_path / "nope.json"), "--out", str(tmp_path / "c")], "--config")


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('{"epoch": 3}', "unknown option(s) epoch for TrainConfig (did you mean epochs?)"),
        ('{"epochs": "3"}', "epochs must be int, got str '3'"),
        ('{"lr": true}', "lr must be float, got bool True"),
        ("[1, 2]", "is not a JSON object of train's options"),
    ],
)
def test_a_config_file_with_a_misspelled_or_mistyped_key_fails_in_one_line(tmp_path, content, needle):
    config = tmp_path / "config.json"
    config.write_text(content)
    _fails(["train", "--config", str(config), "--out", str(tmp_path / "r"), "--store", str(tmp_path)], needle)


def _cli(*args, timeout=300):
    exe = os.path.join(os.path.dirname(sys.executable), "kdstore")
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def test_add_views_without_weights_names_the_stores_teacher(small_store):
    text = _fails(
        ["cache", "--extend", str(small_store), "--views", "4"],
        "the store's teacher is cifar_resnet8; give the checkpoint it was cached from with --checkpoint (sha256 ",
    )
    assert "None" not in text


@pytest.mark.slow
def test_a_refused_pickle_checkpoint_leaks_no_warning(tmp_path):
    import argparse

    import torch

    path = tmp_path / "pickle.pt"
    torch.save({"state_dict": {}, "meta": argparse.Namespace(model="cifar_resnet8")}, path, pickle_protocol=4)
    proc = _cli("cache", "--dataset", "digits", "--checkpoint", path, "--out", tmp_path / "s")
    err = proc.stderr.strip()
    assert proc.returncode == 2, err
    assert err.splitlines() == [err.splitlines()[0]] and "cannot be loaded safely (weights_only=True)" in err, err


def test_teacher_log_lines_say_teacher(small_store, tmp_path):
    from kdstore.store.format import Store
    from kdstore.train import loop as train
    from kdstore.train.config import TrainConfig

    data = train.data_from_store(Store.open(small_store))
    cfg = TrainConfig(
        out=str(tmp_path / "t"),
        store=str(small_store),
        variant="unguided",
        epochs=1,
        batch_size=10,
        workers=1,
        progress=False,
        tensorboard=False,
    )
    row = {
        "epoch": 1,
        "train_loss": 1.0,
        "train_ce": 1.0,
        "train_kd": 0.0,
        "train_acc": 0.5,
        "val_acc": 0.5,
        "val_loss": 1.0,
        "lam_mean": 0.0,
        "lr": 0.1,
        "images_per_s": 100.0,
        "seconds": 1.0,
    }
    for kind, label in (("teacher", "teacher"), ("student", "unguided")):
        run = train.build_run(cfg, data, "cifar_resnet8", kind)
        assert train.epoch_line(run, row, 1.0, 1).startswith(f"{label} seed 0 epoch 1/1: loss")
