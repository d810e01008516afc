"""Killed caches and runs resume or leave nothing behind; corrupt and foreign stores are refused."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch

from kdstore.cache import write as cache
from kdstore.cache.config import CacheConfig
from kdstore.errors import KdstoreError
from kdstore.store.format import Store
from kdstore.store.verification import verify
from kdstore.train import loop as train
from kdstore.train.config import TrainConfig
from tests.helpers import reseal

pytestmark = pytest.mark.slow  # caches, trains or kills processes: the full suite only

# A cache in a child process whose teacher SIGKILLs the process at its Nth forward call.
KILLER = textwrap.dedent("""
    import os, signal, sys
    import kdstore.cache.write as c
    from kdstore.cache import CacheConfig
    kill_at, calls = int(sys.argv[2]), [0]
    real = c.load_teacher
    def load_teacher(*args, **kwargs):
        teacher = real(*args, **kwargs)
        forward = teacher.model.forward
        def counting(x):
            # the cache's own passes only (the estimate's batches come before the staging directory)
            calls[0] += os.path.isdir(os.path.join(os.path.dirname(sys.argv[1]), ".store.partial"))
            if calls[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return forward(x)
        teacher.model.forward = counting
        return teacher
    c.load_teacher = load_teacher
    c.CHUNK_SAMPLES = 16  # flush every 2 batches of 8
    c.run(CacheConfig(allow_untrained=True, dataset="imagefolder:" + sys.argv[3], teacher="cifar_resnet8",
                      out=sys.argv[1], batch_size=8, progress=False, overwrite=True, resume=len(sys.argv) > 4))
""")


def _cache_in_child(out, kill_at, folder, resume=False):
    args = [sys.executable, "-c", KILLER, str(out), str(kill_at), str(folder)] + (["resume"] if resume else [])
    return subprocess.run(args, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})


@pytest.fixture(scope="module")
def reference_store(synthetic_folder, tmp_path_factory):
    """The synthetic store cached in one uninterrupted run (same options as the killed ones)."""
    out = tmp_path_factory.mktemp("ref") / "store"
    cache.run(
        CacheConfig(
            allow_untrained=True,
            dataset=f"imagefolder:{synthetic_folder}",
            teacher="cifar_resnet8",
            out=str(out),
            batch_size=8,
            progress=False,
        )
    )
    return out


def _same_content(a, b):
    with h5py.File(a / "teacher.h5") as fa, h5py.File(b / "teacher.h5") as fb:
        for split in ("train", "val"):
            for key in fa[split]:
                np.testing.assert_array_equal(fa[split][key][()], fb[split][key][()], err_msg=f"{split}/{key}")
        assert fa.attrs["dataset_fingerprint"] == fb.attrs["dataset_fingerprint"]


@pytest.mark.heavy
@pytest.mark.parametrize("kill_at", [3])  # 30 train images, batches of 8: mid-train after a flush (batch 1: test below)
def test_sigkilled_cache_leaves_no_store_and_resumes_identically(kill_at, synthetic_folder, reference_store, tmp_path):
    out = tmp_path / "store"
    proc = _cache_in_child(out, kill_at, synthetic_folder)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    assert (tmp_path / ".store.partial").is_dir()
    with pytest.raises(KdstoreError, match="does not exist"):
        Store.open(out)
    proc = _cache_in_child(out, 10**9, synthetic_folder, resume=True)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / ".store.partial").exists()
    _same_content(out, reference_store)
    assert verify(out) == []


@pytest.mark.heavy
def test_sigkill_keeps_the_previous_complete_store_and_resume_checks_options(
    synthetic_folder, reference_store, tmp_path
):
    out = tmp_path / "store"
    shutil.copytree(reference_store, out)
    before = (out / "MANIFEST.json").read_text()
    proc = _cache_in_child(out, 1, synthetic_folder)  # with --overwrite, killed at its first batch
    assert proc.returncode == -signal.SIGKILL
    assert (out / "MANIFEST.json").read_text() == before and verify(out) == []
    assert (tmp_path / ".store.partial").is_dir()
    with pytest.raises(KdstoreError, match="started with different batch_size"):
        cache.run(
            CacheConfig(
                allow_untrained=True,
                dataset=f"imagefolder:{synthetic_folder}",
                teacher="cifar_resnet8",
                out=str(out),
                batch_size=16,
                progress=False,
                overwrite=True,
                resume=True,
            )
        )
    assert (out / "MANIFEST.json").read_text() == before


def _corrupt_copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_truncated_files_are_refused(reference_store, tmp_path):
    for name in ("teacher.h5", "train.beton"):
        bad = _corrupt_copy(reference_store, tmp_path / name)
        data = (bad / name).read_bytes()
        (bad / name).write_bytes(data[: len(data) // 2])
        with pytest.raises(
            KdstoreError, match="differs from the one its MANIFEST.json records|not a readable FFCV file"
        ):
            Store.open(bad)
        assert any(line.startswith(f"{name}: sha256 differs") for line in verify(bad))


def test_bit_flip_in_logits_is_refused_on_open_and_by_verify(reference_store, tmp_path):
    bad = _corrupt_copy(reference_store, tmp_path / "flip")
    with h5py.File(bad / "teacher.h5") as f:
        at = f["train/logits"].id.get_offset()  # contiguous: the logits' bytes start here
    data = bytearray((bad / "teacher.h5").read_bytes())
    data[at + 5] ^= 0x04
    (bad / "teacher.h5").write_bytes(bytes(data))
    with pytest.raises(KdstoreError, match="teacher.h5 differs from the one its MANIFEST.json records"):
        Store.open(bad)
    assert verify(bad)[0].startswith("teacher.h5: sha256 differs")


def test_a_flipped_small_array_is_caught_by_fletcher32(reference_store, tmp_path):
    bad = _corrupt_copy(reference_store, tmp_path / "flip")
    with h5py.File(bad / "teacher.h5") as f:
        _, raw = f["train/confidence"].id.read_direct_chunk((0,))
    data = bytearray((bad / "teacher.h5").read_bytes())
    at = bytes(data).find(raw[:32])
    assert at > 0
    data[at + 5] ^= 0x04
    (bad / "teacher.h5").write_bytes(bytes(data))
    reseal(bad)
    with pytest.raises(KdstoreError, match="teacher.h5 cannot be read"):
        Store.open(bad)


def test_bit_flip_in_image_bytes_is_found_by_verify(reference_store, tmp_path):
    bad = _corrupt_copy(reference_store, tmp_path / "img")
    data = bytearray((bad / "train.beton").read_bytes())
    data[-(len(data) // 3)] ^= 0x10
    (bad / "train.beton").write_bytes(bytes(data))
    assert "train.beton: sha256 differs from the manifest (file changed or corrupt)" in verify(bad)


@pytest.mark.parametrize("bad_value", [np.inf, -np.inf, np.nan])
def test_non_finite_logits(reference_store, tmp_path, bad_value):
    bad = _corrupt_copy(reference_store, tmp_path / "nf")
    with h5py.File(bad / "teacher.h5", "a") as f:
        f["val/logits"][0, 0] = bad_value
    reseal(bad)
    with pytest.raises(KdstoreError, match="val logits contain 1 NaN or inf"):
        Store.open(bad, full=True)  # what verify and the writers run; a reader relies on the sha256
    assert "val logits contain 1 NaN or inf" in verify(bad)[0]


def test_foreign_reordered_and_duplicated(reference_store, digits_store, tmp_path):
    foreign = _corrupt_copy(reference_store, tmp_path / "foreign")
    shutil.copy(digits_store / "teacher.h5", foreign / "teacher.h5")
    with pytest.raises(KdstoreError, match="differs from the one its MANIFEST.json records"):
        Store.open(foreign)  # another store's teacher.h5: never distilled from silently
    reseal(foreign)
    with pytest.raises(
        KdstoreError, match="samples but train.beton has|do not match|holds images of 16 px, not the 32 px"
    ):
        Store.open(foreign)
    reordered = _corrupt_copy(reference_store, tmp_path / "reordered")
    with h5py.File(reordered / "teacher.h5", "a") as f:
        for key in ("logits", "labels", "sample_id", "confidence", "correct"):
            f[f"train/{key}"][...] = f[f"train/{key}"][()][::-1]
    reseal(reordered)
    with pytest.raises(KdstoreError, match="do not match train.beton row by row"):
        Store.open(reordered)
    dup = _corrupt_copy(reference_store, tmp_path / "dup")
    with h5py.File(dup / "teacher.h5", "a") as f:
        ids = f["train/sample_id"][()]
        ids[1] = ids[0]
        f["train/sample_id"][...] = ids
    reseal(dup)
    with pytest.raises(KdstoreError, match="sample ids are not unique"):
        Store.open(dup)
    other_fp = _corrupt_copy(reference_store, tmp_path / "fp")
    manifest = json.loads((other_fp / "MANIFEST.json").read_text())
    manifest["dataset_fingerprint"] = "f" * 64
    (other_fp / "MANIFEST.json").write_text(json.dumps(manifest))
    with pytest.raises(KdstoreError, match="belongs to another dataset"):
        Store.open(other_fp)


@pytest.mark.heavy
def test_killed_and_resumed_training_matches_uninterrupted(digits_store, tmp_path):
    base = TrainConfig(out="", store=str(digits_store), variant="kd-cl-sr", epochs=2, batch_size=256, progress=False)
    straight = train.run(TrainConfig(**{**base.__dict__, "out": str(tmp_path / "straight")}))

    def die_in_epoch_2(epoch, b, ids, lam):
        if epoch == 1 and b == 2:
            raise KeyboardInterrupt

    killed = TrainConfig(**{**base.__dict__, "out": str(tmp_path / "killed")})
    with pytest.raises(KeyboardInterrupt):
        train.run(killed, hook=die_in_epoch_2)
    assert not (tmp_path / "killed" / "summary.json").exists()
    # the same checkpoint as kdstore wrote it before the loader kept its own state (rng.augment)
    shutil.copytree(tmp_path / "killed", tmp_path / "legacy")
    ckpt = torch.load(tmp_path / "legacy" / "checkpoint.pt", weights_only=True)
    ckpt["rng"]["augment"] = ckpt.pop("loader")["augment"]
    ckpt["config"]["out"] = str(tmp_path / "legacy")  # the run, moved
    for newer in ("loss", "loss_options", "logit_standardize"):  # and saved before --loss existed
        del ckpt["config"][newer]
    torch.save(ckpt, tmp_path / "legacy" / "checkpoint.pt")
    legacy = train.run(TrainConfig(**{**killed.__dict__, "out": str(tmp_path / "legacy"), "resume": True}))
    resumed = train.run(TrainConfig(**{**killed.__dict__, "resume": True}))
    a = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    c = [json.loads(x) for x in (tmp_path / "legacy" / "metrics.jsonl").read_text().splitlines()]
    assert len(b) == len(c) == 2  # epoch 1 from the killed run, epoch 2 from the resumed one
    for ra, rb in [*zip(a, b), *zip(a, c)]:
        for key in ("train_loss", "train_ce", "train_kd", "val_acc", "val_loss", "lam_mean"):
            assert ra[key] == rb[key], key
    assert resumed["final_val_acc"] == straight["final_val_acc"] == legacy["final_val_acc"]
    with pytest.raises(KdstoreError, match="different epochs"):
        train.run(TrainConfig(**{**killed.__dict__, "resume": True, "overwrite": True, "epochs": 5}))


@pytest.mark.heavy
def test_two_train_processes_read_one_store_at_once(digits_store, tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "kdstore")
    procs = [
        subprocess.Popen(
            [
                exe,
                "train",
                "--store",
                str(digits_store),
                "--variant",
                v,
                "--epochs",
                "1",
                "--batch-size",
                "256",
                "--workers",
                "1",
                "--no-progress",
                "--out",
                str(tmp_path / v),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for v in ("kd", "kd-cl-sr")
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert (tmp_path / "kd" / "summary.json").is_file() and (tmp_path / "kd-cl-sr" / "summary.json").is_file()
