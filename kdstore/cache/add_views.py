"""`kdstore cache --extend STORE --views K2`: extend a store's views to K2 without scoring
the first K again.
Views are drawn view by view from their seed (views.draw_params) and sampled ids are hashed per
(position, view, draw), so the first K views of a K2-view store are the K-view store's: the
teacher scores views F..K2-1, where F is the first view of the forward group that holds view K
(inference.views_per_forward), so that every forward holds the images of a fresh cache's (a
forward's results may depend on its batch: oneDNN's kernels do on some CPUs); those scores
replace the stored views F..K-1. The store's own augmentation, seed and storage (logits, top-k or
sampled) are kept, and the result is byte-identical to a fresh cache with K2 views (tested). The store is
replaced atomically, like every store write; its .beton files are hard-linked, not copied."""

from __future__ import annotations

import dataclasses
import functools
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from kdstore.cache.config import CacheConfig
from kdstore.data.augment import augmentation_for
from kdstore.errors import KdstoreError
from kdstore.models.teachers import Teacher, load_teacher
from kdstore.passes.inference import (
    ModelInput,
    ScorePass,
    chunk_paths,
    column,
    keep_views,
    score_beton,
    stored_column,
    stored_outputs,
    views_forward,
    views_per_forward,
)
from kdstore.runtime.blocks import LargeArray
from kdstore.runtime.console import say
from kdstore.runtime.devices import resolve_device
from kdstore.runtime.precision import for_device
from kdstore.store.format import BETONS, H5_NAME, Blocks, Store, write_teacher_h5
from kdstore.store.mixes import MixedViews, Mixing, PartnerSource, mixed_views
from kdstore.store.publish import STAGE_MARKER, claim, fresh_stage, link_or_copy, publish, staging_dir
from kdstore.store.quantized import Quantized, stored_dtype
from kdstore.store.views import MIX_ARRAYS, STORED, Views, draw_params, storage_of


def _storage(store: Store, cfg: CacheConfig) -> tuple[str, int, int, float, int, str, str, float]:
    """(augmentation, topk, sample, sample_tau, seed, kind, mix, mix_alpha) of the views to extend:
    the store's own; the command line may repeat them but not change them."""
    v = store.train.views
    if v is None:
        kind = storage_of(cfg.topk, cfg.sample)
        return (
            augmentation_for(int(store.attrs["image_size"])),
            cfg.topk,
            cfg.sample,
            cfg.sample_tau if cfg.sample else 0.0,
            cfg.views_seed,
            kind,
            cfg.mix,
            cfg.mix_alpha,
        )
    given = {
        "--topk": (cfg.topk, v.topk),
        "--sample": (cfg.sample, v.sample),
        "--views-seed": (cfg.views_seed, v.seed),
        "--mix": (cfg.mix if cfg.mix != "none" else "", v.mix),
    }
    changed = [
        f"{name} {mine} (the store has {theirs})" for name, (mine, theirs) in given.items() if mine and mine != theirs
    ]
    if changed:
        raise KdstoreError(f"--extend keeps the store's views as they are: {', '.join(changed)}")
    return v.augmentation, v.topk, v.sample, v.sample_tau, v.seed, v.storage, v.mix or "none", v.mix_alpha


def _joined(old: LargeArray | None, new: LargeArray, first: int) -> LargeArray:
    """The first `first` of (N, K, ...) stored views and (N, K2 - first, ...) new ones as (N, K2,
    ...) row blocks (int8 logits: each of their parts joined alike)."""
    if old is None or first == 0:
        return new
    if isinstance(old, Quantized):
        return Quantized(*(_joined(o, n, first) for o, n in zip(old.parts, new.parts)))

    def read() -> Iterator[np.ndarray]:
        row = 0
        for block in new.read():
            kept = np.asarray(old[row : row + len(block), :first])
            yield np.concatenate([kept, block.astype(old.dtype, copy=False)], 1)
            row += len(block)

    return Blocks((new.shape[0], first + new.shape[1], *new.shape[2:]), old.dtype, read)


def _store_teacher(cfg: CacheConfig, store: Store) -> Teacher:
    """The teacher given on the command line, which must be the store's own (model, input size
    and checkpoint sha256)."""
    attrs = store.attrs
    if not cfg.has_weights:
        sha = attrs["checkpoint_sha256"]
        source = f"give the checkpoint it was cached from with --checkpoint (sha256 {sha[:12]}...)"
        if not sha:
            source = (
                "it was cached without a checkpoint: give --pretrained or --pretrained-file as then, "
                "or --allow-untrained if it was cached with random weights"
            )
        raise KdstoreError(f"--extend: the store's teacher is {attrs['teacher']}; {source}")
    spec = dataclasses.replace(
        cfg.teacher_spec,
        teacher=cfg.teacher or attrs["teacher"],
        stem=cfg.stem or attrs["teacher_stem"],
        input_size=cfg.input_size or int(attrs["input_size"]),
    )
    teacher = load_teacher(spec, store.num_classes, int(attrs["image_size"]))
    if (
        teacher.checkpoint_sha256 != attrs["checkpoint_sha256"]
        or teacher.meta["model"] != attrs["teacher"]
        or int(teacher.meta["input_size"]) != int(attrs["input_size"])
    ):
        raise KdstoreError(
            f"--extend: this teacher ({teacher.meta['model']}, checkpoint sha256 "
            f"{teacher.checkpoint_sha256[:12] or 'none'}) "
            f"is not the store's ({attrs['teacher']}, {attrs['checkpoint_sha256'][:12] or 'none'}); give its "
            "--checkpoint"
        )
    return teacher


def _joined_arrays(store: Store, paths: list[Path], kind: str, mixed: MixedViews, first: int) -> dict[str, Any]:
    """The store's first `first` view arrays joined with the new views' (their chunks, and the
    mixing arrays drawn for them)."""
    if not np.array_equal(column(paths, "sample_id"), store.train.sample_id):
        raise KdstoreError("internal error: the views pass visited the training images in another order")
    old = store.train.views
    arrays: dict[str, Any] = {
        k: _joined(getattr(old, k) if old is not None else None, stored_column(paths, k), first) for k in STORED[kind]
    }
    for k in MIX_ARRAYS if mixed.mix else ():
        new = getattr(mixed, k)
        if new is not None:
            blocks = Blocks(new.shape, new.dtype, functools.partial(iter, [new]))
            arrays[k] = _joined(getattr(old, k) if old is not None else None, blocks, first)
    return arrays


def _new_views(cfg: CacheConfig, store: Store, teacher: Teacher, params: np.ndarray, chunks: Path) -> tuple[Views, str]:
    """Score views F..K2-1 into `chunks` and join them to the stored views 0..F-1: the new Views.

    The teacher scores views in groups (inference.views_per_forward); the group that holds view
    `have` (from view F) is scored whole, as a fresh cache would, and its stored views dropped."""
    old = store.train.views
    have = old.count if old is not None else 0
    augmentation, topk, sample, tau, seed, kind, mix, alpha = _storage(store, cfg)
    device = resolve_device(cfg.device)
    inp = ModelInput(
        model=for_device(teacher.model, device),
        mean=torch.tensor(store.attrs["normalize_mean"], device=device),
        std=torch.tensor(store.attrs["normalize_std"], device=device),
        input_size=int(store.attrs["input_size"]),
        device=device,
        amp=cfg.amp,
    )
    first = have - have % views_per_forward(device)
    keep = keep_views(topk, sample, tau, seed, first_view=first)
    source = PartnerSource(beton=store.beton("train"), device=device, mean=inp.mean, std=inp.std, workers=cfg.workers)
    mixed = mixed_views(
        mix, alpha, seed, params[:, first:], augmentation, int(store.attrs["image_size"]), source, first
    )
    forward = views_forward(
        inp,
        params[:, first:],
        augmentation,
        keep,
        Mixing(mixed, device, "auto", mixed.partners) if mixed.mix else None,
    )
    score_beton(
        forward,
        ScorePass(
            beton=store.beton("train"),
            batch_size=cfg.batch_size,
            workers=cfg.workers,
            label=f"teacher on views {first + 1}-{cfg.views}",
            progress=cfg.progress,
            chunk_dir=chunks,
            positions=np.arange(len(store.train)),
            post=stored_outputs(stored_dtype(store.train.logits), scores=False),
        ),
    )
    arrays = _joined_arrays(store, chunk_paths(chunks), kind, mixed, first)
    return Views(
        augmentation=augmentation,
        seed=seed,
        params=params,
        sample_tau=tau,
        mix=mixed.mix,
        mix_alpha=mixed.mix_alpha,
        **arrays,
    ), kind


def add_views(cfg: CacheConfig) -> Path:
    """Extend cfg.extend's views to cfg.views; returns the store's path."""
    assert cfg.extend is not None
    path = claim(cfg.extend, overwrite=True)
    store = Store.open(path)
    old = store.train.views
    have = old.count if old is not None else 0
    if cfg.views <= have:
        raise KdstoreError(f"--extend: the store already has {have} views; ask for more with --views K (K > {have})")
    kept = stored_dtype(store.train.logits)
    if cfg.logits_dtype is not None and cfg.logits_dtype != kept:
        raise KdstoreError(
            f"--extend keeps the store's views as they are: --logits-dtype {cfg.logits_dtype} (the store has {kept})"
        )
    teacher = _store_teacher(cfg, store)
    storage = _storage(store, cfg)
    augmentation, seed = storage[0], storage[4]
    params = draw_params(augmentation, len(store.train), cfg.views, int(store.attrs["image_size"]), seed)
    if old is not None and not np.array_equal(params[:, :have], np.asarray(old.params)):
        raise KdstoreError(
            "--extend: the store's views are not the draws of its seed (made by another kdstore version?)"
        )
    stage = staging_dir(path)
    fresh_stage(stage)
    try:
        views, kind = _new_views(cfg, store, teacher, params, stage / STAGE_MARKER / "chunks-views")
        train = dataclasses.replace(store.train, views=views)
        for name in BETONS.values():
            link_or_copy(path / name, stage / name)
        write_teacher_h5(
            stage / H5_NAME, {"train": train, "val": store.val}, dict(store.attrs), stored_dtype(store.train.logits)
        )
        shutil.rmtree(stage / STAGE_MARKER / "chunks-views")
        publish(
            stage,
            path,
            {
                **{k: v for k, v in store.manifest.items() if k not in ("sha256", "schema_version")},
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
        )
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    say(f"store {path}: views {have} -> {cfg.views} ({kind}); wrote {path / H5_NAME}")
    return path
