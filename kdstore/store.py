"""The store: a directory with train.beton, val.beton, teacher.h5 and MANIFEST.json.

teacher.h5 (schema version 1), readable with plain h5py:

    /train/logits      (N, C) float16 (or float32)   teacher logits, tau = 1
    /train/labels      (N,)   int64                  true labels
    /train/sample_id   (N,)   int64                  id of row i; row i is position i of train.beton
    /train/confidence  (N,)   float32                max softmax probability
    /train/correct     (N,)   bool                   argmax == label
    /train/curriculum  (N,)   int64                  sample ids, easy to hard (class-stratified)
    /train/inverse     (N,)   int64                  sample ids, hard to easy
    /val/...           the same five per-sample datasets for the validation split
    root attributes    see `ROOT_ATTRS`; a merged store adds `merged_from`, `merge_confidence`

Optional, written by `cache --views K` (see views.py), for the training split only:

    /train/views/params        (N, K, P) int32    augmentation parameters of each view
    /train/views/logits        (N, K, C) float16  teacher logits on each view, or with --topk k:
    /train/views/topk_values   (N, K, k) float16  the k largest logits of each view
    /train/views/topk_indices  (N, K, k) int32    their class ids
    /train/views/fill          (N, K)    float32  the logit of every other class
    views attributes           augmentation (crop-flip | resized-crop-flip), seed, count, topk

MANIFEST.json is written last: its presence marks the store complete, and it records the
sha256 of every file so that `verify` can find corruption.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from .errors import KdstoreError
from .loading import read_int_fields
from .models import sha256_file
from .orders import confidence_and_correct, curriculum, inverse
from .views import Views, problems as view_problems

SCHEMA_VERSION = 1
MANIFEST = "MANIFEST.json"
H5_NAME = "teacher.h5"
BETONS = {"train": "train.beton", "val": "val.beton"}
SPLITS = ("train", "val")
PER_SAMPLE = ("logits", "labels", "sample_id", "confidence", "correct")
ORDERS = ("curriculum", "inverse")
ROOT_ATTRS = (
    "schema_version", "kdstore_version", "teacher", "teacher_stem", "checkpoint_sha256", "pretrained",
    "input_size", "image_size", "dataset", "num_classes", "class_names", "dataset_fingerprint",
    "teacher_train_acc", "teacher_val_acc", "created", "normalize_mean", "normalize_std",
    "split_part", "split_fraction", "split_seed", "split_members_sha256",
)


@dataclass
class Split:
    """Per-sample arrays of one split, rows in .beton order."""

    logits: np.ndarray  # (N, C) float32 in memory, whatever the stored dtype
    labels: np.ndarray  # (N,) int64
    sample_id: np.ndarray  # (N,) int64
    confidence: np.ndarray  # (N,) float32
    correct: np.ndarray  # (N,) bool
    curriculum: np.ndarray | None = None  # (N,) sample ids, train only
    inverse: np.ndarray | None = None
    views: Views | None = None  # stored augmented views (cache --views K), train only

    def __len__(self) -> int:
        return len(self.labels)

    @cached_property
    def _row_of_id(self) -> np.ndarray:
        """Dense id -> row table, built once (positions() runs per batch in `bench`)."""
        lookup = np.full(int(self.sample_id.max()) + 1, -1, dtype=np.int64)
        lookup[self.sample_id] = np.arange(len(self.sample_id))
        return lookup

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Row (= .beton position) of each sample id."""
        lookup = self._row_of_id
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= len(lookup) or (lookup[ids] < 0).any()):
            raise KdstoreError("sample ids not in this store were asked for")
        return lookup[ids]


def build_split(logits: np.ndarray, labels: np.ndarray, sample_id: np.ndarray, confidence: np.ndarray | None = None,
                correct: np.ndarray | None = None, with_orders: bool = False) -> Split:
    """A split from teacher logits; confidence and correctness from the logits unless given
    (a merged store brings its own); with_orders adds the curriculum and its inverse."""
    if confidence is None or correct is None:
        confidence, correct = confidence_and_correct(logits, labels)
    split = Split(logits, labels, sample_id, np.asarray(confidence, dtype=np.float32), np.asarray(correct, dtype=bool))
    if with_orders:
        order = curriculum(split.confidence, split.correct, labels)
        split.curriculum = sample_id[order]
        split.inverse = sample_id[inverse(order)]
    return split


def write_teacher_h5(path: Path, splits: dict[str, Split], attrs: dict[str, Any], logits_dtype: str = "float16") -> None:
    import h5py

    missing = [a for a in ROOT_ATTRS if a not in attrs]
    if missing:
        raise ValueError(f"missing store attributes: {missing}")
    with h5py.File(path, "w") as f:
        for key, value in attrs.items():
            f.attrs[key] = value
        for name, split in splits.items():
            g = f.create_group(name)
            for field in PER_SAMPLE + ORDERS:
                arr = getattr(split, field)
                if arr is None:
                    continue
                if field == "logits":
                    arr = arr.astype(logits_dtype)
                g.create_dataset(field, data=arr, fletcher32=True, chunks=True)
            if split.views is not None:
                _write_views(g.create_group("views"), split.views, logits_dtype)


def _write_views(g, views: Views, logits_dtype: str) -> None:
    g.attrs.update({"augmentation": views.augmentation, "seed": views.seed, "count": views.count, "topk": views.topk})
    arrays = {"params": views.params.astype(np.int32)}
    if views.logits is not None:
        arrays["logits"] = views.logits.astype(logits_dtype)
    else:
        arrays.update(topk_values=views.topk_values.astype(logits_dtype), topk_indices=views.topk_indices.astype(np.int32),
                      fill=views.fill.astype(np.float32))
    for name, arr in arrays.items():
        g.create_dataset(name, data=arr, fletcher32=True, chunks=True)


def _read_views(g) -> Views:
    arrays = {k: g[k][()] for k in ("params", "logits", "topk_values", "topk_indices", "fill") if k in g}
    return Views(augmentation=_attr(g.attrs.get("augmentation", "")), seed=int(g.attrs.get("seed", 0)), **arrays)


def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [_attr(v) for v in value.tolist()] if value.dtype.kind in "OSU" else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


class Store:
    """A complete store opened for reading; the cheap consistency checks run on open."""

    def __init__(self, path: Path, attrs: dict[str, Any], splits: dict[str, Split]) -> None:
        self.path = path
        self.attrs = attrs
        self.train = splits["train"]
        self.val = splits["val"]

    @property
    def num_classes(self) -> int:
        return int(self.attrs["num_classes"])

    def beton(self, split: str) -> Path:
        return self.path / BETONS[split]

    def identity(self) -> str:
        """The store's files as its manifest records them (sha256), plus the dataset fingerprint."""
        manifest = json.loads((self.path / MANIFEST).read_text())
        digests = ",".join(f"{k}={v[:12]}" for k, v in sorted(manifest["sha256"].items()))
        return f"{self.attrs['dataset_fingerprint'][:12]}|{digests}"

    @classmethod
    def open(cls, path: Path | str) -> "Store":
        path = Path(path)
        if not path.is_dir():
            raise KdstoreError(f"store {path} does not exist (make one with `kdstore cache`)")
        if not (path / MANIFEST).is_file():
            raise KdstoreError(f"store {path} is incomplete (no {MANIFEST}); rerun `kdstore cache`")
        for name in (H5_NAME, *BETONS.values()):
            if not (path / name).is_file():
                raise KdstoreError(f"store {path} is missing {name}")
        import h5py

        try:
            with h5py.File(path / H5_NAME, "r") as f:
                attrs = {k: _attr(v) for k, v in f.attrs.items()}
                if attrs.get("schema_version") != SCHEMA_VERSION:
                    raise KdstoreError(f"store {path} has schema version {attrs.get('schema_version')}, this kdstore reads {SCHEMA_VERSION}")
                splits = {}
                for name in SPLITS:
                    if name not in f:
                        raise KdstoreError(f"store {path}: {H5_NAME} has no '{name}' group")
                    g = f[name]
                    fields = PER_SAMPLE + (ORDERS if name == "train" else ())
                    absent = [k for k in fields if k not in g]
                    if absent:
                        raise KdstoreError(f"store {path}: {name} lacks {', '.join(absent)}")
                    arrays = {k: g[k][()] for k in fields}
                    arrays["logits"] = arrays["logits"].astype(np.float32)
                    splits[name] = Split(**arrays, views=_read_views(g["views"]) if "views" in g else None)
        except OSError as e:
            text = str(e).splitlines()[0]
            if "unable to lock file" in text.lower():
                raise KdstoreError(f"store {path}: the filesystem refused an HDF5 file lock ({text}); set HDF5_USE_FILE_LOCKING=FALSE") from None
            raise KdstoreError(f"store {path}: {H5_NAME} cannot be read ({text}); `kdstore verify` checks every file") from None
        store = cls(path, attrs, splits)
        store.check()
        recorded = json.loads((path / MANIFEST).read_text()).get("dataset_fingerprint")
        if recorded is not None and recorded != attrs.get("dataset_fingerprint"):
            raise KdstoreError(f"store {path}: {H5_NAME} belongs to another dataset (its fingerprint differs from {MANIFEST}'s)")
        return store

    def check(self) -> None:
        """Shapes, class count, finite logits, unique ids, orders, and agreement with the .betons."""
        c = self.num_classes
        if len(self.attrs.get("class_names", [])) != c:
            raise KdstoreError(f"store {self.path}: {len(self.attrs.get('class_names', []))} class names for {c} classes")
        for name in SPLITS:
            s: Split = getattr(self, name)
            n = len(s.labels)
            where = f"store {self.path}: {name}"
            if s.logits.ndim != 2 or s.logits.shape != (n, c):
                raise KdstoreError(f"{where} logits have shape {s.logits.shape}, expected ({n}, {c})")
            for field in ("sample_id", "confidence", "correct"):
                if getattr(s, field).shape != (n,):
                    raise KdstoreError(f"{where} {field} has shape {getattr(s, field).shape}, expected ({n},)")
            if not np.isfinite(s.logits).all():
                raise KdstoreError(f"{where} logits contain {int((~np.isfinite(s.logits)).sum())} NaN or inf values")
            if n and (s.labels.min() < 0 or s.labels.max() >= c):
                raise KdstoreError(f"{where} labels fall outside 0..{c - 1}")
            if len(np.unique(s.sample_id)) != n:
                raise KdstoreError(f"{where} sample ids are not unique")
            fields = read_int_fields(self.beton(name))
            if len(fields["sample_id"]) != n:
                raise KdstoreError(f"{where} has {n} samples but {BETONS[name]} has {len(fields['sample_id'])}")
            if not np.array_equal(fields["sample_id"], s.sample_id) or not np.array_equal(fields["label"], s.labels):
                raise KdstoreError(f"{where} sample ids or labels do not match {BETONS[name]} row by row")
            if s.views is not None:
                found = view_problems(s.views, n, c, int(self.attrs["image_size"]))
                if found:
                    raise KdstoreError(f"{where} {found[0]}")
        t = self.train
        for order in ORDERS:
            ids = getattr(t, order)
            if ids.shape != t.sample_id.shape or not np.array_equal(np.sort(ids), np.sort(t.sample_id)):
                raise KdstoreError(f"store {self.path}: train/{order} is not a permutation of the train sample ids")
        if not np.array_equal(t.inverse, t.curriculum[::-1]):
            raise KdstoreError(f"store {self.path}: train/inverse is not train/curriculum reversed")


def write_manifest(directory: Path, info: dict[str, Any]) -> None:
    """Record sha256 of every store file; written last, it marks the store complete."""
    files = {name: sha256_file(directory / name) for name in (H5_NAME, *BETONS.values())}
    tmp = directory / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"schema_version": SCHEMA_VERSION, "sha256": files, **info}, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, directory / MANIFEST)


def verify(path: Path) -> list[str]:
    """Recompute every file's sha256 against the manifest; returns one line per problem."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return [f"{path}: no {MANIFEST} (incomplete store)"]
    recorded = json.loads(manifest_path.read_text())["sha256"]
    problems = []
    for name, digest in recorded.items():
        if not (path / name).is_file():
            problems.append(f"{name}: missing")
        elif sha256_file(path / name) != digest:
            problems.append(f"{name}: sha256 differs from the manifest (file changed or corrupt)")
    if not problems:
        try:
            Store.open(path)  # fletcher32 checksums of every HDF5 dataset, and the consistency checks
        except KdstoreError as e:
            problems.append(str(e))
    return problems


def publish(stage: Path, out: Path, splits: dict[str, Split], attrs: dict[str, Any], logits_dtype: str, info: dict[str, Any]) -> None:
    """Finish a store built in `stage` (its .beton files already there): teacher.h5, then the
    manifest, then the reader's checks, then the rename to `out`."""
    write_teacher_h5(stage / H5_NAME, splits, attrs, logits_dtype)
    write_manifest(stage, info)
    Store.open(stage)  # the checks a reader runs, before the store is published
    commit_dir(stage, out)


def staging_dir(out: Path) -> Path:
    """The hidden sibling directory a store is built in before it is renamed into place."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


def commit_dir(tmp: Path, out: Path) -> None:
    """Move a finished staging directory to `out`, replacing a previous store only at the end."""
    out = Path(out)
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
