"""Where a loader's data come from (TrainData): a store's splits and teacher arrays, or (for
`kdstore teacher`) a bare dataset's .beton files with no teacher at all."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdstore.method.orderings import Scores
from kdstore.store.format import Store
from kdstore.store.views import Views


@dataclass(kw_only=True)
class TrainData:
    """What a loader needs from a store (or from a bare dataset, for a teacher)."""

    train_beton: Path
    val_beton: Path
    num_classes: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    teacher_logits: np.ndarray | None = None  # (N, C) by .beton position; None without a teacher
    val_teacher_logits: np.ndarray | None = None  # (N_val, C) the teacher on the validation split
    scores: Scores | None = None  # the teacher's confidence and curriculum; None without a teacher
    views: Views | None = None  # the store's augmented views with their teacher logits, if any
    meta: dict[str, Any] = field(default_factory=dict)  # provenance saved with the run
    store: Store | None = None  # the open store these come from: its held files live as long as the data

    @property
    def identity(self) -> str:
        """What names these data in a saved state (the store's identity, else the train .beton)."""
        return str(self.meta.get("identity", self.train_beton))


def data_from_store(store: Store) -> TrainData:
    t = store.train
    return TrainData(
        train_beton=store.beton("train"),
        val_beton=store.beton("val"),
        num_classes=store.num_classes,
        image_size=int(store.attrs["image_size"]),
        mean=tuple(store.attrs["normalize_mean"]),
        std=tuple(store.attrs["normalize_std"]),
        teacher_logits=t.logits,
        val_teacher_logits=store.val.logits,
        scores=Scores(t.confidence, t.curriculum_positions()),
        views=t.views,
        meta={
            "store": str(store.path.resolve()),
            "dataset": store.attrs["dataset"],
            "dataset_fingerprint": store.attrs["dataset_fingerprint"],
            "teacher": store.attrs["teacher"],
            "class_names": store.attrs["class_names"],
            "identity": store.identity(),
        },
        store=store,
    )


def as_data(source: "Store | TrainData | str | Path") -> TrainData:
    """A loader's data from a store, its path, or TrainData as they are."""
    if isinstance(source, TrainData):
        return source
    return data_from_store(source if isinstance(source, Store) else Store.open(str(source)))
