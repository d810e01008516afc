"""Stores that travel: `kdstore push STORE URL`, `kdstore pull URL DIR` and `kdstore inspect URL`.

URLs go through fsspec: plain paths and `file://`, `memory://`, and whatever fsspec packages are
installed (`s3://` with s3fs, `gs://` with gcsfs, `az://` with adlfs, `hf://` with
huggingface_hub). Credentials come from each backend's usual places; kdstore never prints one.

The layout on the remote is the store's own: URL/train.beton, URL/val.beton, URL/teacher.h5,
URL/README.md (the store card) and URL/MANIFEST.json, written last, so that a remote store
without its MANIFEST is incomplete by definition (a push that was stopped). A file larger than
PART_BYTES (5 GB, the Hugging Face Hub's limit) is sent in parts, URL/NAME.part-00000, ..., listed
with their sizes in URL/PARTS.json (sent before the MANIFEST); a store has at most a few dozen
files, far below the Hub's 10,000 per folder. A push sends only a verified store, and a stopped
push resumes by itself: URL/SENDING.json (written first, removed after the MANIFEST) names the
sha256 of the files being sent, and a file (or part) already there with its local size and the
same sha256 there is not sent again (the MANIFEST, sent last, vouches for the bytes; `pull`
checks them).

`hf://datasets/ORG/NAME` is a dataset repository of the Hub, written through `huggingface_hub`'s
HfApi: one commit per file (or part), the MANIFEST in the last one, so a stopped push resumes at
the file it stopped in. Every other URL goes through its fsspec filesystem.

A pull downloads into the hidden staging directory beside DIR (as `cache` builds one), checks
every file's sha256 against the MANIFEST as it lands (a file that differs is fetched once more,
then refused in one line naming it), keeps what a stopped pull already checked (whole files, and
the finished parts of a file sent in parts), and publishes atomically. `--only teacher` or
`--only train,val` fetches those files and takes the others from the store already at DIR,
which must hold the same ones (their sha256 as the MANIFEST's).

An authentication failure (no or wrong credentials, a repository one may not write) is one line
naming the backend; kdstore never prints or stores a credential."""

from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from kdstore.errors import KdstoreError
from kdstore.options import opt, path_problems
from kdstore.runtime import interrupts
from kdstore.runtime.console import bytes_progress, say
from kdstore.runtime.hashing import sha256_file
from kdstore.store.format import BETONS, H5_NAME, MANIFEST
from kdstore.store.publish import _is_stage, claim, commit_dir, fresh_stage, link_or_copy, staging_dir
from kdstore.store.verification import hash_problems
from kdstore.store.views import STORED
from kdstore.version import __version__

CARD = "README.md"  # the store card push writes beside the store
PARTS = "PARTS.json"  # {file: [part sizes]} for the files sent in parts
SENDING = "SENDING.json"  # the sha256 of the files a push under way sends (gone once its MANIFEST is there)
PART_BYTES = 5 * 10**9  # the most a remote file holds (the Hub's limit); a larger store file goes in parts
BACKENDS = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs", "hf": "huggingface_hub"}
# where the backend's credentials come from, for its one-line authentication error
CREDENTIALS = {
    "s3": "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws/credentials or an instance role",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS or `gcloud auth application-default login`",
    "az": "AZURE_STORAGE_CONNECTION_STRING or `az login`",
    "hf": "HF_TOKEN or `hf auth login`",
}
CREDENTIALS["gcs"], CREDENTIALS["abfs"] = CREDENTIALS["gs"], CREDENTIALS["az"]


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0] if "://" in url else "file"


def remote(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path on it) of `url`, or a one-line error naming the package to install."""
    import fsspec

    scheme = scheme_of(url)
    if scheme in BACKENDS and not url.split("://", 1)[1].strip("/"):
        what = "repository (hf://datasets/ORG/NAME)" if scheme == "hf" else f"bucket ({scheme}://BUCKET/PATH)"
        raise KdstoreError(f"{url}: no {what} in the URL")
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        package = BACKENDS.get(scheme)
        hint = f"; install {package} (pip install {package})" if package else ""
        raise KdstoreError(f"{url}: no filesystem for {scheme}:// ({type(e).__name__}){hint}") from None
    fs.invalidate_cache()  # listings cached by an earlier call (s3fs keeps them) may be stale
    return fs, path


@contextmanager
def backend_errors(url: str) -> Iterator[None]:
    """An authentication failure or a missing bucket from the backend, as one line naming it."""
    scheme = scheme_of(url)
    try:
        yield
    except KdstoreError:
        raise
    except Exception as e:  # the backends' own types (botocore, google.auth, azure, huggingface_hub)
        name = type(e).__name__
        status = getattr(getattr(e, "response", None), "status_code", None)
        if (
            isinstance(e, PermissionError)
            or status in (401, 403)
            or any(w in name for w in ("Credential", "Auth", "Unauthorized", "Forbidden", "GatedRepo"))
        ):
            where = CREDENTIALS.get(scheme, "the backend's usual configuration")
            raise KdstoreError(
                f"{url}: authentication failed for {scheme}:// ({name}); set its credentials the usual way ({where})"
            ) from None
        if name in ("NoSuchBucket", "RepositoryNotFoundError") or "NoSuchBucket" in str(e)[:200]:
            raise KdstoreError(f"{url}: the {scheme}:// bucket or repository does not exist ({name})") from None
        raise


def _join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}"


def _copy(copy: Any, source: str, target: str, label: str, progress: bool) -> None:
    """fs.put_file or fs.get_file from `source` to `target`, with a bytes bar on a terminal
    (fsspec's callback reports the bytes as they move)."""
    from fsspec.callbacks import Callback

    with bytes_progress(progress) as bar:
        task = bar.add_task(label, total=None)

        class _Bar(Callback):
            def call(self, *args: Any, **kwargs: Any) -> None:
                bar.update(task, total=self.size, completed=self.value)

        copy(source, target, callback=_Bar())


class FsRemote:
    """A remote store directory through an fsspec filesystem: what push and pull do there."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.fs, self.root = remote(url)

    def exists(self, name: str) -> bool:
        return self.fs.exists(_join(self.root, name))

    def size(self, name: str) -> int | None:
        path = _join(self.root, name)
        return self.fs.size(path) if self.fs.exists(path) else None

    def cat(self, name: str) -> bytes:
        return self.fs.cat_file(_join(self.root, name))

    def pipe(self, name: str, data: bytes) -> None:
        self.fs.pipe_file(_join(self.root, name), data)

    def rm(self, name: str) -> None:
        self.fs.rm_file(_join(self.root, name))

    def prepare(self) -> None:
        self.fs.makedirs(self.root, exist_ok=True)

    def put(self, local: Path, name: str, offset: int, length: int, progress: bool) -> None:
        """Send `length` bytes of `local` from `offset` as the remote file `name`."""
        target = _join(self.root, name)
        if offset == 0 and length == local.stat().st_size:
            _copy(self.fs.put_file, str(local), target, f"sending {name}", progress)
            return
        with bytes_progress(progress) as bar, open(local, "rb") as src, self.fs.open(target, "wb") as dst:
            task = bar.add_task(f"sending {name}", total=length)
            src.seek(offset)
            left = length
            while left:
                chunk = src.read(min(CHUNK, left))
                dst.write(chunk)
                left -= len(chunk)
                bar.update(task, completed=length - left)

    def get(self, name: str, target: Path, progress: bool) -> None:
        _copy(self.fs.get_file, _join(self.root, name), str(target), f"fetching {name}", progress)


CHUNK = 8 * 2**20  # bytes read and written at a time when a file goes in parts


class HubRemote:
    """A dataset repository of the Hugging Face Hub (hf://datasets/ORG/NAME) through HfApi: one
    commit per file sent, reads through the Hub's fsspec filesystem."""

    def __init__(self, url: str) -> None:
        from huggingface_hub import HfApi

        parts = url.split("://", 1)[1].strip("/").split("/")
        if len(parts) != 3 or parts[0] != "datasets":
            raise KdstoreError(f"{url}: a store goes to a whole Hub dataset repository, hf://datasets/ORG/NAME")
        self.url, self.repo, self.api = url, f"{parts[1]}/{parts[2]}", HfApi()

    def _info(self, name: str) -> Any:
        found = self.api.get_paths_info(self.repo, [name], repo_type="dataset")
        return found[0] if found else None

    def exists(self, name: str) -> bool:
        return self._info(name) is not None

    def size(self, name: str) -> int | None:
        info = self._info(name)
        return None if info is None else int(info.size)

    def cat(self, name: str) -> bytes:
        return Path(self.api.hf_hub_download(self.repo, name, repo_type="dataset", force_download=True)).read_bytes()

    def pipe(self, name: str, data: bytes) -> None:
        self._upload(data, name)

    def rm(self, name: str) -> None:
        self.api.delete_file(name, self.repo, repo_type="dataset", commit_message=f"kdstore: remove {name}")

    def prepare(self) -> None:
        self.api.create_repo(self.repo, repo_type="dataset", exist_ok=True)

    def put(self, local: Path, name: str, offset: int, length: int, progress: bool) -> None:
        whole = offset == 0 and length == local.stat().st_size
        with open(local, "rb") as f:
            if not whole:  # a part: its bytes (at most PART_BYTES) through a temporary file, not memory
                with tempfile.TemporaryFile(dir=local.parent) as part:
                    f.seek(offset)
                    shutil.copyfileobj(_Limited(f, length), part, CHUNK)
                    part.seek(0)
                    self._upload(part, name)
                return
            self._upload(f, name)

    def _upload(self, fileobj: Any, name: str) -> None:
        self.api.upload_file(
            path_or_fileobj=fileobj,
            path_in_repo=name,
            repo_id=self.repo,
            repo_type="dataset",
            commit_message=f"kdstore: {name}",
        )

    def get(self, name: str, target: Path, progress: bool) -> None:
        fs, root = remote(self.url)
        _copy(fs.get_file, _join(root, name), str(target), f"fetching {name}", progress)


class _Limited:
    """A file object that reads at most `left` bytes of another."""

    def __init__(self, f: Any, left: int) -> None:
        self.f, self.left = f, left

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.f.read(n)
        self.left -= len(data)
        return data


def open_remote(url: str) -> FsRemote | HubRemote:
    """The remote store at `url`: the Hub's API for hf://datasets/..., else fsspec."""
    if scheme_of(url) == "hf":
        try:
            return HubRemote(url)
        except ImportError:
            raise KdstoreError(
                f"{url}: no filesystem for hf:// ; install huggingface_hub (pip install huggingface_hub)"
            ) from None
    return FsRemote(url)


def pieces(name: str, size: int, part_bytes: int) -> list[tuple[str, int, int]]:
    """How a store file of `size` bytes lies on the remote: [(remote name, offset, length)], one
    piece when it fits `part_bytes`, else NAME.part-00000, ... of part_bytes each (the last less)."""
    if size <= part_bytes:
        return [(name, 0, size)]
    return [
        (f"{name}.part-{i:05d}", off, min(part_bytes, size - off)) for i, off in enumerate(range(0, size, part_bytes))
    ]


NOT_FOUND = ("EntryNotFoundError", "RemoteEntryNotFoundError")  # the Hub's "no such file"


def read_manifest(url: str, where: FsRemote | HubRemote | None = None) -> dict[str, Any]:
    """The MANIFEST.json of the store at `url`; a one-line error when there is none (incomplete)."""
    r = where or open_remote(url)
    with backend_errors(url):
        try:
            raw = r.cat(MANIFEST)
        except Exception as e:
            if "bucket does not exist" in str(e):
                raise KdstoreError(f"{url}: the {scheme_of(url)}:// bucket does not exist") from None
            if isinstance(e, FileNotFoundError) or type(e).__name__ in NOT_FOUND:
                raise KdstoreError(
                    f"{url}: no {MANIFEST} there: not a complete kdstore store (a push not finished?)"
                ) from None
            raise
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise KdstoreError(f"{url}/{MANIFEST}: not a kdstore manifest (unreadable JSON)") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("sha256"), dict):
        raise KdstoreError(f"{url}/{MANIFEST}: not a kdstore manifest (no sha256 of its files)")
    missing = sorted({H5_NAME, *BETONS.values()} - set(manifest["sha256"]))
    if missing:
        raise KdstoreError(f"{url}/{MANIFEST}: not a kdstore store's (it lists no {', '.join(missing)})")
    return manifest


@dataclass(frozen=True, kw_only=True)
class PushConfig:
    """`kdstore push`: send a verified store to a URL, its MANIFEST last (`push(cfg)` runs it)."""

    store: str = opt(help="The store to send (it is verified first).", required=True, path=True)
    url: str = opt(help="Where to: a path, file://, memory://, s3://, gs://, az:// or hf://.", required=True)
    overwrite: bool = opt(
        False, "Replace another store at URL (its MANIFEST goes first, so it is incomplete meanwhile)."
    )
    progress: bool = opt(True, "Progress bars (bytes, bytes/s, ETA) on a terminal.")


def push(cfg: PushConfig) -> dict[str, Any]:
    """Send cfg.store to cfg.url; returns what was sent and what was already there."""
    wrong = path_problems(cfg)
    if wrong:
        raise KdstoreError(wrong[0])
    store = Path(cfg.store)
    problems = hash_problems(store)  # the bytes cache checked and published (`verify` adds an open's checks)
    if problems:
        raise KdstoreError(f"{store}: not sent, it does not verify ({problems[0]})")
    manifest = json.loads((store / MANIFEST).read_text())
    r = open_remote(cfg.url)
    with backend_errors(cfg.url):
        there: dict[str, str] = {}  # what the files at the URL are (their sha256), as far as it is known
        if r.exists(MANIFEST):
            there = read_manifest(cfg.url, r)["sha256"]
            if there == manifest["sha256"]:
                say(f"{cfg.url} already holds this store; nothing sent")
                return {"url": cfg.url, "sent": [], "kept": list(manifest["sha256"])}
            if not cfg.overwrite:
                raise KdstoreError(f"{cfg.url} holds another store; pass --overwrite to replace it")
            r.rm(MANIFEST)  # incomplete from here until the new MANIFEST lands
        elif r.exists(SENDING):  # a stopped push's: the files it sent are those it named
            there = json.loads(r.cat(SENDING))
        r.prepare()
        r.pipe(SENDING, json.dumps(manifest["sha256"]).encode())
        sent, kept, layout = _send(r, store, manifest, there, cfg.progress)
        if layout:
            r.pipe(PARTS, json.dumps(layout, indent=2, sort_keys=True).encode())
        elif r.exists(PARTS):
            r.rm(PARTS)  # an earlier store's
        r.pipe(CARD, card(store).encode())  # a Hub dataset page's text; not in the MANIFEST
        interrupts.phase(f"push {MANIFEST}")
        r.pipe(MANIFEST, (store / MANIFEST).read_bytes())  # last: the remote store is complete now
        r.rm(SENDING)
    say(
        f"pushed {store} to {cfg.url}: sent {', '.join(sent) or 'nothing'}"
        + (f", kept {', '.join(kept)}" if kept else "")
    )
    return {"url": cfg.url, "sent": sent, "kept": kept}


def _send(r: FsRemote | HubRemote, store: Path, manifest: dict[str, Any], there: dict[str, str], progress: bool):
    """Every file of the store (in parts above PART_BYTES) not already there: a file (or part) is
    kept when it has its local size and `there` (what a stopped push or the replaced store says
    the URL holds) gives it the same sha256. Returns (names sent, names kept, {file: part sizes}
    of the files sent in parts)."""
    sent, kept, layout = [], [], {}
    for name, digest in manifest["sha256"].items():
        local = store / name
        split = pieces(name, local.stat().st_size, PART_BYTES)
        if len(split) > 1:
            layout[name] = [n for _, _, n in split]
        for remote_name, offset, length in split:
            if there.get(name) == digest and r.size(remote_name) == length:
                kept.append(remote_name)  # a stopped push's file: the MANIFEST vouches for it, pull checks it
                continue
            interrupts.phase(f"push {remote_name}")
            say(f"sending {remote_name} ({length / 2**20:,.1f} MiB)")
            r.put(local, remote_name, offset, length, progress)
            sent.append(remote_name)
    return sent, kept, layout


ONLY = {"teacher": H5_NAME, **BETONS}  # --only's words: the store files they name


@dataclass(frozen=True, kw_only=True)
class PullConfig:
    """`kdstore pull`: fetch the store at a URL into a directory, every file checked against its
    MANIFEST, published atomically (`pull(cfg)` runs it)."""

    url: str = opt(help="The store's URL (as `push` took it).", required=True)
    out: str = opt(help="The directory to create (the store).", required=True, path=True)
    only: str = opt(
        "",
        "Fetch only these (comma-separated: teacher, train, val) and take the other files from the store already "
        "at OUT, which must hold the remote's (their sha256 as the MANIFEST's): 'teacher' when a second teacher "
        "was cached for the same images, 'train,val' for the images.",
    )
    overwrite: bool = opt(False, "Replace the store at OUT (needed by --only, which replaces part of it).")
    progress: bool = opt(True, "Progress bars (bytes, bytes/s, ETA) on a terminal.")


def parse_only(spec: str) -> list[str]:
    """--only: the store files named (teacher, train, val), or [] for all of them."""
    words = [w.strip() for w in spec.split(",") if w.strip()]
    unknown = [w for w in words if w not in ONLY]
    if unknown:
        raise KdstoreError(f"--only: unknown {', '.join(unknown)}; name some of {', '.join(ONLY)}")
    return [ONLY[w] for w in dict.fromkeys(words)]


def pull(cfg: PullConfig) -> Path:
    """Fetch cfg.url into cfg.out; returns its path."""
    wrong = path_problems(cfg)
    if wrong:
        raise KdstoreError(wrong[0])
    only = parse_only(cfg.only)
    r = open_remote(cfg.url)
    manifest = read_manifest(cfg.url, r)
    out = claim(cfg.out, cfg.overwrite or bool(only))
    local = _local_files(out, manifest, only) if only else {}
    stage = staging_dir(out)
    if not _is_stage(stage):  # a stopped pull's (kept) or none: a fresh one
        fresh_stage(stage)
    with backend_errors(cfg.url):
        layout = json.loads(r.cat(PARTS)) if r.exists(PARTS) else {}
        for name, digest in manifest["sha256"].items():
            target = stage / name
            if name in local:
                target.unlink(missing_ok=True)
                link_or_copy(local[name], target)
            elif target.is_file() and sha256_file(target) == digest:
                say(f"{name}: kept from a stopped pull (its sha256 checked)")
            else:
                interrupts.phase(f"pull {name}")
                _fetch(r, name, layout.get(name), target, digest, cfg.progress)
    (stage / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    commit_dir(stage, out)  # every file is the pushed one (its sha256 checked as it landed)
    took = f" (fetched {', '.join(only)}; the other files were already there)" if only else ""
    say(f"pulled {cfg.url} into {out}{took}")
    return out


def _fetch(r: FsRemote | HubRemote, name: str, parts: list[int] | None, target: Path, digest: str, progress: bool):
    """Download the store file `name` (whole, or its parts of the sizes `parts`, each kept once
    complete) to `target` through a temporary name, checked against `digest`: a file that differs
    is fetched once more, then refused in one line naming it."""
    tmp = target.with_name(f".{name}.part")
    for attempt in (1, 2):
        say(f"fetching {name}" + (" again (its sha256 differed)" if attempt == 2 else ""))
        try:
            if parts is None:
                r.get(name, tmp, progress)
            else:
                _fetch_parts(r, name, parts, tmp, progress, fresh=attempt == 2)
        except FileNotFoundError:
            raise KdstoreError(
                f"{r.url}/{name}: missing, though the MANIFEST lists it; the remote store is damaged"
            ) from None
        if sha256_file(tmp) == digest:
            tmp.replace(target)
            return
    tmp.unlink(missing_ok=True)
    raise KdstoreError(
        f"{r.url}/{name}: its sha256 differs from the MANIFEST's after two downloads; nothing was published"
    )


def _fetch_parts(r: FsRemote | HubRemote, name: str, sizes: list[int], whole: Path, progress: bool, fresh: bool):
    """The parts of `name` into the staging directory (a part already there at its size is kept:
    a stopped pull resumes inside a large file), then joined into `whole`."""
    names = [remote_name for remote_name, _, _ in pieces(name, sum(sizes), sizes[0])]
    with open(whole, "wb") as out:
        for part_name, size in zip(names, sizes):
            part = whole.with_name(f".{part_name}")
            if fresh or not (part.is_file() and part.stat().st_size == size):
                r.get(part_name, part, progress)
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, CHUNK)
    for part_name in names:
        whole.with_name(f".{part_name}").unlink(missing_ok=True)


def _local_files(out: Path, manifest: dict[str, Any], fetched: list[str]) -> dict[str, Path]:
    """--only: the files of the store at `out` not fetched, when their sha256 are the MANIFEST's."""
    if not (out / MANIFEST).is_file():
        raise KdstoreError(f"--only takes the other files from the store at {out}, and there is none")
    mine = json.loads((out / MANIFEST).read_text()).get("sha256", {})
    kept = [name for name in manifest["sha256"] if name not in fetched]
    for name in kept:
        if mine.get(name) != manifest["sha256"][name]:
            raise KdstoreError(f"--only: {out}'s {name} is not the remote store's (another sha256); fetch it too")
    return {name: out / name for name in kept}


def h5_facts(h5: Any) -> dict[str, Any]:
    """What a store card and `inspect URL` say of teacher.h5, from its attributes and the shapes
    of its arrays (no array is read): attrs, sizes of the splits, views and their storage, dtype."""
    attrs = {k: (v.item() if hasattr(v, "item") and getattr(v, "ndim", 1) == 0 else v) for k, v in h5.attrs.items()}
    views = h5["train/views"] if "train/views" in h5 else None
    storage = next((kind for kind, arrays in STORED.items() if views is not None and arrays[0] in views), "")
    return {
        "attrs": attrs,
        "train": int(h5["train/labels"].shape[0]),
        "val": int(h5["val/labels"].shape[0]),
        "views": int(views["params"].shape[1]) if views is not None and "params" in views else 0,
        "storage": storage,
        "logits_dtype": str(h5["train/logits"].dtype),
    }


def card(store: Path) -> str:
    """The store card: what a store holds, for the page of a remote store (a Hub dataset's)."""
    import h5py

    with h5py.File(store / H5_NAME, "r") as h5:
        facts = h5_facts(h5)
    a, manifest = facts["attrs"], json.loads((store / MANIFEST).read_text())
    size = sum((store / name).stat().st_size for name in manifest["sha256"])
    lines = [
        f"# A kdstore store: {a['teacher']} on {a['dataset']}",
        "",
        "Teacher outputs cached once by kdstore for offline knowledge distillation: "
        "`kdstore pull URL DIR` fetches it (every file checked against MANIFEST.json), "
        "`kdstore train --store DIR` trains students from it.",
        "",
        "| | |",
        "|---|---|",
        f"| teacher | {a['teacher']} (input {a['input_size']} px) |",
        f"| teacher accuracy, train / val | {a['teacher_train_acc']:.2%} / {a['teacher_val_acc']:.2%} |",
        f"| dataset | {a['dataset']}: {facts['train']} training and {facts['val']} validation images, "
        f"{a['num_classes']} classes, {a['image_size']} px |",
        f"| logits | {facts['logits_dtype']} |",
        f"| views | {facts['views']} per training image ({facts['storage']}) |"
        if facts["views"]
        else "| views | none |",
        f"| size | {size / 2**20:,.1f} MiB |",
        f"| created | {manifest.get('created', '-')} with kdstore {a['kdstore_version']} (pushed with {__version__}) |",
        f"| schema | {manifest.get('schema_version', '-')} |",
        "",
    ]
    return "\n".join(lines)


def describe(url: str) -> dict[str, Any]:
    """What `kdstore inspect URL` shows without downloading the images: the MANIFEST, the
    sizes of the files, and teacher.h5's attributes (read through fsspec: its header only)."""
    manifest = read_manifest(url)
    with backend_errors(url):
        return _describe(url, manifest)


def _describe(url: str, manifest: dict[str, Any]) -> dict[str, Any]:
    import h5py

    fs, root = remote(url)
    sizes = {name: fs.size(_join(root, name)) for name in manifest["sha256"]}
    card_path = _join(root, CARD)
    text = fs.cat_file(card_path).decode("utf-8", "replace") if fs.exists(card_path) else ""
    with fs.open(_join(root, H5_NAME), "rb") as f, h5py.File(f, "r") as h5:
        facts = h5_facts(h5)
    return {
        "url": url,
        "manifest": manifest,
        "sizes": sizes,
        "attrs": facts["attrs"],
        "views": facts["views"],
        "logits_dtype": facts["logits_dtype"],
        "card": text,
    }
