"""`kdstore merge`: several teachers' stores of the same images -> one store (Gong et al. 2016).

The merged store's KD target is the ensemble's mean logits. Its curriculum comes from the
teachers' confidences averaged per sample (`confidence="mean"`, with a sample counted correct
when the ensemble's mean probability picks the true class), or from one teacher's
(`confidence="0"`, `"1"`, ...: its confidence and correctness). The images are the first
store's, which every other store must share exactly (same dataset fingerprint, same rows)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

from kdstore.errors import KdstoreError
from kdstore.method.curriculum import softmax
from kdstore.method.sparse_targets import DEFAULT_LOGITS_DTYPE
from kdstore.options import opt, path_problems
from kdstore.runtime.blocks import release_pages, row_blocks
from kdstore.runtime.console import console
from kdstore.store.format import (
    BETONS,
    H5_NAME,
    LOGITS_DTYPES,
    SPLITS,
    Blocks,
    Split,
    Store,
    StoreAttrs,
    build_split,
    mean_blocks,
    write_teacher_h5,
)
from kdstore.store.publish import claim, fresh_stage, link_or_copy, publish, staging_dir
from kdstore.store.quantized import stored_dtype
from kdstore.store.views import Views


def _check_compatible(stores: list[Store]) -> None:
    first = stores[0]
    for s in stores[1:]:
        where = f"cannot merge {s.path} with {first.path}"
        if s.attrs["dataset_fingerprint"] != first.attrs["dataset_fingerprint"]:
            raise KdstoreError(f"{where}: they hold different images (dataset fingerprints differ)")
        if s.attrs["class_names"] != first.attrs["class_names"]:
            raise KdstoreError(f"{where}: their classes differ")
        for name in SPLITS:
            a, b = getattr(first, name), getattr(s, name)
            if not (np.array_equal(a.sample_id, b.sample_id) and np.array_equal(a.labels, b.labels)):
                raise KdstoreError(f"{where}: their {name} samples are in a different order")


def merge_split(splits: Sequence[Split], confidence: str, with_orders: bool) -> Split:
    """Mean logits as the target (computed block by block when the store is written);
    confidence per `confidence` ("mean" or a teacher index)."""
    first = splits[0]
    logits = mean_blocks([s.logits for s in splits])
    if confidence == "mean":
        conf = np.mean([s.confidence for s in splits], axis=0)
        parts = []
        for lo, hi in row_blocks(first.logits):
            parts.append(np.mean([softmax(s.logits[lo:hi]) for s in splits], axis=0).argmax(1) == first.labels[lo:hi])
            for s in splits:
                release_pages(s.logits)
        correct = np.concatenate(parts)
    else:
        chosen = splits[int(confidence)]
        conf, correct = chosen.confidence, chosen.correct
    return build_split(logits, first.labels, first.sample_id, conf, correct, with_orders)


def _accuracy(logits: Blocks, labels: np.ndarray) -> float:
    """Top-1 accuracy of block-wise logits."""
    hits, row = 0, 0
    for block in logits.read():
        hits += int((block.argmax(1) == labels[row : row + len(block)]).sum())
        row += len(block)
    return hits / max(row, 1)


def merge_views(stores: list[Store]) -> Views | None:
    """The training views' mean logits, when every store holds the same views with full logits;
    None when no store has views; refused otherwise (a mix cannot give one target per view)."""
    views = [s.train.views for s in stores]
    if all(v is None for v in views):
        return None
    first = views[0]
    same = first is not None and all(
        v is not None and v.augmentation == first.augmentation and np.array_equal(v.params, first.params) for v in views
    )
    if not same:
        raise KdstoreError(
            "cannot merge: the stores do not all hold the same views (cache each with the same --views K and "
            "--views-seed)"
        )
    held = [v for v in views if v is not None]
    if len(held) < len(views) or any(v.logits is None for v in held):
        raise KdstoreError("cannot merge stores whose views keep only the top-k logits; cache them without --topk")
    return Views(
        augmentation=held[0].augmentation,
        seed=held[0].seed,
        params=held[0].params,
        logits=mean_blocks([v.logits for v in held]),
    )


def _shared_dtype(stores: list[Store]) -> str:
    """The stores' logits dtype when they share one, else the default (float16)."""
    kept = {stored_dtype(s.train.logits) for s in stores}
    return kept.pop() if len(kept) == 1 else DEFAULT_LOGITS_DTYPE


@dataclass(frozen=True, kw_only=True)
class MergeConfig:
    """`kdstore merge`: the stores to merge, the merged store's path and how its curriculum is
    made; `kdstore.merge.run(cfg)` writes it and returns its path."""

    stores: tuple[str, ...] = ()  # the stores to merge (the command's arguments)
    out: str = opt(help="The merged store to create.", required=True, path=True)
    confidence: str = opt("mean", "Curriculum from the mean confidence, or from store N's (0, 1, ...).")
    logits_dtype: str | None = opt(
        help="dtype of the stored logits (default: the stores' own when they share one, else float16).",
        choices=LOGITS_DTYPES,
    )
    overwrite: bool = opt(False, "Replace an existing store at --out (only once the new one is complete).")


def run(cfg: MergeConfig) -> Path:
    """Write the merged store to cfg.out (atomically, like `cache`); returns its path."""
    paths, out, confidence, overwrite = list(cfg.stores), cfg.out, cfg.confidence, cfg.overwrite
    wrong = path_problems(cfg)
    if wrong:
        raise KdstoreError(wrong[0])
    if len(paths) < 2:
        raise KdstoreError("merge needs at least two stores")
    if confidence != "mean" and not (confidence.isdigit() and int(confidence) < len(paths)):
        raise KdstoreError(f"--confidence must be 'mean' or a store index 0..{len(paths) - 1}, got {confidence!r}")
    out_path = claim(out, overwrite)
    stores = [Store.open(p) for p in paths]
    _check_compatible(stores)
    logits_dtype = cfg.logits_dtype or _shared_dtype(stores)
    first = stores[0]
    splits = {name: merge_split([getattr(s, name) for s in stores], confidence, name == "train") for name in SPLITS}
    splits["train"].views = merge_views(stores)
    teachers = [s.attrs["teacher"] for s in stores]
    merged = dataclasses.replace(
        StoreAttrs.of(first.attrs),
        teacher="ensemble(" + ",".join(teachers) + ")",
        checkpoint_sha256=",".join(s.attrs["checkpoint_sha256"] for s in stores),
        pretrained=any(bool(s.attrs["pretrained"]) for s in stores),
        teacher_train_acc=_accuracy(splits["train"].logits, splits["train"].labels),
        teacher_val_acc=_accuracy(splits["val"].logits, splits["val"].labels),
    )
    attrs = {
        **merged.as_dict(),
        "merge_confidence": confidence,
        "merged_from": json.dumps(
            [{"path": str(s.path), "teacher": s.attrs["teacher"], "identity": s.identity()} for s in stores]
        ),
    }
    stage = staging_dir(out_path)
    fresh_stage(stage)
    try:
        for name in BETONS.values():
            link_or_copy(first.path / name, stage / name)
        write_teacher_h5(stage / H5_NAME, splits, attrs, logits_dtype)
        publish(
            stage,
            out_path,
            {
                "dataset_fingerprint": first.attrs["dataset_fingerprint"],
                "merged_from": len(stores),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
        )
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    console.print(
        f"[bold]merged store[/] {out_path}: {' + '.join(teachers)}; ensemble val acc {attrs['teacher_val_acc']:.2%}, "
        f"curriculum from {'mean' if confidence == 'mean' else 'teacher ' + confidence} confidence"
    )
    return out_path
