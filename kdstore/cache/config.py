"""`kdstore cache`'s options: which teacher, which data, what to store of each view."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from kdstore.cache.budget import parse_budget
from kdstore.data.beton import workers_problem
from kdstore.errors import KdstoreError
from kdstore.method.losses import DEFAULT_TAU
from kdstore.method.sparse_targets import DEFAULT_LOGITS_DTYPE
from kdstore.models.build import STEMS
from kdstore.models.teachers import TeacherSpec
from kdstore.options import old_names, opt, path_problems, type_problems
from kdstore.runtime.devices import DEVICES
from kdstore.store.format import LOGITS_DTYPES
from kdstore.store.publish import STORES_DIR, enclosing_store
from kdstore.store.views import MIXES


@old_names
@dataclass(frozen=True, kw_only=True)
class CacheConfig:
    """`kdstore cache`'s options. Each field declares its `resume` policy: whether a partial cache
    may be continued (--resume) under a different value. recorded: no, the value is recorded in the
    staging directory as given; resolved: no, recorded as what it resolves to (the dataset's name
    and sizes, the teacher's model, stem and input size, the checkpoint's sha256); free: yes (how
    and where the cache runs, not what it writes)."""

    POLICIES: ClassVar[dict[str, tuple[Any, ...]]] = {"resume": ("recorded", "resolved", "free")}

    dataset: str | None = opt(
        help="digits, cifar10, cifar100 or imagefolder:PATH (not with --extend).", resume="resolved"
    )
    out: str | None = opt(
        help="Store directory to create (default: stores/DATASET-TEACHER; with only --checkpoint, the checkpoint's "
        "directory name stands for TEACHER).",
        path=True,
        resume="free",
    )
    teacher: str | None = opt(help="timm model name (default: the checkpoint's model).", resume="resolved")
    checkpoint: str | None = opt(
        help="Teacher weights saved by kdstore (or a plain state dict).", path=True, resume="resolved"
    )
    pretrained: bool = opt(False, "Use timm's pretrained weights for the teacher.", resume="recorded")
    pretrained_file: str | None = opt(
        help="A local timm/torchvision weights file for --pretrained.", path=True, resume="recorded"
    )
    stem: str | None = opt(
        help="Stem of a timm ResNet teacher (default: the checkpoint's, else auto).", choices=STEMS, resume="resolved"
    )
    input_size: int | None = opt(
        help="Teacher input size in pixels (images are resized); default: the checkpoint's, else native.",
        resume="resolved",
    )
    image_size: int | None = opt(
        help="Size images are stored at (imagefolder); default: the first image's.", resume="recorded"
    )
    batch_size: int = opt(256, "Teacher batch size.", resume="recorded")
    workers: int = opt(
        0, "FFCV threads (writing and decoding); 0: one per core (shared among torchrun's processes).", resume="free"
    )
    device: str = opt("auto", "auto: cuda when available, else cpu.", choices=DEVICES, resume="free")
    data_root: str | None = opt(
        help="Where torchvision datasets live (default ~/.cache/kdstore/data).", path=True, resume="free"
    )
    logits_dtype: str | None = opt(
        help="dtype of the stored logits (clean, views' and top-k values; default float16, or what --budget "
        "chooses); int8: codes with a float32 scale and offset per row, C + 8 bytes a row (README, 'int8 logits').",
        choices=LOGITS_DTYPES,
        resume="recorded",
    )
    overwrite: bool = opt(
        False, "Replace an existing store at --out (only once the new one is complete).", resume="free"
    )
    resume: bool = opt(False, "Continue a killed cache (same options) from its last flushed chunk.", resume="free")
    split_part: str = opt(
        "all",
        "holdout: only the training samples the teacher's --split held out.",
        choices=("all", "holdout"),
        resume="recorded",
    )
    views: int = opt(
        0, "Also store K augmented views per training image with the teacher's logits on each.", resume="recorded"
    )
    topk: int = opt(0, "Keep only the k largest logits of each view (0: all).", resume="recorded")
    sample: int = opt(
        0,
        "Instead of logits, keep k class ids per view drawn from the teacher's softmax at --sample-tau "
        "(with replacement): an unbiased KD target (README, 'What is computed').",
        resume="recorded",
    )
    sample_tau: float = opt(
        DEFAULT_TAU, "Temperature of --sample's draws; `train --tau` must equal it.", resume="recorded"
    )
    views_seed: int = opt(0, "Seed of the views' augmentation parameters (and of --sample's draws).", resume="recorded")
    mix: str = opt(
        "none",
        "Mixed views: each view mixes its image with a seeded partner's (mixup, or cutmix), the teacher scores the "
        "mixed image, and train replays it with the partner's label mixed into the CE term.",
        choices=MIXES,
        resume="recorded",
    )
    mix_alpha: float = opt(1.0, "Beta(alpha, alpha) of the mixing weight.", resume="recorded")
    extend: str | None = opt(
        help="Extend this existing store's views to --views K instead of caching a new one (same seed and "
        "storage; the first views stay bit for bit; give the store's teacher again). The store is replaced "
        "atomically.",
        path=True,
        resume="free",
        was="add_views",
    )
    allow_untrained: bool = opt(
        False,
        "Cache a teacher with random weights (no --checkpoint, --pretrained or --pretrained-file): "
        "for speed tests only; students learn nothing from it.",
        resume="free",
    )
    amp: bool = opt(True, "Run the teacher in bf16 (autocast) on CUDA; ignored on the CPU.", resume="recorded")
    dry_run: bool = opt(
        False,
        "Print what the cache would cost (the store's size by part, its wall time from the teacher timed on a few "
        "batches, the free space at --out) and write nothing; refused in one line when it cannot fit the disk.",
        resume="free",
    )
    budget: str | None = opt(
        help="A byte budget for the whole store (20GB, 1.5GiB) or per training sample (4KB/sample): the storage of "
        "the logits (dtype, full, top-k or sampled, and k) that keeps the teacher's softmax best within it, measured "
        "on the teacher's logits of a sample of training images; --views is lowered only if no storage fits; "
        "--logits-dtype, --topk and --sample, when given, are kept.",
        resume="recorded",
    )
    progress: bool = opt(True, "Progress bars.", resume="free")

    @property
    def out_path(self) -> Path:
        """--out, or stores/DATASET-TEACHER."""
        if self.out:
            return Path(self.out)
        if self.extend:
            return Path(self.extend)
        assert self.dataset is not None  # validate(): --dataset or --extend
        dataset = Path(self.dataset.split(":", 1)[1]).name if self.dataset.startswith("imagefolder:") else self.dataset
        teacher = self.teacher or Path(self.checkpoint or "teacher").resolve().parent.name
        return STORES_DIR / f"{dataset}-{teacher}"

    @property
    def read_paths(self) -> tuple[str | None, ...]:
        """What the cache reads from disk (--checkpoint, --pretrained-file, the dataset): an --out
        that would replace one of them is refused (store.check_out)."""
        folder = self.dataset.split(":", 1)[1] if self.dataset and self.dataset.startswith("imagefolder:") else None
        return (self.checkpoint, self.pretrained_file, folder, self.data_root)

    @property
    def has_weights(self) -> bool:
        """Whether the teacher is given trained weights (or random ones were asked for)."""
        return bool(self.checkpoint or self.pretrained or self.pretrained_file or self.allow_untrained)

    @property
    def teacher_spec(self) -> TeacherSpec:
        return TeacherSpec(
            teacher=self.teacher,
            checkpoint=self.checkpoint,
            pretrained=self.pretrained,
            pretrained_file=self.pretrained_file,
            stem=self.stem,
            input_size=self.input_size,
        )

    @property
    def stored_dtype(self) -> str:
        """The dtype the logits are stored in: --logits-dtype, else the default (float16). The one
        place the default is resolved; None itself means "not given" to --budget and --extend."""
        return self.logits_dtype or DEFAULT_LOGITS_DTYPE

    def validate(self) -> None:
        wrong = type_problems(self) + path_problems(self)
        if wrong:
            raise KdstoreError(wrong[0])
        if (self.dataset is None) == (self.extend is None):
            raise KdstoreError("give --dataset (a new store) or --extend STORE (more views for it)")
        if self.extend and (self.budget or self.dry_run):
            raise KdstoreError(
                "--budget and --dry-run apply to a new cache, not to --extend (it keeps the store's storage)"
            )
        if self.extend and not self.views:
            raise KdstoreError("--extend STORE needs --views K, the number of views the store should have")
        if self.batch_size < 1:
            raise KdstoreError(f"--batch-size must be >= 1, got {self.batch_size}")
        if workers_problem(self.workers):
            raise KdstoreError(workers_problem(self.workers))
        if self.image_size is not None and self.image_size < 8:
            raise KdstoreError(f"--image-size must be >= 8 pixels, got {self.image_size}")
        inside = enclosing_store(self.out_path.parent)
        if inside is not None:
            raise KdstoreError(f"--out {self.out} lies inside the store {inside}; put stores side by side")
        if self.input_size is not None and self.input_size < 8:
            raise KdstoreError(f"--input-size must be >= 8 pixels, got {self.input_size}")
        if self.budget is not None:
            parse_budget(self.budget)
        if self.logits_dtype is not None and self.logits_dtype not in LOGITS_DTYPES:
            raise KdstoreError(f"--logits-dtype must be one of {', '.join(LOGITS_DTYPES)}, got {self.logits_dtype}")
        if self.teacher is None and self.checkpoint is None and not self.extend:
            raise KdstoreError("name the teacher with --teacher (and/or give --checkpoint)")
        if not (self.has_weights or self.extend):  # --extend names the store's own teacher (add_views.py)
            raise KdstoreError(
                f"teacher {self.teacher} has no trained weights: train it with `kdstore teacher --model {self.teacher} "
                f"--dataset {self.dataset} --out runs/teacher` and pass --checkpoint runs/teacher/checkpoint.pt "
                "(or use --pretrained); --allow-untrained caches random weights for speed tests"
            )
        if self.split_part not in ("all", "holdout"):
            raise KdstoreError(f"--split-part must be all or holdout, got {self.split_part}")
        if self.split_part == "holdout" and not self.checkpoint:
            raise KdstoreError("--split-part holdout needs the --checkpoint of a teacher trained with --split")
        self._check_views()

    def _check_views(self) -> None:
        """--views and what each view stores (--topk, --sample, --mix) in one line each."""
        if self.views < 0 or self.topk < 0:
            raise KdstoreError(f"--views and --topk must be >= 0, got {self.views} and {self.topk}")
        if self.topk and not self.views:
            raise KdstoreError("--topk applies to stored views: give --views K too")
        if self.sample < 0 or (self.sample and not self.views) or (self.sample and self.topk):
            raise KdstoreError(
                f"--sample k needs --views K and excludes --topk (got --sample {self.sample}, --views {self.views}, "
                f"--topk {self.topk})"
            )
        if (
            self.mix not in MIXES
            or (self.mix != "none" and not self.views)
            or not (self.mix_alpha > 0 and math.isfinite(self.mix_alpha))
        ):
            raise KdstoreError(
                f"--mix must be one of {', '.join(MIXES)}, with --views K and --mix-alpha > 0 (got {self.mix}, "
                f"--views {self.views}, --mix-alpha {self.mix_alpha})"
            )
        if self.sample > 65535 or not (self.sample_tau > 0 and math.isfinite(self.sample_tau)):
            raise KdstoreError(
                f"--sample must be <= 65535 and --sample-tau > 0, got {self.sample} and {self.sample_tau}"
            )
