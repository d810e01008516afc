"""Reliability V: what a careless or hostile user found losing data or training silently wrong,
each through the CLI: --overwrite of what is not a store, int8 parts missing or damaged,
--extend given another dtype. Each test failed before its fix."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from kdstore.cache import estimate as estimate_mod
from kdstore.cache import write as cache_write
from kdstore.cli.main import cli
from kdstore.passes import inference
from kdstore.store.verification import verify as verify_store
from tests.helpers import reseal

pytestmark = pytest.mark.slow  # caches, trains, mounts small disks and runs scripts: the full suite only

UNTRAINED = ["cache", "--allow-untrained", "--teacher", "cifar_resnet8", "--batch-size", "200", "--no-progress"]


def _run(args) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output.strip()


def _refused(args, needle: str, after_estimate: bool = False) -> str:
    """A non-zero exit with one line naming the problem (after the estimate's table, if it was
    printed), and no traceback; returns that line."""
    code, text = _run(args)
    assert code != 0 and "Traceback" not in text, text
    lines = text.splitlines()
    assert len(lines) == 1 or (after_estimate and lines[0].startswith("estimate:")), text
    assert lines[-1].startswith("error: ") and needle.lower() in lines[-1].lower(), text
    return lines[-1]


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


# --- 2. int8 scales are part of the schema; 6. --extend keeps the dtype ---------------------


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
    code, text = _run(["verify", bad])
    assert code != 0 and text.count("\n") == 0 and f"{part} is missing" in text, text
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
    args = ["cache", "--extend", copy, "--views", "2", "--allow-untrained", "--no-progress"]
    _refused([*args, "--logits-dtype", "float16"], "--logits-dtype float16 (the store has int8)")
    assert json.loads((copy / "MANIFEST.json").read_text()) == json.loads((int8_store / "MANIFEST.json").read_text())
    assert not os.path.exists(tmp_path / ".s.partial")


# --- 3, 4. a resume continues from what it can check, and redoes what it cannot ---------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """A digits cache of the untrained teacher, uninterrupted."""
    out = tmp_path_factory.mktemp("reference") / "s"
    code, text = _run([*UNTRAINED, "--dataset", "digits", "--out", out])
    assert code == 0, text
    return out


@pytest.fixture(scope="module")
def killed_before_h5(tmp_path_factory) -> Path:
    """The staging directory of the same cache, killed (Ctrl-C) once its passes were flushed."""
    root = tmp_path_factory.mktemp("killed")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cache_write, "_write_h5", _interrupt)
        code, text = _run([*UNTRAINED, "--dataset", "digits", "--out", root / "s"])
    assert code != 0 and "rerun with --resume" in text, text
    return root / ".s.partial"


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def _resume(partial: Path, tmp_path: Path) -> tuple[int, str, Path]:
    shutil.copytree(partial, tmp_path / ".s.partial")
    code, text = _run([*UNTRAINED, "--dataset", "digits", "--out", tmp_path / "s", "--resume"])
    return code, text, tmp_path / "s"


def _identity(store: Path) -> str:
    from kdstore.store.format import Store

    assert verify_store(store) == []
    return Store.open(store).identity()


def test_a_cache_killed_after_teacher_h5_resumes_by_publishing_it(reference, tmp_path):
    stage = tmp_path / "k" / ".s.partial"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cache_write, "_publish", _interrupt)
        code, text = _run([*UNTRAINED, "--dataset", "digits", "--out", stage.parent / "s"])
    assert code != 0 and "rerun with --resume to continue" in text and (stage / "teacher.h5").is_file(), text
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cache_write, "_score", _interrupt)  # the passes are not run again
        code, text, store = _resume(stage, tmp_path)
    assert code == 0 and "teacher.h5 in" in text and "is written and intact; publishing it" in text, text
    assert _identity(store) == _identity(reference)
    assert not (tmp_path / ".s.partial").exists() and not (store / ".kdstore-staging").exists()


def test_a_damaged_beton_in_a_partial_cache_is_written_again(killed_before_h5, reference, tmp_path):
    damaged = tmp_path / "d"
    shutil.copytree(killed_before_h5, damaged)
    data = bytearray((damaged / "train.beton").read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # pixels, in the middle of the data pages
    (damaged / "train.beton").write_bytes(bytes(data))
    code, text, store = _resume(damaged, tmp_path)
    assert code == 0 and "train.beton in the partial cache differs from the sha256 recorded" in text, text
    assert _identity(store) == _identity(reference)


def test_a_flipped_bit_in_a_chunk_is_scored_again(killed_before_h5, reference, tmp_path):
    damaged = tmp_path / "d"
    shutil.copytree(killed_before_h5, damaged)
    (chunk,) = (damaged / ".kdstore-staging").glob("chunks-train-*/000000.npz")
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x10
    chunk.write_bytes(bytes(data))
    code, text, store = _resume(damaged, tmp_path)
    assert code == 0 and "chunk 000000.npz of chunks-train-r0of1 differs from the sha256" in text, text
    assert _identity(store) == _identity(reference)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "\xff\xfe"])
def test_a_corrupt_cache_state_is_one_line(killed_before_h5, tmp_path, content):
    damaged = tmp_path / "d"
    shutil.copytree(killed_before_h5, damaged)
    (damaged / ".kdstore-staging" / "cache-state.json").write_text(content, encoding="latin-1")
    shutil.copytree(damaged, tmp_path / ".s.partial")
    _refused([*UNTRAINED, "--dataset", "digits", "--out", tmp_path / "s", "--resume"], "cache-state.json")
    assert (tmp_path / ".s.partial" / "train.beton").is_file()  # the partial is kept


@pytest.mark.heavy
def test_a_resume_that_cannot_continue_says_it_starts_again(killed_before_h5, tmp_path):
    damaged = tmp_path / "d"
    shutil.copytree(killed_before_h5, damaged)
    (damaged / ".kdstore-staging" / "cache-state.json").unlink()
    code, text, _ = _resume(damaged, tmp_path)
    assert code == 0 and "no record of its options" in text and "starting from the beginning" in text, text


# --- 5. a disk filled during the views pass keeps the partial, names the file ------------------


@pytest.mark.heavy
def test_a_disk_filled_during_the_views_pass_keeps_the_partial(tmp_path, monkeypatch):
    disk = tmp_path / "small"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20M", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("this machine does not let the tests mount a small tmpfs")
    try:
        monkeypatch.setattr(estimate_mod, "free_mib", lambda path: 1e6)  # the writer meets the full disk itself
        save, filled = inference._save_chunk, []

        def fill_then_save(chunk_dir, index, chunk):
            if chunk_dir.name.startswith("chunks-views") and not filled:
                filled.append(_fill(disk / "filler"))
            save(chunk_dir, index, chunk)

        monkeypatch.setattr(inference, "_save_chunk", fill_then_save)
        args = [*UNTRAINED, "--dataset", "digits", "--views", "2", "--out", disk / "s"]
        text = _refused(args, "000000.npz: could not be written (the disk is full", after_estimate=True)
        assert "the partial cache is kept in" in text and "rerun with --resume" in text, text
        assert (disk / ".s.partial" / "train.beton").is_file() and not (disk / "s").exists()
        (disk / "filler").unlink()
        code, text = _run([*args, "--resume"])
        assert code == 0 and "resuming the partial cache" in text, text
        assert verify_store(disk / "s") == []
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _fill(path: Path) -> None:
    """A real (not sparse) file filling the disk."""
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
        except OSError:
            pass


# --- 8, 9. tracebacks on the CLI path: --config, --out, --workers -------------------------------


def _bad_places(tmp_path: Path) -> dict[str, Path]:
    nested = tmp_path / "nested.json"
    nested.write_text("[" * 200_000 + "]" * 200_000)
    loop = tmp_path / "loopA"
    os.symlink(tmp_path / "loopB", loop)
    os.symlink(loop, tmp_path / "loopB")
    return {"nested": nested, "loop": loop}


@pytest.mark.parametrize(
    "case",
    [
        "config nested",
        "config /dev/zero",
        "train out undecodable",
        "train out symlink loop",
        "cache out symlink loop",
        "train workers",
        "cache workers",
        "bench workers",
    ],
)
def test_what_raised_a_traceback_is_one_line(tmp_path, case):
    places = _bad_places(tmp_path)
    store = tmp_path / "no-store"  # every case is refused before a store is opened
    train = ["train", "--store", store, "--epochs", "1", "--no-progress"]
    many = str(os.cpu_count() + 1)
    cases = {
        "config nested": ([*train, "--out", tmp_path / "r", "--config", places["nested"]], "RecursionError"),
        "config /dev/zero": ([*train, "--out", tmp_path / "r", "--config", "/dev/zero"], "larger than 1 MiB"),
        "train out undecodable": ([*train, "--out", str(tmp_path / "run-\udcff")], "not valid UTF-8"),
        "train out symlink loop": ([*train, "--out", places["loop"]], "symlink loop"),
        "cache out symlink loop": ([*UNTRAINED, "--dataset", "digits", "--out", places["loop"]], "symlink loop"),
        "train workers": ([*train, "--out", tmp_path / "r", "--workers", many], f"--workers must be in 0..{many[:-1]}"),
        "cache workers": ([*UNTRAINED, "--dataset", "digits", "--out", tmp_path / "s", "--workers", many], "--workers"),
        "bench workers": (["bench", "--store", store, "--workers", many], "--workers must be in"),
    }
    args, needle = cases[case]
    _refused(args, needle)
    assert not (tmp_path / "r").exists() and not (tmp_path / "s").exists()
    assert not list(tmp_path.glob("run-*")) and not list(tmp_path.glob(".s.partial"))


# --- 10. train --resume: the run directory however spelt, wherever moved -----------------------


def test_train_resumes_its_directory_spelt_otherwise_or_moved(small_store, tmp_path, monkeypatch):
    from kdstore.train import loop
    from kdstore.train.config import TrainConfig

    monkeypatch.chdir(tmp_path)

    def die_in_epoch_2(epoch, b, ids, lam):
        if epoch == 1:
            raise KeyboardInterrupt

    options = dict(store=str(small_store), epochs=2, batch_size=8, workers=1, progress=False)
    with pytest.raises(KeyboardInterrupt):
        loop.run(TrainConfig(out="rr", **options), hook=die_in_epoch_2)
    shutil.copytree("rr", "moved")
    args = ["train", "--store", small_store, "--epochs", "2", "--batch-size", "8", "--workers", "1", "--no-progress"]
    for out in ("./rr", tmp_path / "moved"):
        code, text = _run([*args, "--out", out, "--resume"])
        assert code == 0 and "different" not in text, text
        assert (Path(out) / "summary.json").is_file()


# --- 14. the examples print a KdstoreError in one line; 15. a dry run into a read-only place ----


@pytest.mark.heavy
@pytest.mark.parametrize("script", ["plain_loop.py", "timm_task.py", "lightning_module.py"])
def test_the_examples_print_a_kdstore_error_in_one_line(tmp_path, script):
    example = Path(__file__).resolve().parents[2] / "examples" / script
    args = ["--store", tmp_path / "missing"] + (["--out", tmp_path / "o"] if script == "plain_loop.py" else [])
    proc = subprocess.run([sys.executable, example, *map(str, args)], capture_output=True, text=True, timeout=300)
    err = proc.stderr.strip()
    assert proc.returncode != 0 and err == f"error: store {tmp_path / 'missing'} does not exist (make one with " + (
        "`kdstore cache`)"
    ), err


def test_a_dry_run_into_a_read_only_directory_is_refused(tmp_path):
    disk = tmp_path / "ro"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M,ro", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("this machine does not let the tests mount a read-only tmpfs")
    try:
        for extra in (["--dry-run"], []):
            _refused([*UNTRAINED, "--dataset", "digits", "--out", disk / "sub" / "s", *extra], "is not a writable")
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
