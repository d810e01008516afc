"""Stores that travel, beyond a directory: S3 (moto's server on 127.0.0.1, through s3fs: a round
trip equal to the original, a stopped push resumed without re-sending, a missing bucket, no
credentials), the Hugging Face Hub (a mocked HfApi: one commit per file, the MANIFEST last, a
resumed push), files sent in parts (and a pull stopped inside one), `--only train,val`, and the
one-line refusals. No network."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pytest
from click.testing import CliRunner

from kdstore.cli.main import cli
from kdstore.errors import KdstoreError
from kdstore.store import remote as remote_lib
from kdstore.store.format import MANIFEST
from kdstore.store.remote import PullConfig, PushConfig, pull, push
from kdstore.store.verification import verify
from tests.helpers import untimed

pytestmark = pytest.mark.slow  # builds a store

NAMES = ("train.beton", "val.beton", "teacher.h5")
KDSTORE = os.path.join(os.path.dirname(sys.executable), "kdstore")


def _same(a: Path, b: Path) -> None:
    for name in (*NAMES, MANIFEST):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server on 127.0.0.1, for this module; its endpoint is what botocore's
    AWS_ENDPOINT_URL_S3 names (as a MinIO or another S3-compatible store would be given)."""
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch, request):
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": s3_server,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    fsspec.filesystem("s3").clear_instance_cache()
    bucket = "kd-" + "".join(c for c in request.node.name.lower() if c.isalnum())[:40]
    return f"s3://{bucket}/stores/small", env


def test_s3_round_trip_and_a_stopped_push_resumed(small_store, tmp_path, s3, monkeypatch):
    url, _ = s3
    sent_bytes, stopped = [], []
    real_put = remote_lib.FsRemote.put

    def counting(self, local, name, offset, length, progress):
        sent_bytes.append((name, length))
        if len(sent_bytes) == 2 and not stopped:  # the first push's second file: stop as a kill would
            stopped.append(name)
            raise KeyboardInterrupt
        return real_put(self, local, name, offset, length, progress)

    monkeypatch.setattr(remote_lib.FsRemote, "put", counting)
    with pytest.raises(KeyboardInterrupt):
        push(PushConfig(store=str(small_store), url=url, progress=False))
    with pytest.raises(KdstoreError, match="no MANIFEST.json there"):  # incomplete by definition
        pull(PullConfig(url=url, out=str(tmp_path / "early"), progress=False))
    first = [n for n, _ in sent_bytes]
    sent_bytes.clear()
    result = push(PushConfig(store=str(small_store), url=url, progress=False))
    assert result["kept"] == first[:1]  # the file sent before the stop is not sent again
    assert sorted(n for n, _ in sent_bytes) == sorted(set(NAMES) - set(first[:1]))
    out = pull(PullConfig(url=url, out=str(tmp_path / "pulled"), progress=False))
    _same(small_store, out)
    assert verify(out) == []


def test_s3_a_missing_bucket_and_missing_credentials_are_one_line(small_store, tmp_path, s3, monkeypatch):
    url, _ = s3
    with pytest.raises(KdstoreError, match=r"the s3:// bucket does not exist"):
        pull(PullConfig(url="s3://kd-no-such-bucket/x", out=str(tmp_path / "x"), progress=False))
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    fsspec.filesystem("s3").clear_instance_cache()
    result = CliRunner().invoke(cli, ["push", str(small_store), url, "--no-progress"])
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert "authentication failed for s3:// (NoCredentialsError)" in lines[0] and "AWS_ACCESS_KEY_ID" in lines[0]
    assert "testing" not in result.output  # never a secret


@pytest.mark.parametrize(
    "url, needle",
    [
        ("s3://", "no bucket (s3://BUCKET/PATH) in the URL"),
        ("gs:///", "no bucket (gs://BUCKET/PATH) in the URL"),
        ("hf://datasets/org", "a store goes to a whole Hub dataset repository, hf://datasets/ORG/NAME"),
    ],
)
def test_a_url_without_a_bucket_or_repository_is_one_line(small_store, url, needle):
    result = CliRunner().invoke(cli, ["push", str(small_store), url, "--no-progress"])
    assert result.exit_code != 0 and needle in result.output and len(result.output.strip().splitlines()) == 1


class FakeHub:
    """HfApi as push uses it, over a dict of files: every call recorded."""

    files: dict[str, bytes] = {}
    calls: list[tuple] = []

    def get_paths_info(self, repo, paths, repo_type):
        assert repo == "org/name" and repo_type == "dataset"
        return [type("Info", (), {"size": len(self.files[p])})() for p in paths if p in self.files]

    def upload_file(self, *, path_or_fileobj, path_in_repo, repo_id, repo_type, commit_message):
        data = path_or_fileobj if isinstance(path_or_fileobj, bytes) else path_or_fileobj.read()
        FakeHub.calls.append(("commit", path_in_repo, commit_message))
        FakeHub.files[path_in_repo] = data

    def delete_file(self, name, repo, repo_type, commit_message):
        FakeHub.calls.append(("delete", name))
        del FakeHub.files[name]

    def create_repo(self, repo, repo_type, exist_ok):
        FakeHub.calls.append(("create", repo, repo_type))

    def hf_hub_download(self, repo, name, repo_type, force_download):
        from huggingface_hub.errors import EntryNotFoundError

        if name not in self.files:
            raise EntryNotFoundError(f"{name} not found")
        path = Path(os.environ["FAKE_HUB_DIR"]) / name
        path.write_bytes(self.files[name])
        return str(path)


def test_a_push_to_the_hub_commits_each_file_then_the_manifest_last(small_store, tmp_path, monkeypatch):
    import huggingface_hub

    FakeHub.files, FakeHub.calls = {}, []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    monkeypatch.setenv("FAKE_HUB_DIR", str(tmp_path))
    monkeypatch.setattr(remote_lib, "PART_BYTES", 3 * 2**20)  # train.beton goes in parts
    url = "hf://datasets/org/name"
    push(PushConfig(store=str(small_store), url=url, progress=False))
    commits = [c[1] for c in FakeHub.calls if c[0] == "commit"]
    assert FakeHub.calls[0] == ("create", "org/name", "dataset")
    assert commits[-1] == MANIFEST and commits[-2] == "README.md" and "PARTS.json" in commits
    parts = json.loads(FakeHub.files["PARTS.json"])
    size = (small_store / "train.beton").stat().st_size
    assert sum(parts["train.beton"]) == size and max(parts["train.beton"]) <= 3 * 2**20
    joined = b"".join(FakeHub.files[f"train.beton.part-{i:05d}"] for i in range(len(parts["train.beton"])))
    assert joined == (small_store / "train.beton").read_bytes()
    assert FakeHub.files[MANIFEST] == (small_store / MANIFEST).read_bytes()
    assert "SENDING.json" not in FakeHub.files  # gone once the MANIFEST is there
    # a push stopped before its MANIFEST resumes: nothing it had sent is sent again
    del FakeHub.files[MANIFEST]
    FakeHub.files["SENDING.json"] = json.dumps(json.loads((small_store / MANIFEST).read_text())["sha256"]).encode()
    FakeHub.calls = []
    result = push(PushConfig(store=str(small_store), url=url, progress=False))
    assert result["sent"] == [] and [c[1] for c in FakeHub.calls if c[0] == "commit"][-1] == MANIFEST


def test_files_in_parts_and_a_pull_stopped_inside_one(small_store, tmp_path, monkeypatch):
    monkeypatch.setattr(remote_lib, "PART_BYTES", 2**20)
    url = str(tmp_path / "remote")
    push(PushConfig(store=str(small_store), url=url, progress=False))
    layout = json.loads((Path(url) / "PARTS.json").read_text())
    assert set(layout) >= {"train.beton"} and not (Path(url) / "train.beton").exists()
    got = []
    real_get = remote_lib.FsRemote.get

    def stopping(self, name, target, progress):
        got.append(name)
        if name == "train.beton.part-00002":
            raise KeyboardInterrupt
        return real_get(self, name, target, progress)

    monkeypatch.setattr(remote_lib.FsRemote, "get", stopping)
    with pytest.raises(KeyboardInterrupt):
        pull(PullConfig(url=url, out=str(tmp_path / "pulled"), progress=False))
    assert not (tmp_path / "pulled").exists()
    got.clear()
    monkeypatch.setattr(remote_lib.FsRemote, "get", lambda self, *a: (got.append(a[0]), real_get(self, *a))[1])
    out = pull(PullConfig(url=url, out=str(tmp_path / "pulled"), progress=False))
    assert "train.beton.part-00000" not in got and "train.beton.part-00002" in got  # finished parts kept
    _same(small_store, out)


def test_only_train_and_val_over_the_same_local_teacher(small_store, tmp_path):
    url = str(tmp_path / "remote")
    push(PushConfig(store=str(small_store), url=url, progress=False))
    local = tmp_path / "local"
    shutil.copytree(small_store, local)
    (local / "val.beton").write_bytes(b"stale")  # images to replace; the teacher is the same
    manifest = json.loads((local / MANIFEST).read_text())
    manifest["sha256"]["val.beton"] = "2" * 64
    (local / MANIFEST).write_text(json.dumps(manifest))
    out = pull(PullConfig(url=url, out=str(local), only="train,val", progress=False))
    _same(small_store, out)
    with pytest.raises(KdstoreError, match="--only: unknown images; name some of teacher, train, val"):
        pull(PullConfig(url=url, out=str(local), only="images", progress=False))


def _killed_at(args: list[str], phase: str) -> list[str]:
    """Run `kdstore ARGS` held at `phase` (the test seam KDSTORE_HOLD_AT_PHASE), SIGKILL it there;
    returns its stderr lines up to the phase."""
    env = {**os.environ, "KDSTORE_TRACE_PHASES": "1", "KDSTORE_HOLD_AT_PHASE": phase}
    proc = subprocess.Popen([KDSTORE, *args, "--no-progress"], env=env, stderr=subprocess.PIPE, text=True)
    said = []
    for line in proc.stderr:
        said.append(line.strip())
        if line.strip() == f"phase {phase}":
            break
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return said


def _sent(lines: list[str]) -> list[str]:
    return [line.split()[1] for line in lines if line.startswith("sending ")]


@pytest.mark.heavy
def test_a_push_killed_twice_leaves_no_manifest_and_resumes_each_time(small_store, tmp_path):
    url = str(tmp_path / "remote")
    first = _sent(_killed_at(["push", str(small_store), url], "push val.beton"))  # between two files
    assert first and not (Path(url) / MANIFEST).exists()  # the remote is incomplete by definition
    second = _sent(
        _killed_at(["push", str(small_store), url], "push MANIFEST.json")
    )  # every file sent, not the MANIFEST
    assert not (Path(url) / MANIFEST).exists()
    assert not set(second) & {n for n in first if (Path(url) / n).stat().st_size == (small_store / n).stat().st_size}
    result = subprocess.run([KDSTORE, "push", str(small_store), url, "--no-progress"], capture_output=True, text=True)
    assert result.returncode == 0 and _sent(result.stderr.splitlines()) == [], result.stderr  # nothing sent again
    _same(small_store, pull(PullConfig(url=url, out=str(tmp_path / "pulled"), progress=False)))


@pytest.mark.heavy
def test_a_pull_killed_mid_way_leaves_no_dir_and_resumes_without_refetching(small_store, tmp_path):
    url = str(tmp_path / "remote")
    push(PushConfig(store=str(small_store), url=url, progress=False))
    out = tmp_path / "pulled"
    said = _killed_at(["pull", url, str(out)], "pull val.beton")
    fetched = [line.split()[1] for line in said if line.startswith("fetching ")]
    assert not out.exists() and fetched  # DIR absent; what was fetched waits in the staging directory
    result = subprocess.run([KDSTORE, "pull", url, str(out), "--no-progress"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    again = [line.split()[1] for line in result.stderr.splitlines() if line.startswith("fetching ")]
    assert not set(again) & set(fetched) and sorted(again + fetched) == sorted(NAMES)
    _same(small_store, out)


def test_a_remote_that_is_not_a_store_and_an_existing_dir_are_one_line(small_store, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "a.txt").write_text("x")
    (foreign / MANIFEST).write_text(json.dumps({"sha256": {"a.txt": "0" * 64}}))
    result = CliRunner().invoke(cli, ["pull", str(foreign), str(tmp_path / "x"), "--no-progress"])
    assert result.exit_code != 0 and len(result.output.strip().splitlines()) == 1, result.output
    assert "not a kdstore store's (it lists no teacher.h5, train.beton, val.beton)" in result.output
    url = str(tmp_path / "remote")
    push(PushConfig(store=str(small_store), url=url, progress=False))
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["pull", url, str(taken), "--no-progress"])
    assert result.exit_code != 0 and len(result.output.strip().splitlines()) == 1, result.output
    assert (taken / "notes.txt").read_text() == "mine" and not (taken / MANIFEST).exists()


@pytest.mark.parametrize("url, package", [("gs://lab-bucket/store", "gcsfs"), ("az://container/store", "adlfs")])
def test_a_missing_backend_names_the_package_to_install(small_store, url, package):
    for name in ("gcsfs", "adlfs"):
        if importlib.util.find_spec(name):
            pytest.skip(f"{name} is installed here")
    result = CliRunner().invoke(cli, ["push", str(small_store), url, "--no-progress"])
    assert result.exit_code != 0 and f"install {package} (pip install {package})" in result.output, result.output


def test_training_on_a_pulled_store_equals_training_on_the_original(small_store, tmp_path):
    from kdstore.train import loop as train
    from kdstore.train.config import TrainConfig

    url = str(tmp_path / "remote")
    push(PushConfig(store=str(small_store), url=url, progress=False))
    pulled = pull(PullConfig(url=url, out=str(tmp_path / "pulled"), progress=False))
    rows = []
    for store in (small_store, pulled):
        out = tmp_path / f"run-{len(rows)}"
        train.run(TrainConfig(out=str(out), store=str(store), epochs=1, batch_size=8, progress=False))
        rows.append([json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()])
    assert [untimed(r) for r in rows[0]] == [untimed(r) for r in rows[1]]


def test_overwrite_resends_a_file_of_the_same_size_with_other_bytes(small_store, tmp_path):
    url = str(tmp_path / "remote")
    push(PushConfig(store=str(small_store), url=url, progress=False))
    other = tmp_path / "other"
    shutil.copytree(small_store, other)
    data = bytearray((other / "val.beton").read_bytes())
    data[-1] ^= 0xFF  # the same size, other bytes (the store's MANIFEST says so)
    (other / "val.beton").write_bytes(bytes(data))
    manifest = json.loads((other / MANIFEST).read_text())
    manifest["sha256"]["val.beton"] = __import__("hashlib").sha256(bytes(data)).hexdigest()
    (other / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(KdstoreError, match="holds another store; pass --overwrite"):
        push(PushConfig(store=str(other), url=url, progress=False))
    result = push(PushConfig(store=str(other), url=url, overwrite=True, progress=False))
    assert result["sent"] == ["val.beton"] and sorted(result["kept"]) == ["teacher.h5", "train.beton"]
    assert (Path(url) / "val.beton").read_bytes() == bytes(data)
