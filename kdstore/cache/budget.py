"""`cache --budget`: the store's storage chosen by the byte.

A budget (the whole store, or bytes per training sample) leaves, after the .beton files and the
per-sample arrays, so many bytes for logits. Every storage that fits is a candidate: full logits
in float32, float16 or int8, top-k with the largest k that fits (float16 or int8 values), k
sampled ids with the largest k that fits (up to an int8 row's bytes, beyond which full int8
logits keep more for less); each is measured on the teacher's own clean logits of
a sample of training images (sparse_targets.view_kl: the mean KL(stored || full) of one view at
the KD temperature, --sample-tau) and the most faithful one is chosen (fewer bytes on a tie).
The views count is what --views asks for: more views are more augmentation, which the KL does
not measure, so it is lowered only when no storage fits that many (and never below 1 without
saying so: with no views left, the budget is refused). Without --views the budget chooses the
clean logits' dtype. --logits-dtype, --topk and --sample, when given, are kept: a budget they
cannot fit is refused in one line."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

import numpy as np

from kdstore.errors import KdstoreError
from kdstore.method.sparse_targets import DEFAULT_LOGITS_DTYPE, FULL_DTYPES, at_bytes, bytes_per_view, view_kl

BUDGET_SAMPLE = 2048  # training images the teacher scores to measure the candidates
UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30}
UNITS["tib"] = 2**40
MAX_SAMPLE = 65535


def parse_budget(text: str) -> tuple[float, bool]:
    """'20GB', '1.5 GiB', '300MB', or '4KB/sample' -> (bytes, per training sample?)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?i?b?)\s*(/\s*sample)?\s*", text.lower())
    if not m or m.group(2) not in UNITS or float(m.group(1)) <= 0:
        raise KdstoreError(f"--budget {text!r}: give a size such as 20GB, 1.5GiB or 4KB/sample")
    return float(m.group(1)) * UNITS[m.group(2)], m.group(3) is not None


@dataclass(frozen=True)
class Layout:
    """What a store's bytes depend on besides its storage."""

    fixed: float  # bytes whatever the storage: the .beton files, per-sample arrays, HDF5's own
    clean_rows: int  # rows of clean logits (train + val)
    view_rows: int  # training images (each has the views)
    classes: int
    per_view_extra: int  # bytes of each view besides what it keeps: augmentation parameters, mixing

    def bytes(self, views: int, storage: str, k: int, dtype: str) -> float:
        clean = self.clean_rows * bytes_per_view("logits", 0, self.classes, dtype)
        kept = bytes_per_view(storage, k, self.classes, dtype) + self.per_view_extra if views else 0
        return self.fixed + clean + self.view_rows * views * kept

    def largest_k(self, budget: float, views: int, storage: str, dtype: str) -> int:
        """The largest k of `storage` ("topk" or "sample") whose store fits `budget` (0: none)."""
        clean = self.clean_rows * bytes_per_view("logits", 0, self.classes, dtype)
        per_view = (budget - self.fixed - clean) / max(1, self.view_rows * views) - self.per_view_extra
        k = at_bytes(storage, int(per_view), self.classes, dtype)
        return max(0, min(k, self.classes - 1 if storage == "topk" else self.max_sample))

    @property
    def max_sample(self) -> int:
        """The most sampled ids a plan offers: no more bytes than an int8 row, which keeps more for less."""
        return min(
            MAX_SAMPLE, bytes_per_view("logits", 0, self.classes, "int8") // bytes_per_view("sample", 1, self.classes)
        )


@dataclass(frozen=True)
class Choice:
    views: int
    storage: str  # logits, topk or sample
    k: int  # top-k's or sampled ids' k (classes for full logits)
    dtype: str
    bytes: float
    kl: float  # mean KL(stored || full) of one view (without views: of a clean row) at the KD temperature

    def describe(self) -> str:
        kept = {"logits": f"full logits, {self.dtype}", "topk": f"top-{self.k}, {self.dtype} values"}
        views = f"{self.views} view{'s' * (self.views != 1)}, " if self.views else ""
        return views + kept.get(self.storage, f"{self.k} sampled ids")


def _candidates(layout: Layout, budget: float, views: int, given: dict, rows: np.ndarray, tau: float) -> list[Choice]:
    """Every storage of `views` views fitting `budget` (as given: only those), measured on `rows`."""
    dtypes = [given["logits_dtype"]] if given.get("logits_dtype") else list(FULL_DTYPES)
    shapes: list[tuple[str, int | None, str]] = []  # k None: the largest that fits
    for dtype in dtypes:
        if not views or not (given.get("topk") or given.get("sample")):
            shapes.append(("logits", layout.classes, dtype))
        if views and not given.get("sample"):
            shapes.append(("topk", given.get("topk") or None, dtype))
    if views and not given.get("topk"):  # sampled ids do not depend on the dtype (clean logits: float16 unless given)
        shapes.append(("sample", given.get("sample") or None, given.get("logits_dtype") or DEFAULT_LOGITS_DTYPE))
    out: list[Choice] = []
    for storage, k, dtype in shapes:
        k = k if k is not None else layout.largest_k(budget, views, storage, dtype)
        if k < 1:
            continue
        nbytes = layout.bytes(views, storage, k, dtype)
        if nbytes <= budget and (storage, k, dtype) not in [(c.storage, c.k, c.dtype) for c in out]:
            out.append(Choice(views, storage, k, dtype, nbytes, view_kl(rows, tau, storage, k, dtype)))
    return out


def plan(layout: Layout, budget: float, views: int, given: dict, rows: np.ndarray, tau: float) -> tuple[Choice, list]:
    """The most faithful storage that fits `budget` with the most views up to `views`, and the
    candidates measured on the way (see the module's docstring)."""
    explicit = {k: v for k, v in given.items() if v}
    for k in range(views, 0, -1) if views else [0]:
        found = _candidates(layout, budget, k, given, rows, tau)
        if found:
            return min(found, key=lambda c: (c.kl, c.bytes)), found
        if explicit:
            break
    least = layout.bytes(views, "sample" if views else "logits", 1, "int8")
    options = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in explicit.items())
    raise KdstoreError(
        f"--budget {budget / 2**20:,.1f} MiB cannot hold this store"
        + (f" with {options}" if options else "")
        + f": its images and per-sample arrays alone take {layout.fixed / 2**20:,.1f} MiB, and the smallest "
        f"storage of {views} views {least / 2**20:,.1f} MiB"
    )


def record(budget: str, chosen: Choice, candidates: list[Choice]) -> str:
    """The plan as teacher.h5 records it (attribute `budget_plan`, JSON)."""
    return json.dumps({"budget": budget, "chosen": asdict(chosen), "candidates": [asdict(c) for c in candidates]})
