"""The bad-input catalogue: every option of every command given what it cannot take. Each case
must exit non-zero with one line naming the problem, and no traceback."""

import os
import shutil
import stat

import pytest
from click.testing import CliRunner

from kdstore.cli.main import cli
from kdstore.store.format import Store
from kdstore.store.publish import commit_dir, recover, staging_dir
from tests.helpers import make_imagefolder

pytestmark = pytest.mark.slow  # caches, trains or kills processes: the full suite only


def _refused(args, needle):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    text = result.output.strip()
    assert result.exit_code != 0 and not (result.exception and not isinstance(result.exception, SystemExit)), (
        result.exception,
        text,
    )
    assert "Traceback" not in text and len(text.splitlines()) == 1, text
    assert needle.lower() in text.lower(), text
    return text


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    one = make_imagefolder(root / "one", classes=1, train_per_class=4, val_per_class=2)
    differ = make_imagefolder(root / "differ", classes=2, train_per_class=4, val_per_class=2)
    shutil.move(differ / "test" / "class1", differ / "test" / "other")
    return {"one": one, "differ": differ, "file": root / "a-file"}


TRAIN = ["train", "--epochs", "1", "--no-progress"]
CASES = {
    # cache
    "cache image size negative (digits)": (
        ["cache", "--allow-untrained", "--dataset", "digits", "--teacher", "cifar_resnet8", "--image-size", "-5"],
        "--image-size",
    ),
    "cache image size zero (digits)": (
        ["cache", "--allow-untrained", "--dataset", "digits", "--teacher", "cifar_resnet8", "--image-size", "0"],
        "--image-size",
    ),
    "cache image size negative (folder)": (
        [
            "cache",
            "--allow-untrained",
            "--dataset",
            "imagefolder:{differ}",
            "--teacher",
            "cifar_resnet8",
            "--image-size",
            "-5",
        ],
        "--image-size",
    ),
    "cache batch size zero": (
        ["cache", "--allow-untrained", "--dataset", "digits", "--teacher", "cifar_resnet8", "--batch-size", "0"],
        "--batch-size",
    ),
    "cache workers negative": (
        ["cache", "--allow-untrained", "--dataset", "digits", "--teacher", "cifar_resnet8", "--workers", "-1"],
        "--workers",
    ),
    "cache input size zero": (
        ["cache", "--allow-untrained", "--dataset", "digits", "--teacher", "cifar_resnet8", "--input-size", "0"],
        "--input-size",
    ),
    "cache views negative": (
        ["cache", "--allow-untrained", "--dataset", "digits", "--teacher", "cifar_resnet8", "--views", "-1"],
        "--views",
    ),
    "cache unknown dataset": (
        ["cache", "--allow-untrained", "--dataset", "nope", "--teacher", "cifar_resnet8"],
        "unknown dataset",
    ),
    "cache unknown teacher": (
        ["cache", "--allow-untrained", "--dataset", "digits", "--teacher", "no_such_net"],
        "unknown model",
    ),
    "cache one class": (
        ["cache", "--allow-untrained", "--dataset", "imagefolder:{one}", "--teacher", "cifar_resnet8"],
        "2 classes",
    ),
    "cache classes differ": (
        ["cache", "--allow-untrained", "--dataset", "imagefolder:{differ}", "--teacher", "cifar_resnet8"],
        "differ",
    ),
    "cache out is a file": (
        ["cache", "--allow-untrained", "--dataset", "digits", "--teacher", "cifar_resnet8", "--out", "{file}"],
        "{file}",
    ),
    "cache out inside a store": (
        ["cache", "--allow-untrained", "--dataset", "digits", "--teacher", "cifar_resnet8", "--out", "{store}/inner"],
        "inside the store",
    ),
    "cache pickle checkpoint": (
        ["cache", "--dataset", "digits", "--checkpoint", "{pickle}"],
        "cannot be loaded safely",
    ),
    "cache missing checkpoint": (["cache", "--dataset", "digits", "--checkpoint", "{missing}"], "{missing}"),
    # train
    "train epochs zero": (TRAIN[:1] + ["--epochs", "0"], "--epochs"),
    "train batch size one": (TRAIN + ["--batch-size", "1"], "--batch-size"),
    "train batch size above the split": (TRAIN + ["--batch-size", "5000"], "--batch-size"),
    "train lr nan": (TRAIN + ["--lr", "nan"], "--lr"),
    "train lr inf": (TRAIN + ["--lr", "inf"], "--lr"),
    "train weight decay inf": (TRAIN + ["--weight-decay", "inf"], "--weight-decay"),
    "train weight decay nan": (TRAIN + ["--weight-decay", "nan"], "--weight-decay"),
    "train tau nan": (TRAIN + ["--tau", "nan"], "--tau"),
    "train lam nan": (TRAIN + ["--lam", "nan"], "--lam"),
    "train lam above one": (TRAIN + ["--lam", "1.5"], "--lam"),
    "train label smoothing one": (TRAIN + ["--label-smoothing", "1"], "--label-smoothing"),
    "train pacing a above one": (TRAIN + ["--variant", "kd-cl", "--pacing", "linear", "--pacing-a", "1.5"], "pacing"),
    "train pacing b nan": (TRAIN + ["--variant", "kd-cl", "--pacing", "linear", "--pacing-b", "nan"], "pacing"),
    "train seed negative": (TRAIN + ["--seed", "-1"], "--seed"),
    "train workers negative": (TRAIN + ["--workers", "-1"], "--workers"),
    "train rescore every zero": (
        TRAIN + ["--variant", "kd-cl", "--scorer", "student", "--rescore-every", "0"],
        "--rescore-every",
    ),
    "train unknown variant": (TRAIN + ["--variant", "nope"], "unknown variant"),
    "train unknown student": (TRAIN + ["--student", "no_such_net"], "unknown model"),
    "train out is a file": (TRAIN + ["--out", "{file}"], "{file}"),
    "train out inside the store": (TRAIN + ["--out", "{store}/run"], "inside the store"),
    "train out read-only": (TRAIN + ["--out", "{readonly}/run"], "{readonly}"),
    "train store is a file": (["train", "--store", "{file}", "--out", "{tmp}/r"], "does not exist"),
    "train resume a bare state dict": (
        TRAIN + ["--batch-size", "512", "--resume", "--out", "{bare}"],
        "not a per-epoch checkpoint",
    ),
    # teacher
    "teacher epochs zero": (
        ["teacher", "--model", "cifar_resnet8", "--dataset", "digits", "--epochs", "0", "--out", "{tmp}/t"],
        "--epochs",
    ),
    "teacher split above one": (
        ["teacher", "--model", "cifar_resnet8", "--dataset", "digits", "--split", "1.5", "--out", "{tmp}/t"],
        "--split",
    ),
    "teacher missing pretrained file": (
        ["teacher", "--model", "resnet18", "--dataset", "digits", "--pretrained-file", "{missing}", "--out", "{tmp}/t"],
        "{missing}",
    ),
    "teacher out is a file": (
        ["teacher", "--model", "cifar_resnet8", "--dataset", "digits", "--epochs", "1", "--out", "{file}"],
        "{file}",
    ),
    # merge, report, bench
    "merge one store": (["merge", "{store}", "--out", "{tmp}/m"], "at least two"),
    "merge bad confidence": (["merge", "{store}", "{store}", "--confidence", "7", "--out", "{tmp}/m"], "--confidence"),
    "merge out is a file": (["merge", "{store}", "{store}", "--out", "{file}"], "{file}"),
    "report cut-off metrics": (["report", "{cutoff}"], "metrics.jsonl"),
    "report out is a file": (["report", "{run8}", "--out", "{file}"], "{file}"),
    "bench batch above the split": (
        ["bench", "--store", "{store}", "--batch-size", "5000", "--steps", "1"],
        "--batch-size",
    ),
    "bench input size negative": (
        ["bench", "--store", "{store}", "--input-size", "-8", "--steps", "1"],
        "--input-size",
    ),
    "bench steps zero": (["bench", "--store", "{store}", "--steps", "0"], "--steps"),
    "bench json is a directory": (
        [
            "bench",
            "--store",
            "{store}",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--block",
            "1",
            "--batch-size",
            "64",
            "--json",
            "{run8}",
        ],
        "is a directory",
    ),
}


@pytest.fixture(scope="module")
def places(folders, digits_store, tmp_path_factory):
    import torch

    root = tmp_path_factory.mktemp("places")
    folders["file"].write_text("not a directory\n")
    readonly = root / "ro"
    readonly.mkdir()
    readonly.chmod(stat.S_IRUSR | stat.S_IXUSR)
    pickle = root / "evil.pt"
    pickle.write_bytes(
        __import__("pickle").dumps({"state_dict": {}, "payload": os.system})
    )  # would run code if unpickled
    run8 = root / "run8"
    assert (
        CliRunner()
        .invoke(
            cli,
            [
                "train",
                "--store",
                str(digits_store),
                "--epochs",
                "1",
                "--batch-size",
                "512",
                "--no-progress",
                "--out",
                str(run8),
            ],
        )
        .exit_code
        == 0
    )
    bare = root / "bare"  # a killed run whose checkpoint.pt was replaced by a plain state dict
    shutil.copytree(run8, bare)
    (bare / "summary.json").unlink()
    torch.save(torch.load(run8 / "checkpoint.pt", weights_only=True)["state_dict"], bare / "checkpoint.pt")
    cutoff = root / "cutoff"
    shutil.copytree(run8, cutoff)
    metrics = (cutoff / "metrics.jsonl").read_text()
    (cutoff / "metrics.jsonl").write_text(metrics[: len(metrics) // 2])
    return {
        **{k: str(v) for k, v in folders.items()},
        "store": str(digits_store),
        "readonly": str(readonly),
        "pickle": str(pickle),
        "missing": str(root / "missing.pt"),
        "run8": str(run8),
        "bare": str(bare),
        "cutoff": str(cutoff),
        "tmp": str(root / "t"),
    }


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line(name, places, tmp_path):
    if name == "train out read-only" and os.geteuid() == 0:
        pytest.skip("root writes into read-only directories")
    args, needle = CASES[name]
    args = [a.format(**places) for a in args]
    if args[0] == "train" and "--store" not in args:
        args += ["--store", places["store"]]
    if args[0] in ("train", "cache") and "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    _refused(args, needle.format(**places))
    if "--out" in args and "resume" not in name:
        out = args[args.index("--out") + 1]
        assert not os.path.isdir(out) or not os.listdir(out) or out in places.values(), f"{out} was written"


def test_unicode_and_spaces_in_paths_work(digits_store, tmp_path):
    store = tmp_path / "störes ü" / "digits store"
    shutil.copytree(digits_store, store)
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--store",
            str(store),
            "--epochs",
            "1",
            "--batch-size",
            "512",
            "--no-progress",
            "--out",
            str(tmp_path / "rüns x" / "a b"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "rüns x" / "a b" / "summary.json").is_file()


def test_an_interrupted_replacement_is_recovered(digits_store, tmp_path):
    """A kill between the two renames of a replacement left the old store aside: the next run
    puts it back (and commit_dir itself swaps atomically where the system can)."""
    out = tmp_path / "s"
    shutil.copytree(digits_store, tmp_path / ".s.old-12345")
    recover(out)
    assert (out / "MANIFEST.json").is_file() and not list(tmp_path.glob(".s.old-*"))
    Store.open(out)
    stage = staging_dir(out)
    shutil.copytree(digits_store, stage)
    (stage / "marker").write_text("new")
    commit_dir(stage, out)
    assert (out / "marker").is_file() and not stage.exists() and not list(tmp_path.glob(".s.old-*"))


def test_an_open_store_keeps_reading_the_files_it_opened(digits_store, small_store, tmp_path):
    """`cache --overwrite` may replace a store while a run reads it: the run keeps its files."""
    from kdstore.data.beton import fingerprint_beton, read_int_fields

    out = tmp_path / "s"
    shutil.copytree(digits_store, out)
    store = Store.open(out)
    before = fingerprint_beton(store.beton("val"))
    logits = store.val.logits.copy()
    stage = staging_dir(out)
    shutil.copytree(small_store, stage)
    commit_dir(stage, out)  # as `cache --overwrite` does
    assert fingerprint_beton(store.beton("val")) == before and len(read_int_fields(store.beton("val"))["label"]) == len(
        store.val
    )
    assert (store.val.logits == logits).all()
    assert len(Store.open(out).val) != len(store.val)
