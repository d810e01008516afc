"""The store's format: a directory with train.beton, val.beton, teacher.h5 and MANIFEST.json;
its schema, writing teacher.h5, and opening a store (Store). Publishing a store is publish.py,
checking every byte of one verification.py.

teacher.h5 (schema version 2), readable with plain h5py:

    /train/logits      (N, C) float16 (or float32)   teacher logits, tau = 1        [contiguous]
                       or int8 codes with /train/logits_scale and /train/logits_offset (N,) float32:
                       logits = codes * scale + offset per row (quantized.py; schema version 3)
    /train/labels      (N,)   int64                  true labels
    /train/sample_id   (N,)   int64                  id of row i; row i is position i of train.beton
    /train/confidence  (N,)   float32                max softmax probability
    /train/correct     (N,)   bool                   argmax == label
    /train/curriculum  (N,)   int64                  sample ids, easy to hard (class-stratified)
    /train/inverse     (N,)   int64                  sample ids, hard to easy
    /val/...           the same five per-sample datasets for the validation split
    root attributes    see `ROOT_ATTRS`; a merged store adds `merged_from`, `merge_confidence`

Optional, written by `cache --views K` (see views.py), for the training split only:

    /train/views/params        (N, K, P) int32    augmentation parameters of each view  [contiguous]
    /train/views/logits        (N, K, C) float16  teacher logits on each view, or with --topk k:
    /train/views/topk_values   (N, K, k) float16  the k largest logits of each view
                               (int8 logits and top-k values: NAME_scale, NAME_offset (N, K) float32)
    /train/views/topk_indices  (N, K, k) int32    their class ids
    /train/views/fill          (N, K)    float32  the logit of every other class
                               or with --sample k:
    /train/views/sample_ids    (N, K, k) int16    k class ids drawn from softmax(z / sample_tau)
    views attributes           augmentation (crop-flip | resized-crop-flip), seed, count, topk, sample, sample_tau

The per-sample (N,) arrays are chunked with a fletcher32 checksum and read whole on open (a few
bytes per sample). The large arrays (marked contiguous) are stored uncompressed in one block each,
so that a reader maps them instead of reading them: a process holds only the rows it touches,
and every process on a machine shares one copy through the page cache. Their integrity is the
file's sha256 in MANIFEST.json, which every open checks.

MANIFEST.json is written last: its presence marks the store complete, and it records the
sha256 of every file so that `verify` can find corruption."""

from __future__ import annotations

import dataclasses
import json
import mmap
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from kdstore.data.beton import check_beton, read_int_fields
from kdstore.errors import KdstoreError
from kdstore.indices import Positions, SampleIds
from kdstore.method.curriculum import confidence_and_correct, curriculum, inverse
from kdstore.method.int8 import quantize
from kdstore.method.sparse_targets import DEFAULT_LOGITS_DTYPE
from kdstore.runtime.blocks import Blocks, LargeArray, release_pages, row_blocks
from kdstore.runtime.hashing import sha256_file, sha256_stream
from kdstore.store.file_rows import FileRows, remember
from kdstore.store.quantized import QUANTIZED_DTYPES, SUFFIXES, Quantized
from kdstore.store.quantized import problems as quantized_problems
from kdstore.store.views import Views
from kdstore.store.views import problems as view_problems
from kdstore.store.views import value_problems as view_value_problems

SCHEMA_VERSION = 2  # written for stores without int8 logits (readable by every kdstore since schema 2)
INT8_SCHEMA_VERSION = 3  # schema 2 + int8 logits (NAME, NAME_scale, NAME_offset): older readers refuse it
READABLE_SCHEMAS = (SCHEMA_VERSION, INT8_SCHEMA_VERSION)
LOGITS_DTYPES = ("float32", "float16", "int8")
MANIFEST = "MANIFEST.json"
H5_NAME = "teacher.h5"
BETONS = {"train": "train.beton", "val": "val.beton"}
SPLITS = ("train", "val")
PER_SAMPLE = ("logits", "labels", "sample_id", "confidence", "correct")
SMALL = ("labels", "sample_id", "confidence", "correct")  # read whole on open; the rest is mapped
ORDERS = ("curriculum", "inverse")
LOGIT_ARRAYS = ("logits", "topk_values")  # stored in --logits-dtype (int8: quantized.py)
VIEW_ARRAYS = (
    "params",
    "logits",
    "topk_values",
    "topk_indices",
    "fill",
    "sample_ids",
    "mix_partner",
    "mix_lam",
    "mix_box",
)


@dataclass(frozen=True, kw_only=True)
class StoreAttrs:
    """teacher.h5's root attributes: what the store holds and how it was made (a merged store adds
    `merged_from` and `merge_confidence`)."""

    schema_version: int = SCHEMA_VERSION
    kdstore_version: str
    teacher: str  # the teacher's timm name (merged: ensemble(a,b,...))
    teacher_stem: str
    checkpoint_sha256: str  # "" without a checkpoint; merged: comma-separated
    pretrained: bool
    input_size: int  # the teacher's input size
    image_size: int  # the stored images' size
    dataset: str
    num_classes: int
    class_names: list[str]
    dataset_fingerprint: str
    teacher_train_acc: float
    teacher_val_acc: float
    normalize_mean: list[float]
    normalize_std: list[float]
    split_part: str  # all, or holdout: the training samples the teacher's --split held out
    split_fraction: float
    split_seed: int
    split_members_sha256: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def of(cls, attrs: dict[str, Any]) -> "StoreAttrs":
        """The root attributes among an opened store's."""
        return cls(**{k: attrs[k] for k in ROOT_ATTRS})


ROOT_ATTRS = tuple(f.name for f in dataclasses.fields(StoreAttrs))


def mean_blocks(arrays: list[LargeArray]) -> Blocks:
    """The element-wise mean (float32) of same-shaped arrays, block by block; the pages of mapped
    inputs are released after every block."""
    first = arrays[0]

    def read():
        for lo, hi in row_blocks(first):
            yield np.mean([np.asarray(a[lo:hi], dtype=np.float32) for a in arrays], axis=0)
            for a in arrays:
                release_pages(a)

    return Blocks(tuple(first.shape), np.dtype(np.float32), read)


@dataclass(kw_only=True)
class Split:
    """Per-sample arrays of one split, rows in .beton order."""

    logits: LargeArray  # (N, C) in the stored dtype; a read-only memory map when opened
    labels: np.ndarray  # (N,) int64
    sample_id: SampleIds  # (N,) int64: the id of the sample at each position
    confidence: np.ndarray  # (N,) float32
    correct: np.ndarray  # (N,) bool
    curriculum: SampleIds | None = None  # (N,) sample ids (not positions), easy to hard; train only
    inverse: SampleIds | None = None
    views: Views | None = None  # stored augmented views (cache --views K), train only

    def __len__(self) -> int:
        return len(self.labels)

    @cached_property
    def _row_of_id(self) -> np.ndarray:
        """Dense id -> row table, built once (positions() runs per batch in `bench`)."""
        lookup = np.full(int(self.sample_id.max()) + 1, -1, dtype=np.int64)
        lookup[self.sample_id] = np.arange(len(self.sample_id))
        return lookup

    def curriculum_positions(self) -> Positions:
        """The curriculum (stored as sample ids) as .beton positions; training split only."""
        if self.curriculum is None:
            raise KdstoreError("only the training split has a curriculum")
        return self.positions(self.curriculum)

    def positions(self, ids: SampleIds) -> Positions:
        """Row (= .beton position) of each sample id."""
        lookup = self._row_of_id
        wanted = np.asarray(ids, dtype=np.int64)
        if wanted.size and (wanted.min() < 0 or wanted.max() >= len(lookup) or (lookup[wanted] < 0).any()):
            raise KdstoreError("sample ids not in this store were asked for")
        return Positions(lookup[wanted])


def build_split(
    logits: np.ndarray | Blocks,
    labels: np.ndarray,
    sample_id: np.ndarray,
    confidence: np.ndarray | None = None,
    correct: np.ndarray | None = None,
    with_orders: bool = False,
) -> Split:
    """A split from teacher logits; confidence and correctness from the logits unless given
    (the cache computes them chunk by chunk; a merged store brings its own); with_orders adds the
    curriculum and its inverse."""
    if confidence is None or correct is None:
        confidence, correct = confidence_and_correct(np.asarray(logits), labels)
    split = Split(
        logits=logits,
        labels=labels,
        sample_id=SampleIds(sample_id),
        confidence=np.asarray(confidence, dtype=np.float32),
        correct=np.asarray(correct, dtype=bool),
    )
    if with_orders:
        order = curriculum(split.confidence, split.correct, labels)
        split.curriculum = sample_id[order]
        split.inverse = sample_id[inverse(order)]
    return split


def _write_large(g, name: str, data: LargeArray, dtype: str | np.dtype) -> None:
    """A contiguous, unfiltered dataset (mappable by readers), written one row block at a time;
    int8 logits as three: NAME (codes), NAME_scale and NAME_offset (quantized.py), quantised
    here, in one pass over the source, unless they already are."""
    import h5py

    if np.dtype(dtype) != np.int8 or np.dtype(data.dtype) == np.int8:
        dset = g.create_dataset(name, shape=tuple(data.shape), dtype=np.dtype(dtype))
        _fill(name, [dset], ((np.asarray(block).astype(dtype, copy=False),) for block in _blocks_of(data)))
        return
    # int8: the three datasets' space is allocated as they are created, so the file's layout is
    # the same whether they are then written together (float logits quantised here) or one by one
    rows = tuple(data.shape[:-1])
    dsets = []
    for suffix, shape, part_dtype in zip(SUFFIXES, (tuple(data.shape), rows, rows), QUANTIZED_DTYPES):
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        dsets.append(g.create_dataset(name + suffix, shape=shape, dtype=np.dtype(part_dtype), dcpl=dcpl))
    if isinstance(data, Quantized):  # its int8 codes, scales and offsets are written as they are
        for dset, part in zip(dsets, data.parts):
            _fill(name, [dset], ((np.asarray(block),) for block in _blocks_of(part)))
    else:
        _fill(name, dsets, (quantize(block) for block in _blocks_of(data)))


def _blocks_of(data: LargeArray):
    """A large array's rows, block by block (Blocks as they are produced)."""
    return data.read() if isinstance(data, Blocks) else (data[lo:hi] for lo, hi in row_blocks(data))


def _fill(name: str, dsets: list, blocks) -> None:
    """Datasets filled row block by row block, each block a tuple of one part per dataset."""
    row = 0
    for parts in blocks:
        for dset, part in zip(dsets, parts):
            dset[row : row + len(part)] = part
        row += len(parts[0])
    if row != dsets[0].shape[0]:
        raise KdstoreError(f"internal error: {name} received {row} rows for {dsets[0].shape[0]}")


def write_teacher_h5(
    path: Path, splits: dict[str, Split], attrs: dict[str, Any], logits_dtype: str = DEFAULT_LOGITS_DTYPE
) -> None:
    import h5py

    missing = [a for a in ROOT_ATTRS if a not in attrs]
    if missing:
        raise ValueError(f"missing store attributes: {missing}")
    if logits_dtype not in LOGITS_DTYPES:
        raise KdstoreError(f"logits dtype must be one of {', '.join(LOGITS_DTYPES)}, got {logits_dtype}")
    attrs = {**attrs, "schema_version": INT8_SCHEMA_VERSION if logits_dtype == "int8" else SCHEMA_VERSION}
    with h5py.File(path, "w") as f:
        for key in sorted(attrs):  # one order, however the attributes were gathered (same store, same bytes)
            f.attrs[key] = attrs[key]
        for name, split in splits.items():
            g = f.create_group(name)
            _write_large(g, "logits", split.logits, logits_dtype)
            for field in SMALL + ORDERS:
                arr = getattr(split, field)
                if arr is not None:
                    g.create_dataset(field, data=arr, fletcher32=True, chunks=True)
            if split.views is not None:
                _write_views(g.create_group("views"), split.views, logits_dtype)


def _write_views(g, views: Views, logits_dtype: str) -> None:
    g.attrs.update(
        {
            "augmentation": views.augmentation,
            "seed": views.seed,
            "count": views.count,
            "topk": views.topk,
            "sample": views.sample,
            "sample_tau": float(views.sample_tau),
            "mix": views.mix,
            "mix_alpha": float(views.mix_alpha),
        }
    )
    dtypes: dict[str, Any] = {
        "params": np.int32,
        "logits": logits_dtype,
        "topk_values": logits_dtype,
        "topk_indices": np.int32,
        "fill": np.float32,
        "sample_ids": views.sample_ids.dtype if views.sample_ids is not None else None,
        "mix_partner": np.int32,
        "mix_lam": np.float32,
        "mix_box": np.int32,
    }
    for name in VIEW_ARRAYS:
        data = getattr(views, name)
        if data is not None:
            _write_large(g, name, data, dtypes[name])


def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [_attr(v) for v in value.tolist()] if value.dtype.kind in "OSU" else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_manifest(path: Path) -> dict[str, Any]:
    """MANIFEST.json of a store, or a one-line error saying what is wrong with it."""
    where = Path(path) / MANIFEST
    try:
        manifest = json.loads(where.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise KdstoreError(
            f"store {path}: {MANIFEST} is corrupt ({type(e).__name__}); `kdstore verify` lists what else is damaged"
        ) from None
    except OSError as e:
        raise KdstoreError(f"store {path}: {MANIFEST} cannot be read ({e.strerror})") from None
    digests = manifest.get("sha256") if isinstance(manifest, dict) else None
    if not isinstance(digests, dict) or not all(isinstance(v, str) for v in digests.values()) or H5_NAME not in digests:
        raise KdstoreError(f"store {path}: {MANIFEST} is corrupt (no sha256 of {H5_NAME})")
    return manifest


class _MappedH5:
    """teacher.h5 opened once: a file object (h5py reads through it) and a read-only memory map of
    the same file, so that every array comes from the file that was hashed, even if the path is
    replaced later."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "rb")
        size = os.fstat(self.file.fileno()).st_size
        self.map = mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_READ) if size else None

    def array(self, dset) -> np.ndarray:
        """The dataset as a read-only array on the memory map (contiguous, unfiltered datasets only)."""
        offset = dset.id.get_offset()
        count = int(np.prod(dset.shape, dtype=np.int64))
        if dset.chunks is not None or dset.compression or dset.fletcher32 or offset is None or self.map is None:
            raise KdstoreError(f"{dset.name} is not stored contiguously (schema {SCHEMA_VERSION} maps it)")
        if offset + count * dset.dtype.itemsize > len(self.map):
            raise KdstoreError(f"{dset.name} reaches past the end of the file")
        array = np.frombuffer(
            self.map,
            dtype=dset.dtype.newbyteorder("<") if dset.dtype.byteorder == "=" else dset.dtype,
            count=count,
            offset=offset,
        ).reshape(dset.shape)
        remember(array, FileRows(self.file, offset, array.dtype))
        return array


class Store:
    """A complete store opened for reading; the cheap consistency checks run on open."""

    def __init__(
        self, path: Path, attrs: dict[str, Any], splits: dict[str, Split], manifest: dict[str, Any] | None = None
    ) -> None:
        self.path = path
        self.attrs = attrs
        self.train = splits["train"]
        self.val = splits["val"]
        self.manifest = manifest or {}
        self._held: dict[str, BinaryIO] = {}  # the .beton files opened once (see beton())

    @property
    def num_classes(self) -> int:
        return int(self.attrs["num_classes"])

    def beton(self, split: str) -> Path:
        """The split's .beton, as the file this store opened: on Linux /proc/self/fd/N, so that
        every later read (FFCV maps files by path, lazily) sees these bytes even if the store is
        replaced meanwhile (`cache --overwrite`); elsewhere its path."""
        if split not in self._held:
            self._held[split] = open(self.path / BETONS[split], "rb")
        held = Path(f"/proc/self/fd/{self._held[split].fileno()}")
        return held if held.exists() else self.path / BETONS[split]

    def identity(self) -> str:
        """What the store holds: the decoded images (the dataset fingerprint) and teacher.h5's sha256.
        Two caches of the same data and teacher have the same identity; the .beton bytes are left
        out because FFCV's writer workers lay pages out in the order they finish (README)."""
        return f"{self.attrs['dataset_fingerprint'][:12]}|{H5_NAME}={self.manifest['sha256'][H5_NAME][:12]}"

    @classmethod
    def open(cls, path: Path | str, full: bool = False) -> "Store":
        """Open a store: teacher.h5's sha256 against the manifest, then the structural checks.
        `full` also reads every large array through (finite values, class ids in range): `verify`
        and the writers run it, a reader relies on the sha256."""
        path = Path(path)
        if not path.is_dir():
            raise KdstoreError(f"store {path} does not exist (make one with `kdstore cache`)")
        if not (path / MANIFEST).is_file():
            raise KdstoreError(f"store {path} is incomplete (no {MANIFEST}); rerun `kdstore cache`")
        for name in (H5_NAME, *BETONS.values()):
            if not (path / name).is_file():
                raise KdstoreError(f"store {path} is missing {name}")
        manifest = read_manifest(path)
        import h5py

        try:
            mapped = _MappedH5(path / H5_NAME)
            if sha256_stream(mapped.file) != manifest["sha256"][H5_NAME]:
                raise KdstoreError(
                    f"store {path}: {H5_NAME} differs from the one its {MANIFEST} records (changed, corrupt or "
                    f"another store's); `kdstore verify` checks every file"
                )
            with h5py.File(mapped.file, "r") as f:
                attrs = {k: _attr(v) for k, v in f.attrs.items()}
                if attrs.get("schema_version") not in READABLE_SCHEMAS:
                    raise KdstoreError(
                        f"store {path} has schema version {attrs.get('schema_version')}, this kdstore reads "
                        f"{' and '.join(map(str, READABLE_SCHEMAS))}: cache it again with `kdstore cache`"
                    )
                splits = {name: _read_split(f, name, mapped, path) for name in SPLITS}
        except OSError as e:
            text = str(e).splitlines()[0] if str(e) else type(e).__name__
            if "unable to lock file" in text.lower():
                raise KdstoreError(
                    f"store {path}: the filesystem refused an HDF5 file lock ({text}); set HDF5_USE_FILE_LOCKING=FALSE"
                ) from None
            raise KdstoreError(
                f"store {path}: {H5_NAME} cannot be read ({text}); `kdstore verify` checks every file"
            ) from None
        except (KeyError, ValueError, TypeError, RuntimeError) as e:
            raise KdstoreError(
                f"store {path}: {H5_NAME} is malformed ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:120] if str(e) else ''})"
            ) from None
        store = cls(path, attrs, splits, manifest)
        store.check(full)
        recorded = manifest.get("dataset_fingerprint")
        if recorded is not None and recorded != attrs.get("dataset_fingerprint"):
            raise KdstoreError(
                f"store {path}: {H5_NAME} belongs to another dataset (its fingerprint differs from {MANIFEST}'s)"
            )
        return store

    def check(self, full: bool = False) -> None:
        """Shapes, class count, unique ids, orders, and agreement with the .betons; with `full`,
        also finite logits and valid view arrays, read block by block."""
        c = self.num_classes
        if len(self.attrs.get("class_names", [])) != c:
            raise KdstoreError(
                f"store {self.path}: {len(self.attrs.get('class_names', []))} class names for {c} classes"
            )
        for name in SPLITS:
            s: Split = getattr(self, name)
            n = len(s.labels)
            where = f"store {self.path}: {name}"
            if s.logits.ndim != 2 or s.logits.shape != (n, c):
                raise KdstoreError(f"{where} logits have shape {s.logits.shape}, expected ({n}, {c})")
            for field in ("sample_id", "confidence", "correct"):
                if getattr(s, field).shape != (n,):
                    raise KdstoreError(f"{where} {field} has shape {getattr(s, field).shape}, expected ({n},)")
            found = quantized_problems(s.logits, f"{name}/logits")
            if found:
                raise KdstoreError(f"store {self.path}: {found[0]}")
            if full:
                bad = 0
                for lo, hi in row_blocks(s.logits):
                    bad += int((~np.isfinite(s.logits[lo:hi])).sum())
                    release_pages(s.logits)  # block by block: the resident set stays one block
                if bad:
                    raise KdstoreError(f"{where} logits contain {bad} NaN or inf values")
            if n and (s.labels.min() < 0 or s.labels.max() >= c):
                raise KdstoreError(f"{where} labels fall outside 0..{c - 1}")
            if len(np.unique(s.sample_id)) != n:
                raise KdstoreError(f"{where} sample ids are not unique")
            check_beton(self.beton(name), int(self.attrs["image_size"]))
            fields = read_int_fields(self.beton(name))
            if len(fields["sample_id"]) != n:
                raise KdstoreError(f"{where} has {n} samples but {BETONS[name]} has {len(fields['sample_id'])}")
            if not np.array_equal(fields["sample_id"], s.sample_id) or not np.array_equal(fields["label"], s.labels):
                raise KdstoreError(f"{where} sample ids or labels do not match {BETONS[name]} row by row")
            if s.views is not None:
                found = view_problems(s.views, n, c, int(self.attrs["image_size"])) or (
                    view_value_problems(s.views, c) if full else []
                )
                if found:
                    raise KdstoreError(f"{where} {found[0]}")
        t = self.train
        for order in ORDERS:
            ids = getattr(t, order)
            if ids.shape != t.sample_id.shape or not np.array_equal(np.sort(ids), np.sort(t.sample_id)):
                raise KdstoreError(f"store {self.path}: train/{order} is not a permutation of the train sample ids")
        if t.curriculum is None or t.inverse is None or not np.array_equal(t.inverse, t.curriculum[::-1]):
            raise KdstoreError(f"store {self.path}: train/inverse is not train/curriculum reversed")


def _split_arrays(f, name: str, mapped: _MappedH5, path: Path) -> Split:
    if name not in f:
        raise KdstoreError(f"store {path}: {H5_NAME} has no '{name}' group")
    g = f[name]
    fields = PER_SAMPLE + (ORDERS if name == "train" else ())
    absent = [k for k in fields if k not in g]
    if absent:
        raise KdstoreError(f"store {path}: {name} lacks {', '.join(absent)}")
    arrays = {k: g[k][()] for k in fields if k != "logits"}
    views = None
    if "views" in g:
        v = g["views"]
        views = Views(
            augmentation=_attr(v.attrs.get("augmentation", "")),
            seed=int(v.attrs.get("seed", 0)),
            sample_tau=float(v.attrs.get("sample_tau", 0.0)),
            mix=_attr(v.attrs.get("mix", "")),
            mix_alpha=float(v.attrs.get("mix_alpha", 0.0)),
            **{k: _mapped_values(v, k, mapped) for k in VIEW_ARRAYS if k in v},
        )
    return Split(logits=_mapped_values(g, "logits", mapped), **arrays, views=views)


def _read_split(f, name: str, mapped: _MappedH5, path: Path) -> Split:
    """One split's arrays (see `_split_arrays`), a problem named with the store's path."""
    try:
        return _split_arrays(f, name, mapped, path)
    except KdstoreError as e:
        text = str(e)
        raise KdstoreError(text if text.startswith("store ") else f"store {path}: {text}") from None


def _mapped_values(g, name: str, mapped: _MappedH5) -> LargeArray:
    """A large dataset as a memory map; int8 logits with their scales and offsets as a Quantized.
    A quantised array must have every part, with its dtype (int8 codes read without their scales
    would pass for logits)."""
    present = [name + suffix in g for suffix in SUFFIXES]
    if not any(present[1:]) and (name not in LOGIT_ARRAYS or g[name].dtype != np.int8):
        return mapped.array(g[name])
    where = f"{g.name.strip('/')}/{name}"
    if not all(present):
        absent = ", ".join(f"{where}{s}" for s, p in zip(SUFFIXES, present) if not p)
        raise KdstoreError(f"{where} is stored as int8 codes but {absent} is missing (the logits cannot be read)")
    dtypes = [g[name + suffix].dtype for suffix in SUFFIXES]
    if dtypes != [np.dtype(d) for d in QUANTIZED_DTYPES]:
        raise KdstoreError(
            f"{where}, _scale and _offset have dtypes {', '.join(map(str, dtypes))}, expected "
            f"{', '.join(QUANTIZED_DTYPES)}"
        )
    return Quantized(*(mapped.array(g[name + suffix]) for suffix in SUFFIXES))


def write_manifest(directory: Path, info: dict[str, Any]) -> None:
    """Record sha256 of every store file; written last, it marks the store complete."""
    files = {name: sha256_file(directory / name) for name in (H5_NAME, *BETONS.values())}
    tmp = directory / f".{MANIFEST}.tmp"
    tmp.write_text(
        json.dumps({"schema_version": SCHEMA_VERSION, "sha256": files, **info}, indent=2, sort_keys=True) + "\n"
    )
    os.replace(tmp, directory / MANIFEST)


def near_chance(attrs: dict[str, Any]) -> str | None:
    """A warning when the teacher's validation accuracy is within 5 points of chance (1/classes)."""
    chance = 1.0 / int(attrs["num_classes"])
    acc = float(attrs["teacher_val_acc"])
    if acc >= chance + 0.05:
        return None
    return (
        f"the teacher's val acc {acc:.2%} is near chance ({chance:.2%} for {attrs['num_classes']} classes): "
        "is it trained? Students distilled from it learn little"
    )
