"""The paper's held-out split (appendix A): the teacher trains on a fixed, seeded,
class-stratified fraction of the training set; the curriculum and students use the rest."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from kdstore.data.datasets import ImageSplit
from kdstore.errors import KdstoreError


def stratified_members(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask (N,): round(fraction * n_c) samples of every class c, chosen by a seeded RNG."""
    if not 0.0 < fraction < 1.0:
        raise KdstoreError(f"--split must be a fraction in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        take = int(round(fraction * len(members)))
        mask[rng.permutation(members)[:take]] = True
    return mask


def ids_sha256(ids: np.ndarray) -> str:
    """A hash of a set of sample ids (order-free)."""
    return hashlib.sha256(np.sort(np.asarray(ids, dtype="<i8")).tobytes()).hexdigest()


def subset(split: ImageSplit, mask: np.ndarray) -> ImageSplit:
    """The samples of `split` where mask is true; sample ids keep their original values."""
    positions = np.flatnonzero(mask)
    return ImageSplit(
        get=lambda i: split.get(int(positions[i])),
        labels=split.labels[positions],
        sample_ids=split.sample_ids[positions],
    )


def split_record(train: ImageSplit, fraction: float, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """The teacher's part of a split and the record a checkpoint keeps of it."""
    mask = stratified_members(train.labels, fraction, seed)
    return mask, {
        "fraction": float(fraction),
        "seed": int(seed),
        "members_sha256": ids_sha256(train.sample_ids[mask]),
        "size": int(mask.sum()),
    }


def holdout(train: ImageSplit, record: dict[str, Any]) -> ImageSplit:
    """The samples a teacher trained with `record` never saw; refuses a split that does not match."""
    mask = stratified_members(train.labels, float(record["fraction"]), int(record["seed"]))
    if ids_sha256(train.sample_ids[mask]) != record["members_sha256"]:
        raise KdstoreError(
            "the teacher checkpoint's split does not match this dataset (different samples); cache the dataset the "
            "teacher was trained on"
        )
    return subset(train, ~mask)
