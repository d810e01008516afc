"""Reliability V: what a careless or hostile user found losing data or training silently wrong,
each through the CLI: --overwrite of what is not a store, int8 parts missing or damaged,
--add-views given another dtype. Each test failed before its fix."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from kdstore.cli.main import cli
from tests.helpers import reseal

UNTRAINED = ["cache", "--allow-untrained", "--teacher", "cifar_resnet8", "--batch-size", "200", "--no-progress"]


def _run(args) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output.strip()


def _refused(args, needle: str) -> str:
    code, text = _run(args)
    assert code != 0, text
    assert "Traceback" not in text and len(text.splitlines()) == 1, text
    assert needle.lower() in text.lower(), text
    return text


# --- 1. --overwrite replaces only a store -----------------------------------------------------


def test_cache_overwrite_refuses_a_directory_that_is_not_a_store(tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "precious.txt").write_text("years of work")
    _refused([*UNTRAINED, "--dataset", "digits", "--out", out, "--overwrite"], "is not a kdstore store")
    _refused([*UNTRAINED, "--dataset", "digits", "--out", out, "--overwrite", "--dry-run"], "precious.txt")
    _refused(["merge", tmp_path / "a", tmp_path / "b", "--out", out, "--overwrite"], "is not a kdstore store")
    assert (out / "precious.txt").read_text() == "years of work"
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    _refused([*UNTRAINED, "--dataset", "digits", "--out", a_file, "--overwrite"], "is a file")
    assert a_file.read_text() == "x"


def test_cache_refuses_an_out_that_holds_its_checkpoint_or_dataset(tmp_path):
    run = tmp_path / "teacher-run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"weights")
    (run / "MANIFEST.json").write_text("{}")  # even a directory that looks like a store
    args = ["cache", "--dataset", "digits", "--checkpoint", run / "checkpoint.pt", "--no-progress"]
    _refused([*args, "--out", run, "--overwrite"], "checkpoint.pt, which this command reads")
    folder = tmp_path / "folder"
    (folder / "train").mkdir(parents=True)
    _refused(
        [*UNTRAINED, "--dataset", f"imagefolder:{folder}", "--out", tmp_path, "--overwrite"], "which this command reads"
    )
    assert (run / "checkpoint.pt").read_bytes() == b"weights" and (folder / "train").is_dir()


def test_a_staging_directory_kdstore_did_not_make_is_left_alone(tmp_path):
    stage = tmp_path / ".s.partial"
    stage.mkdir()
    (stage / "notes.txt").write_text("mine")
    _refused([*UNTRAINED, "--dataset", "digits", "--out", tmp_path / "s"], "was not made by kdstore")
    assert (stage / "notes.txt").read_text() == "mine"


# --- 2. int8 scales are part of the schema; 6. --add-views keeps the dtype ---------------------


@pytest.fixture(scope="module")
def int8_store(tmp_path_factory) -> Path:
    """An int8 digits store with 1 view (random teacher weights: only the schema is tested)."""
    out = tmp_path_factory.mktemp("int8") / "s"
    code, text = _run([*UNTRAINED, "--dataset", "digits", "--out", out, "--logits-dtype", "int8", "--views", "1"])
    assert code == 0, text
    return out


def _damaged(src: Path, out: Path, edit) -> Path:
    shutil.copytree(src, out)
    with h5py.File(out / "teacher.h5", "r+") as f:
        edit(f)
    reseal(out)
    return out


@pytest.mark.parametrize("part", ["train/logits_scale", "train/views/logits_offset"])
def test_a_missing_int8_part_is_refused_by_verify_train_and_merge(int8_store, tmp_path, part):
    bad = _damaged(int8_store, tmp_path / "bad", lambda f: f.__delitem__(part))
    _refused(["verify", bad], f"{part} is missing")
    _refused(["train", "--store", bad, "--out", tmp_path / "run", "--epochs", "1", "--no-progress"], "is missing")
    _refused(["inspect", bad], "is missing")
    _refused(["merge", bad, int8_store, "--out", tmp_path / "m"], "is missing")
    assert not (tmp_path / "m").exists() and not (tmp_path / "run" / "summary.json").exists()


@pytest.mark.parametrize("value", [np.nan, -1.0, np.inf, 3e38])
def test_bad_scales_are_refused_on_open_for_training_and_inspect(int8_store, tmp_path, value):
    def edit(f):
        scale = f["train/logits_scale"][()]
        scale[5] = value
        f["train/logits_scale"][...] = scale

    bad = _damaged(int8_store, tmp_path / "bad", edit)
    needle = "train/logits_scale or train/logits_offset hold NaN, inf or negative"
    _refused(["train", "--store", bad, "--out", tmp_path / "run", "--epochs", "1", "--no-progress"], needle)
    _refused(["inspect", bad], needle)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # verify's overflow checks print none
        code, text = _run(["verify", bad])
    assert code != 0 and needle in text, text


def test_add_views_refuses_another_logits_dtype(int8_store, tmp_path):
    copy = tmp_path / "s"
    shutil.copytree(int8_store, copy)
    args = ["cache", "--add-views", copy, "--views", "2", "--allow-untrained", "--no-progress"]
    _refused([*args, "--logits-dtype", "float16"], "--logits-dtype float16 (the store has int8)")
    assert json.loads((copy / "MANIFEST.json").read_text()) == json.loads((int8_store / "MANIFEST.json").read_text())
    assert not os.path.exists(tmp_path / ".s.partial")
