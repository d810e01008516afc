"""What a cache will cost before it runs: `cache --dry-run` prints it and writes nothing, and every
cache prints it first and the real figures at its end.

Sizes are computed, not guessed: each .beton as FFCV's writer lays it out (data/beton.py,
`beton_bytes`; JPEG images at the mean size of a sample encoded as the writer encodes them),
teacher.h5 from its arrays' shapes and dtypes. Times are measured on a sample and scaled: the
.beton files from writing a sample file (its fixed cost) and reading + encoding sample images
(per image, over the writer's workers); the teacher from a few batches of that sample through
the teacher on the chosen device, exactly as the cache's passes run it (the first batch, and the
loader's set-up, counted once); the final checks from hashing speed over the bytes they read."""

from __future__ import annotations

import hashlib
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.table import Table

from kdstore.cache.budget import BUDGET_SAMPLE, Choice, Layout, parse_budget, plan, record
from kdstore.cache.config import CacheConfig
from kdstore.data.augment import augmentation_for
from kdstore.data.beton import beton_bytes, epoch_of, image_bytes_of, make_loader, write_beton, writer_workers
from kdstore.data.datasets import ImageDataset, ImageSplit
from kdstore.errors import KdstoreError
from kdstore.models.teachers import Teacher
from kdstore.passes.inference import (
    ModelInput,
    ScorePass,
    clean_forward,
    keep_views,
    score_beton,
    teacher_input,
    views_forward,
    views_per_forward,
)
from kdstore.runtime.console import console
from kdstore.runtime.files import free_mib
from kdstore.store.format import BETONS, H5_NAME
from kdstore.store.publish import staging_dir
from kdstore.store.views import draw_params, storage_of

SAMPLE_IMAGES = 64  # images read and encoded to time the .beton writes (and to size JPEG images)
TIMED_BATCHES = 2  # teacher batches timed after the first
H5_OVERHEAD = 64 << 10  # HDF5's own structures in teacher.h5 (B-trees, attributes), about
PER_SAMPLE_BYTES = 8 + 8 + 4 + 1  # labels, sample_id, confidence, correct (each split)
ORDER_BYTES = 8 + 8  # curriculum, inverse (training split)
CHECK_PASSES = 4  # reads of the store after the passes: fingerprint, teacher.h5 written, sha256, full check


@dataclass(frozen=True)
class Estimate:
    """A cache's cost: bytes by part, seconds by stage, the free space where it goes."""

    parts: dict[str, float]  # bytes: train.beton, val.beton, logits (teacher.h5 without views), views
    seconds: dict[str, float]  # setup and estimate (measured), betons, teacher, views, finish
    free: float  # bytes free on --out's file system
    image_bytes: float  # one image in a .beton (JPEG: the sample's mean)
    teacher_images_per_s: float = float("nan")
    choices: dict[str, Any] = field(default_factory=dict)  # what --budget chose: logits_dtype, views, topk, sample
    plan: str = ""  # --budget's plan as teacher.h5 records it (budget.record)

    @property
    def size(self) -> float:
        return sum(self.parts.values())

    @property
    def wall(self) -> float:
        return sum(self.seconds.values())

    @property
    def staging(self) -> float:
        """Bytes held beside the store until it is complete (the teacher's output chunks)."""
        return self.parts["logits"] + self.parts["views"]

    @property
    def peak(self) -> float:
        return self.size + self.staging

    def check_fits(self, out: Path) -> None:
        """Refuse, in one line, a cache whose peak on disk (the store, and its teacher outputs
        held beside it until it is published) cannot fit the disk at `out`. What a staging
        directory of an earlier run holds there counts as free: a resumed cache reuses it, a
        new one removes it first. An existing store that --overwrite replaces stays until the
        new one is published, so its bytes are not counted as free."""
        held = _bytes_under(staging_dir(out))
        if self.peak > self.free + held:
            kept = f"; {_size(held)} of it already in {staging_dir(out).name}" if held else ""
            raise KdstoreError(
                f"the cache needs about {_size(self.peak)} at {out} (a store of {_size(self.size)} and "
                f"{_size(self.staging)} of teacher outputs while it runs{kept}) but {_size(self.free)} is free there"
            )


def _bytes_under(directory: Path) -> float:
    """Bytes of the files under `directory` (0 if it does not exist)."""
    if not directory.is_dir():
        return 0.0
    return float(sum(p.stat().st_size for p in directory.rglob("*") if p.is_file() and not p.is_symlink()))


def _size(nbytes: float) -> str:
    return f"{nbytes / 2**30:,.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:,.1f} MiB"


def _subset(split: ImageSplit, n: int) -> ImageSplit:
    return ImageSplit(get=split.get, labels=split.labels[:n], sample_ids=split.sample_ids[:n], name_of=split.name_of)


def image_cost(split: ImageSplit, n: int = SAMPLE_IMAGES) -> tuple[float, float]:
    """(seconds to read and encode one image, bytes it takes in a .beton), over the first `n`:
    raw pixels up to RAW_MAX_SIZE, else JPEG at the writer's quality."""
    n = min(n, len(split))
    t0, sizes = time.perf_counter(), []
    for i in range(n):
        try:
            image = split.get(i)
        except Exception:  # noqa: BLE001 - an unreadable image is named by the .beton writer, in one line
            continue
        sizes.append(image_bytes_of(image))
    return (time.perf_counter() - t0) / max(n, 1), float(np.mean(sizes)) if sizes else 0.0


def teacher_seconds(
    inp: ModelInput, beton: Path, cfg: CacheConfig, image_size: int, n_train: int, n_val: int
) -> tuple[dict[str, float], float]:
    """Seconds of the clean passes and of the views pass, and the clean images/s, from `beton`'s
    first batches through the teacher as the passes run it: TIMED_BATCHES batches timed after a
    first one, whose extra time is a pass's set-up (FFCV's loader starting: measured ~0.7 s
    here on the 2-core CPU, whatever the pass) and is counted once per pass. Mixed views are timed
    unmixed (the partner's augmentation and the mix are left out)."""
    n = min(n_train, (TIMED_BATCHES + 1) * cfg.batch_size)
    forwards = {"teacher": clean_forward(inp)}
    group = min(cfg.views, views_per_forward(inp.device))
    if cfg.views:
        augmentation = augmentation_for(image_size)
        params = draw_params(augmentation, n, group, image_size, cfg.views_seed)
        keep = keep_views(cfg.topk, cfg.sample, cfg.sample_tau, cfg.views_seed)
        forwards["views"] = views_forward(inp, params, augmentation, keep)
    spent, seen, first, first_images = dict.fromkeys(forwards, 0.0), 0, 0.0, 0
    t0 = time.perf_counter()
    loader = make_loader(beton, cfg.batch_size, cfg.workers, indices=np.arange(n))
    with torch.inference_mode(), epoch_of(loader) as batches:
        for b, (images, _, _) in enumerate(batches):
            for name, forward in forwards.items():
                t = time.perf_counter()
                outputs = forward(images, np.arange(b * cfg.batch_size, b * cfg.batch_size + len(images)))
                next(iter(outputs.values())).cpu()  # waits for the device
                spent[name] += time.perf_counter() - t
            if b == 0:
                first, first_images = time.perf_counter() - t0, len(images)
                spent = dict.fromkeys(forwards, 0.0)
            else:
                seen += len(images)
    if seen:
        per_image = {name: s / seen for name, s in spent.items()}
    else:  # one batch: its time, set-up included
        per_image = {name: first / first_images / len(forwards) for name in forwards}
    setup = max(0.0, first - sum(per_image.values()) * first_images)
    out = {"teacher": 2 * setup + per_image["teacher"] * (n_train + n_val)}
    if cfg.views:
        out["views"] = setup + per_image["views"] / group * n_train * cfg.views
    return out, 1 / per_image["teacher"]


def layout(cfg: CacheConfig, dataset: ImageDataset, image_bytes: float, image_size: int) -> Layout:
    """What the store's bytes are made of besides its storage of logits (budget.Layout)."""
    n_train, n_val = len(dataset.train), len(dataset.val)
    betons = beton_bytes(n_train, image_bytes, cfg.workers) + beton_bytes(n_val, image_bytes, cfg.workers)
    params = draw_params(augmentation_for(image_size), 1, 1, image_size, 0).shape[-1]
    return Layout(
        fixed=betons + (n_train + n_val) * PER_SAMPLE_BYTES + n_train * ORDER_BYTES + H5_OVERHEAD,
        clean_rows=n_train + n_val,
        view_rows=n_train,
        classes=dataset.num_classes,
        per_view_extra=4 * params + {"none": 0, "mixup": 8, "cutmix": 24}[cfg.mix],  # partner, weight (and box)
    )


def store_bytes(cfg: CacheConfig, dataset: ImageDataset, image_bytes: float, image_size: int) -> dict[str, float]:
    """Bytes of each part of the store: the two .beton files, teacher.h5's clean logits and
    per-sample arrays, its views."""
    n_train, n_val = len(dataset.train), len(dataset.val)
    lay = layout(cfg, dataset, image_bytes, image_size)
    storage, k, dtype = storage_of(cfg.topk, cfg.sample), cfg.topk or cfg.sample, cfg.stored_dtype
    logits = lay.bytes(0, storage, k, dtype)
    parts = {
        "train.beton": beton_bytes(n_train, image_bytes, cfg.workers),
        "val.beton": beton_bytes(n_val, image_bytes, cfg.workers),
    }
    return {
        **parts,
        "logits": logits - sum(parts.values()),
        "views": lay.bytes(cfg.views, storage, k, dtype) - logits,
    }


def _hash_rate() -> float:
    """Bytes per second sha256 reads here (the final checks read the store about CHECK_PASSES times)."""
    block = np.zeros(16 << 20, dtype=np.uint8).tobytes()
    t0 = time.perf_counter()
    hashlib.sha256(block).digest()
    return len(block) / max(time.perf_counter() - t0, 1e-9)


def estimate(
    cfg: CacheConfig,
    dataset: ImageDataset,
    image_size: int,
    setup_s: float,
    teacher: Teacher | None,
    device: torch.device,
) -> Estimate:
    """The cost of caching `dataset` under `cfg`: sizes; seconds, with `teacher` timed on
    `device` after the sample .beton is written (None: not yet; `with_teacher` adds it once
    the cache's .beton files are written, so that no .beton writer forks a process holding CUDA)."""
    t_start = time.perf_counter()
    import ffcv.writer  # noqa: F401  (the cache imports it too: once, a few seconds, counted in `estimate`)

    per_image, image_bytes = image_cost(dataset.train)
    parts = store_bytes(cfg, dataset, image_bytes, image_size)
    n = min(len(dataset.train), max((TIMED_BATCHES + 1) * cfg.batch_size, BUDGET_SAMPLE if cfg.budget else 0))
    with tempfile.TemporaryDirectory(prefix="kdstore-estimate-") as tmp:
        beton = Path(tmp) / "sample.beton"
        t0 = time.perf_counter()
        write_beton(_subset(dataset.train, n), beton, cfg.workers)
        fixed = max(0.0, time.perf_counter() - t0 - n * per_image / writer_workers(n, image_bytes, cfg.workers))
        splits = (dataset.train, dataset.val)
        writing = sum(len(s) * per_image / writer_workers(len(s), image_bytes, cfg.workers) for s in splits)
        seconds = {"setup": setup_s, "betons": 2 * fixed + writing}
        est = Estimate(
            parts=parts,
            seconds=seconds,
            free=free_mib(cfg.out_path) * 2**20,
            image_bytes=image_bytes,
        )
        if teacher is not None:
            est = with_teacher(est, teacher_input(teacher, device, cfg.amp), beton, cfg, dataset, image_size)
    return replace(est, seconds={**est.seconds, "estimate": time.perf_counter() - t_start})


def with_teacher(
    est: Estimate, inp: ModelInput, beton: Path, cfg: CacheConfig, dataset: ImageDataset, image_size: int
) -> Estimate:
    """`est` with the teacher run on `beton`'s first images: with --budget, the plan (the
    teacher's clean logits of BUDGET_SAMPLE images measure every candidate) and the sizes it
    gives; the passes timed; the final checks. The time this takes is added to `estimate` (the
    cache spends it too)."""
    t0 = time.perf_counter()
    if cfg.budget:
        est = _planned(est, inp, beton, cfg, dataset, image_size)
        cfg = replace(cfg, **est.choices)
    seconds, rate = teacher_seconds(inp, beton, cfg, image_size, len(dataset.train), len(dataset.val))
    seconds["finish"] = CHECK_PASSES * est.size / _hash_rate()
    seconds["estimate"] = est.seconds.get("estimate", 0.0) + time.perf_counter() - t0
    return replace(est, seconds={**est.seconds, **seconds}, teacher_images_per_s=rate)


def _planned(
    est: Estimate, inp: ModelInput, beton: Path, cfg: CacheConfig, dataset: ImageDataset, image_size: int
) -> Estimate:
    """`est` with --budget's plan (budget.py), printed, and the sizes of the storage it chose."""
    assert cfg.budget is not None
    total, per_sample = parse_budget(cfg.budget)
    budget = total * len(dataset.train) if per_sample else total
    n = min(len(dataset.train), BUDGET_SAMPLE)
    job = ScorePass(beton=beton, batch_size=cfg.batch_size, workers=cfg.workers, progress=False, positions=np.arange(n))
    rows = score_beton(clean_forward(inp), replace(job, post=lambda out, labels: dict(out)))["logits"]
    given = {"logits_dtype": cfg.logits_dtype, "topk": cfg.topk, "sample": cfg.sample}
    chosen, candidates = plan(
        layout(cfg, dataset, est.image_bytes, image_size), budget, cfg.views, given, rows, cfg.sample_tau
    )
    show_plan(cfg.budget, budget, chosen, candidates, len(rows), cfg.sample_tau)
    choices: dict[str, Any] = {
        "logits_dtype": chosen.dtype,
        "views": chosen.views,
        "topk": chosen.k if chosen.storage == "topk" else 0,
        "sample": chosen.k if chosen.storage == "sample" else 0,
    }
    parts = store_bytes(replace(cfg, **choices), dataset, est.image_bytes, image_size)
    return replace(
        est,
        parts=parts,
        choices=choices,
        plan=record(cfg.budget, chosen, candidates),
    )


def show_plan(text: str, budget: float, chosen: Choice, candidates: list[Choice], rows: int, tau: float) -> None:
    """--budget's candidates as a table, the chosen one marked."""
    table = Table(
        title=f"--budget {text} ({_size(budget)}): storages that fit, measured on the teacher's logits of {rows} "
        f"training images at τ = {tau:g}"
    )
    for col in ("", "storage", "store", "KL(stored ‖ full), one view"):
        table.add_column(col, justify="left" if col in ("", "storage") else "right")
    for c in sorted(candidates, key=lambda c: (c.kl, c.bytes)):
        table.add_row("→" if c == chosen else "", c.describe(), _size(c.bytes), f"{c.kl:.2g}")
    console.print(table)


def show(est: Estimate, title: str, real: dict[str, float] | None = None) -> None:
    """The estimate as a table (with `real`: the real figures beside it, same keys)."""
    table = Table(title=title)
    for col in ("", "estimate") + (("real",) if real else ()):
        table.add_column(col, justify="left" if not col else "right")
    rows: list[tuple[str, str, str]] = []
    for name, nbytes in est.parts.items():
        if name != "views" or nbytes:
            rows.append((name, _size(nbytes), _size(real[name]) if real and name in real else ""))
    rows.append(("store", _size(est.size), _size(real["store"]) if real else ""))
    rows.append(("peak on disk", _size(est.peak), ""))  # the store and the teacher outputs held beside it
    if "teacher" in est.seconds:
        stages = ", ".join(f"{k} {v:,.1f}" for k, v in est.seconds.items())
        rows.append(("wall time", f"{est.wall:,.1f} s", f"{real['seconds']:,.1f} s" if real else ""))
        rows.append(("  by stage (s)", stages, ""))
        rows.append(("teacher", f"{est.teacher_images_per_s:,.0f} img/s", ""))
    rows.append(("free at --out", _size(est.free), ""))
    for row in rows:
        table.add_row(*(row if real else row[:2]))
    console.print(table)


def real_sizes(store: Path) -> dict[str, float]:
    """A written store's bytes by the estimate's parts (and `store`: every file)."""
    import h5py

    with h5py.File(store / H5_NAME, "r") as f:
        views = float(sum(d.nbytes for d in f["train/views"].values())) if "views" in f["train"] else 0.0
    h5 = (store / H5_NAME).stat().st_size
    return {
        **{name: float((store / name).stat().st_size) for name in BETONS.values()},
        "logits": h5 - views,
        "views": views,
        "store": float(sum(p.stat().st_size for p in store.iterdir() if p.is_file())),
    }
