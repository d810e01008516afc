"""Stores that travel: `kdstore push STORE URL`, `kdstore pull URL DIR` and `kdstore inspect URL`.

URLs go through fsspec: plain paths and `file://`, `memory://`, and whatever fsspec packages are
installed (`s3://` with s3fs, `gs://` with gcsfs, `az://` with adlfs, `hf://` with
huggingface_hub). Credentials come from each backend's usual places; kdstore never prints one.

The layout on the remote is the store's own: URL/train.beton, URL/val.beton, URL/teacher.h5 and
URL/MANIFEST.json, written last, so that a remote store without its MANIFEST is incomplete by
definition (a push that was stopped). A push sends only a verified store, and a stopped push
resumes by itself: a file already there with its local size is not sent again (the MANIFEST,
sent last, is what vouches for the bytes; `pull` checks them). A pull downloads into the hidden
staging directory beside DIR (as `cache` builds one), checks every file's sha256 against the
MANIFEST as it lands (a file that differs is fetched once more, then refused in one line
naming it), keeps what a stopped pull already checked, and publishes atomically."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdstore.errors import KdstoreError
from kdstore.options import opt, path_problems
from kdstore.runtime.console import bytes_progress, say
from kdstore.runtime.hashing import sha256_file
from kdstore.store.format import BETONS, H5_NAME, MANIFEST, Store
from kdstore.store.publish import _is_stage, claim, commit_dir, fresh_stage, link_or_copy, staging_dir
from kdstore.store.quantized import stored_dtype
from kdstore.store.verification import verify
from kdstore.version import __version__

CARD = "README.md"  # the store card push writes beside the store
BACKENDS = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs", "hf": "huggingface_hub"}


def remote(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path on it) of `url`, or a one-line error naming the package to install."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        scheme = url.split("://", 1)[0] if "://" in url else "file"
        package = BACKENDS.get(scheme)
        hint = f"; install {package} (pip install {package})" if package else ""
        raise KdstoreError(f"{url}: no filesystem for {scheme}:// ({type(e).__name__}){hint}") from None


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


def read_manifest(url: str) -> dict[str, Any]:
    """The MANIFEST.json of the store at `url`; a one-line error when there is none (incomplete)."""
    fs, root = remote(url)
    try:
        manifest = json.loads(fs.cat_file(_join(root, MANIFEST)))
    except FileNotFoundError:
        raise KdstoreError(f"{url}: no {MANIFEST} there: not a complete kdstore store (a push not finished?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise KdstoreError(f"{url}/{MANIFEST}: not a kdstore manifest (unreadable JSON)") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("sha256"), dict):
        raise KdstoreError(f"{url}/{MANIFEST}: not a kdstore manifest (no sha256 of its files)")
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
    problems = verify(store)
    if problems:
        raise KdstoreError(f"{store}: not sent, it does not verify ({problems[0]})")
    manifest = json.loads((store / MANIFEST).read_text())
    fs, root = remote(cfg.url)
    there = _join(root, MANIFEST)
    if fs.exists(there):
        if read_manifest(cfg.url)["sha256"] == manifest["sha256"]:
            say(f"{cfg.url} already holds this store; nothing sent")
            return {"url": cfg.url, "sent": [], "kept": list(manifest["sha256"])}
        if not cfg.overwrite:
            raise KdstoreError(f"{cfg.url} holds another store; pass --overwrite to replace it")
        fs.rm_file(there)  # incomplete from here until the new MANIFEST lands
    fs.makedirs(root, exist_ok=True)
    sent, kept = [], []
    for name in manifest["sha256"]:
        local, target = store / name, _join(root, name)
        if fs.exists(target) and fs.size(target) == local.stat().st_size:
            kept.append(name)  # a stopped push's file: the MANIFEST vouches for it, pull checks it
            continue
        say(f"sending {name} ({local.stat().st_size / 2**20:,.1f} MiB)")
        _copy(fs.put_file, str(local), target, f"sending {name}", cfg.progress)
        sent.append(name)
    fs.pipe_file(_join(root, CARD), card(store).encode())  # a Hub dataset page's text; not in the MANIFEST
    fs.pipe_file(there, (store / MANIFEST).read_bytes())  # last: the remote store is complete now
    say(
        f"pushed {store} to {cfg.url}: sent {', '.join(sent) or 'nothing'}"
        + (f", kept {', '.join(kept)}" if kept else "")
    )
    return {"url": cfg.url, "sent": sent, "kept": kept}


@dataclass(frozen=True, kw_only=True)
class PullConfig:
    """`kdstore pull`: fetch the store at a URL into a directory, every file checked against its
    MANIFEST, published atomically (`pull(cfg)` runs it)."""

    url: str = opt(help="The store's URL (as `push` took it).", required=True)
    out: str = opt(help="The directory to create (the store).", required=True, path=True)
    only: str = opt(
        "",
        "'teacher': fetch only teacher.h5 (and the MANIFEST); the images are taken from the store already at OUT, "
        "which must hold the same ones (their sha256 as the MANIFEST's).",
        choices=("", "teacher"),
    )
    overwrite: bool = opt(False, "Replace the store at OUT (needed by --only teacher, which replaces its teacher).")
    progress: bool = opt(True, "Progress bars (bytes, bytes/s, ETA) on a terminal.")


def pull(cfg: PullConfig) -> Path:
    """Fetch cfg.url into cfg.out; returns its path."""
    wrong = path_problems(cfg)
    if wrong:
        raise KdstoreError(wrong[0])
    if cfg.only not in ("", "teacher"):
        raise KdstoreError(f"--only must be 'teacher' (or not given), got {cfg.only!r}")
    manifest = read_manifest(cfg.url)
    out = claim(cfg.out, cfg.overwrite or bool(cfg.only))
    stage = staging_dir(out)
    if not _is_stage(stage):  # a stopped pull's (kept) or none: a fresh one
        fresh_stage(stage)
    local = _local_images(out, manifest) if cfg.only else {}
    fs, root = remote(cfg.url)
    for name, digest in manifest["sha256"].items():
        target = stage / name
        if name in local:
            target.unlink(missing_ok=True)
            link_or_copy(local[name], target)
        elif target.is_file() and sha256_file(target) == digest:
            say(f"{name}: kept from a stopped pull (its sha256 checked)")
        else:
            _fetch(fs, _join(root, name), target, digest, f"{cfg.url}/{name}", cfg.progress)
    (stage / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    problems = verify(stage)
    if problems:
        raise KdstoreError(f"{cfg.url}: the pulled store does not verify ({problems[0]}); not published")
    commit_dir(stage, out)
    say(f"pulled {cfg.url} into {out}" + (" (its teacher; the images were already there)" if cfg.only else ""))
    return out


def _fetch(fs: Any, source: str, target: Path, digest: str, named: str, progress: bool) -> None:
    """Download `source` to `target` (through a temporary name), checked against `digest`: a
    file that differs is fetched once more, then refused in one line naming it."""
    tmp = target.with_name(f".{target.name}.part")
    for attempt in (1, 2):
        say(f"fetching {target.name}" + (" again (its sha256 differed)" if attempt == 2 else ""))
        try:
            _copy(fs.get_file, source, str(tmp), f"fetching {target.name}", progress)
        except FileNotFoundError:
            raise KdstoreError(f"{named}: missing, though the MANIFEST lists it; the remote store is damaged") from None
        if sha256_file(tmp) == digest:
            tmp.replace(target)
            return
    tmp.unlink(missing_ok=True)
    raise KdstoreError(f"{named}: its sha256 differs from the MANIFEST's after two downloads; nothing was published")


def _local_images(out: Path, manifest: dict[str, Any]) -> dict[str, Path]:
    """--only teacher: the .beton files of the store at `out`, when their sha256 are the MANIFEST's."""
    if not (out / MANIFEST).is_file():
        raise KdstoreError(f"--only teacher takes the images from the store at {out}, and there is none")
    mine = json.loads((out / MANIFEST).read_text()).get("sha256", {})
    for name in BETONS.values():
        if mine.get(name) != manifest["sha256"].get(name):
            raise KdstoreError(f"--only teacher: {out}'s {name} is not the remote store's (another sha256)")
    return {name: out / name for name in BETONS.values()}


def card(store: Path) -> str:
    """The store card: what a store holds, for the page of a remote store (a Hub dataset's)."""
    opened = Store.open(store)
    a, manifest = opened.attrs, json.loads((store / MANIFEST).read_text())
    views = opened.train.views
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
        f"| dataset | {a['dataset']}: {len(opened.train)} training and {len(opened.val)} validation images, "
        f"{a['num_classes']} classes, {a['image_size']} px |",
        f"| logits | {stored_dtype(opened.train.logits)} |",
        f"| views | {views.count} per training image ({views.storage})" + " |"
        if views is not None
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
    import h5py

    manifest = read_manifest(url)
    fs, root = remote(url)
    sizes = {name: fs.size(_join(root, name)) for name in manifest["sha256"]}
    card_path = _join(root, CARD)
    text = fs.cat_file(card_path).decode("utf-8", "replace") if fs.exists(card_path) else ""
    with fs.open(_join(root, H5_NAME), "rb") as f, h5py.File(f, "r") as h5:
        attrs = {k: (v.item() if hasattr(v, "item") and getattr(v, "ndim", 1) == 0 else v) for k, v in h5.attrs.items()}
        views = int(h5["train/views/params"].shape[1]) if "train/views/params" in h5 else 0
        dtype = str(h5["train/logits"].dtype)
    return {
        "url": url,
        "manifest": manifest,
        "sizes": sizes,
        "attrs": attrs,
        "views": views,
        "logits_dtype": dtype,
        "card": text,
    }
