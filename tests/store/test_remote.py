"""Stores that travel (kdstore.store.remote): push to a directory and to fsspec's memory://
filesystem, pull back byte for byte, a stopped push and a stopped pull resumed, a corrupted or
missing remote file refused in one line naming it, a remote without its MANIFEST refused,
`--only teacher` over local images, and `inspect URL` reading teacher.h5's attributes without
the images. No network: S3, GCS, Azure and the Hub are not exercised here."""

from __future__ import annotations

import json
import shutil

import fsspec
import pytest
from click.testing import CliRunner

from kdstore.cli.main import cli
from kdstore.errors import KdstoreError
from kdstore.store.format import MANIFEST
from kdstore.store.publish import staging_dir
from kdstore.store.remote import PullConfig, PushConfig, describe, pull, push
from kdstore.store.verification import verify

pytestmark = pytest.mark.slow  # builds a store

NAMES = ("train.beton", "val.beton", "teacher.h5")


@pytest.fixture
def memory_url(request):
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in request.node.name)  # no glob characters
    url = f"memory://kdstore-tests/{name}"
    yield url
    fs = fsspec.filesystem("memory")
    if fs.exists(url):
        fs.rm(url, recursive=True)


def _same(a, b) -> None:
    for name in (*NAMES, MANIFEST):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.parametrize("where", ["directory", "memory"])
def test_push_then_pull_gives_the_same_store(small_store, tmp_path, memory_url, where):
    url = str(tmp_path / "remote") if where == "directory" else memory_url
    sent = push(PushConfig(store=str(small_store), url=url))
    assert sorted(sent["sent"]) == sorted(NAMES) and sent["kept"] == []
    out = pull(PullConfig(url=url, out=str(tmp_path / "pulled")))
    _same(small_store, out)
    assert verify(out) == [] and not staging_dir(out).exists()
    again = push(PushConfig(store=str(small_store), url=url))  # already there: nothing sent
    assert again["sent"] == []


def test_a_stopped_push_resumes_and_the_manifest_goes_last(small_store, memory_url):
    fs = fsspec.filesystem("memory")
    fs.makedirs(memory_url, exist_ok=True)
    fs.put_file(str(small_store / "train.beton"), f"{memory_url}/train.beton")  # what a stopped push left:
    digests = json.loads((small_store / MANIFEST).read_text())["sha256"]
    fs.pipe_file(f"{memory_url}/SENDING.json", json.dumps(digests).encode())  # and what it was sending
    with pytest.raises(KdstoreError, match="no MANIFEST.json there: not a complete kdstore store"):
        pull(PullConfig(url=memory_url, out="/nonexistent/never"))
    sent = push(PushConfig(store=str(small_store), url=memory_url))
    assert sent["kept"] == ["train.beton"] and sorted(sent["sent"]) == ["teacher.h5", "val.beton"]


def test_a_stopped_pull_keeps_what_it_checked(small_store, tmp_path, memory_url, monkeypatch):
    push(PushConfig(store=str(small_store), url=memory_url))
    out = tmp_path / "pulled"
    stage = staging_dir(out)
    stage.mkdir()
    (stage / ".kdstore-staging").mkdir()
    shutil.copy(small_store / "train.beton", stage / "train.beton")  # checked and kept by the stopped pull
    fetched = []
    real_get = fsspec.implementations.memory.MemoryFileSystem.get_file

    def counting(self, source, target, *a, **kw):
        fetched.append(source.rsplit("/", 1)[-1])
        return real_get(self, source, target, *a, **kw)

    monkeypatch.setattr(fsspec.implementations.memory.MemoryFileSystem, "get_file", counting)
    pull(PullConfig(url=memory_url, out=str(out)))
    assert sorted(fetched) == ["teacher.h5", "val.beton"]
    _same(small_store, out)


def test_a_corrupted_remote_file_is_fetched_again_then_refused_naming_it(small_store, tmp_path, memory_url):
    push(PushConfig(store=str(small_store), url=memory_url))
    fs = fsspec.filesystem("memory")
    data = bytearray(fs.cat_file(f"{memory_url}/val.beton"))
    data[-1] ^= 0xFF  # same size, other bytes: only a hash tells
    fs.pipe_file(f"{memory_url}/val.beton", bytes(data))
    result = CliRunner().invoke(cli, ["pull", memory_url, str(tmp_path / "pulled")])
    assert result.exit_code == 2, result.output
    said = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert said == [
        f"error: {memory_url}/val.beton: its sha256 differs from the MANIFEST's after two downloads; "
        "nothing was published"
    ]
    assert not (tmp_path / "pulled").exists()


def test_only_the_teacher_over_the_same_local_images(small_store, tmp_path, memory_url):
    local = tmp_path / "local"
    shutil.copytree(small_store, local)
    push(PushConfig(store=str(small_store), url=memory_url))
    (local / "teacher.h5").write_bytes(b"")  # the teacher to replace (the images are the same)
    manifest = json.loads((local / MANIFEST).read_text())
    manifest["sha256"]["teacher.h5"] = "0" * 64
    (local / MANIFEST).write_text(json.dumps(manifest))
    out = pull(PullConfig(url=memory_url, out=str(local), only="teacher"))
    _same(small_store, out)
    (local / "val.beton").write_bytes(b"x")  # other images now
    manifest = json.loads((local / MANIFEST).read_text())
    manifest["sha256"]["val.beton"] = "1" * 64
    (local / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(KdstoreError, match="is not the remote store's"):
        pull(PullConfig(url=memory_url, out=str(local), only="teacher"))


def test_inspect_a_url_reads_the_teacher_without_the_images(small_store, memory_url):
    push(PushConfig(store=str(small_store), url=memory_url))
    found = describe(memory_url)
    assert found["attrs"]["teacher"] == "cifar_resnet8" and found["sizes"]["teacher.h5"] > 0
    result = CliRunner().invoke(cli, ["inspect", memory_url], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "cifar_resnet8" in result.output and "remote" in result.output, result.output


def test_an_unknown_scheme_says_what_to_install(tmp_path):
    result = CliRunner().invoke(cli, ["pull", "nosuchscheme://bucket/store", str(tmp_path / "x")])
    assert result.exit_code == 2 and "no filesystem for nosuchscheme://" in result.output, result.output


def test_push_writes_a_store_card_that_inspect_shows(small_store, memory_url):
    push(PushConfig(store=str(small_store), url=memory_url))
    text = fsspec.filesystem("memory").cat_file(f"{memory_url}/README.md").decode()
    assert text.startswith("# A kdstore store: cifar_resnet8 on ")
    needles = ("| teacher | cifar_resnet8", "| teacher accuracy, train / val |", "| logits | float16 |", "| views |")
    assert [n for n in needles if n not in text] == [], text
    assert describe(memory_url)["card"] == text
    out = pull(PullConfig(url=memory_url, out=str(small_store.parent / "pulled-card")))
    assert not (out / "README.md").exists()  # the card is the remote's page, not part of the store
