"""kdstore: offline knowledge distillation from a cached teacher (FFCV images + HDF5 logits).

The public API is what this module exports (`__all__`): the configs and run functions of every
command, the store, the loader over a store for any training loop (StoreLoader, its Batch, Target
and Pair, kd_loss, distill_loss and its DistillLoss), and the error type (`one_line_errors` prints
it in one line from a script of one's own). Everything else may move between releases."""

import importlib
from typing import Any

from kdstore import models as _models  # noqa: F401 - registers the CIFAR networks in timm
from kdstore import train
from kdstore.errors import KdstoreError, one_line_errors
from kdstore.loader import (
    Batch,
    DistillLoss,
    LoaderConfig,
    LossTerms,
    Pair,
    StoreLoader,
    Target,
    distill_loss,
    kd_loss,
)
from kdstore.report import sweep
from kdstore.report.sweep import SweepConfig
from kdstore.store import Store, merge, verify
from kdstore.store.merge import MergeConfig
from kdstore.train import TrainConfig, bench, teacher
from kdstore.train import eval_checkpoint as evaluate
from kdstore.train.bench import BenchConfig
from kdstore.train.eval_checkpoint import EvalConfig
from kdstore.train.teacher import TeacherConfig
from kdstore.version import __version__

__all__ = [
    "__version__",
    "KdstoreError",
    "one_line_errors",
    "Store",
    "verify",
    "StoreLoader",
    "LoaderConfig",
    "Batch",
    "Target",
    "Pair",
    "LossTerms",
    "DistillLoss",
    "kd_loss",
    "distill_loss",
    "cache",
    "train",
    "teacher",
    "merge",
    "sweep",
    "bench",
    "evaluate",
    "CacheConfig",
    "TrainConfig",
    "TeacherConfig",
    "MergeConfig",
    "SweepConfig",
    "BenchConfig",
    "EvalConfig",
]

# The writer is imported when first named (kdstore.cache, kdstore.CacheConfig): a script that
# reads stores (StoreLoader, train) never loads the teacher's pass.
_LAZY = {"cache": ("kdstore.cache", None), "CacheConfig": ("kdstore.cache.config", "CacheConfig")}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'kdstore' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = importlib.import_module(module)
    return value if attr is None else getattr(value, attr)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
