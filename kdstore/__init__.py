"""kdstore: offline knowledge distillation from a cached teacher (FFCV images + HDF5 logits).

The public API is what this module exports (`__all__`): the configs and run functions of every
command, the store, the loader over a store for any training loop (StoreLoader, its Batch, Target
and Pair, kd_loss, distill_loss and its DistillLoss), and the error type (`one_line_errors` prints
it in one line from a script of one's own). Everything else may move between releases."""

from kdstore import cache, train
from kdstore import models as _models  # noqa: F401 - registers the CIFAR networks in timm
from kdstore.cache import CacheConfig
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
from kdstore.train import TrainConfig, teacher
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
    "CacheConfig",
    "TrainConfig",
    "TeacherConfig",
    "MergeConfig",
    "SweepConfig",
    "BenchConfig",
    "EvalConfig",
]
