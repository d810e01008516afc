"""`kdstore train`'s options (TrainConfig): everything a run depends on, saved as config.json."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from kdstore.config import opt
from kdstore.data.in_memory import LOADERS
from kdstore.errors import KdstoreError
from kdstore.method.orderings import SCORERS, conflict
from kdstore.method.pacing import PACINGS, PacingParams
from kdstore.method.variants import ALIASES, VARIANTS, get_variant
from kdstore.models.build import STEMS
from kdstore.runtime.devices import DEVICES
from kdstore.store.rows import PLACEMENTS
from kdstore.store.store import enclosing_store
from kdstore.train.prepare import VIEW_MODES


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything a run depends on; saved as config.json and inside checkpoint.pt.

    Each field declares its POLICIES: `resume` (may_change: how the run runs, which --resume may
    change; fixed: what it computes), `teacher` (whether `kdstore teacher` offers it) and `sweep`
    (arm: a sweep sets it per run; where: the run's place and store; ran: recorded as it ran; off:
    not a sweep option; base: shared by every run of a sweep)."""

    POLICIES: ClassVar[dict[str, tuple[Any, ...]]] = {
        "resume": ("fixed", "may_change"),
        "teacher": (True, False),
        "sweep": ("arm", "where", "ran", "off", "base"),
    }

    out: str = opt(
        help="Run directory (config.json, metrics.jsonl, summary.json, checkpoint.pt).",
        required=True,
        path=True,
        resume="fixed",
        teacher=True,
        sweep="where",
    )
    store: str | None = opt(
        help="Store written by `kdstore cache` (default: the one store under stores/).",
        path=True,
        resume="fixed",
        teacher=False,
        sweep="where",
    )
    variant: str = opt(
        "kd",
        "The variant (docs/method.md); random-cl is the control.",
        choices=lambda: list(VARIANTS) + list(ALIASES),
        resume="fixed",
        teacher=False,
        sweep="arm",
    )
    student: str = opt(
        "cifar_resnet8",
        "Any timm model name (kdstore registers the CIFAR networks).",
        resume="fixed",
        teacher=False,
        sweep="base",
    )
    stem: str = opt(
        "auto",
        "Stem of timm ResNets on small images; auto = cifar at 64 px and below.",
        choices=STEMS,
        resume="fixed",
        teacher=True,
        sweep="base",
    )
    pretrained: bool = opt(False, "Start from timm's pretrained weights.", resume="fixed", teacher=True, sweep="base")
    pretrained_file: str | None = opt(
        help="A local timm/torchvision weights file (implies --pretrained).",
        path=True,
        resume="fixed",
        teacher=True,
        sweep="base",
    )
    input_size: int | None = opt(
        help="Train at this size (images resized after augmentation); default: the stored size.",
        resume="fixed",
        teacher=True,
        sweep="base",
    )
    epochs: int = opt(30, "Epochs.", resume="fixed", teacher=True, sweep="base")
    batch_size: int = opt(
        128, "Global batch size (split across torchrun processes).", resume="fixed", teacher=True, sweep="base"
    )
    lr: float = opt(
        0.05, "Peak SGD learning rate, cosine-annealed per step to 0.", resume="fixed", teacher=True, sweep="base"
    )
    head_lr: float | None = opt(
        help="Learning rate of the classifier head (fine-tuning); default: --lr.",
        resume="fixed",
        teacher=True,
        sweep="base",
    )
    freeze_epochs: int = opt(
        0, "Train only the classifier head for this many first epochs.", resume="fixed", teacher=True, sweep="base"
    )
    momentum: float = opt(0.9, "SGD Nesterov momentum.", resume="fixed", teacher=True, sweep="base")
    weight_decay: float = opt(5e-4, "SGD weight decay.", resume="fixed", teacher=True, sweep="base")
    label_smoothing: float = opt(0.0, "Label smoothing of the CE term.", resume="fixed", teacher=True, sweep="base")
    tau: float = opt(4.0, "KD temperature.", resume="fixed", teacher=False, sweep="base")
    lam: float = opt(0.9, "KD weight of the fixed-lambda variants.", resume="fixed", teacher=False, sweep="base")
    pacing: str = opt(
        "none",
        "Draw each batch from the easiest g(t) of the order.",
        choices=lambda: list(PACINGS),
        resume="fixed",
        teacher=False,
        sweep="arm",
    )
    pacing_a: float = opt(
        PacingParams.a,
        "Fraction of training after which all data is used.",
        resume="fixed",
        teacher=False,
        sweep="base",
    )
    pacing_b: float = opt(
        PacingParams.b, "Fraction of the order used at the start.", resume="fixed", teacher=False, sweep="base"
    )
    pacing_growth: float = opt(
        PacingParams.growth, "fixed-exp: growth factor per stair.", resume="fixed", teacher=False, sweep="base"
    )
    pacing_step_length: int | None = opt(
        help="fixed-exp: steps per stair (default: reach all data at a).", resume="fixed", teacher=False, sweep="base"
    )
    scorer: str = opt(
        "teacher",
        "Who scores the curriculum (student: its own snapshots).",
        choices=lambda: list(SCORERS),
        resume="fixed",
        teacher=False,
        sweep="arm",
    )
    rescore_every: int = opt(
        1, "With --scorer student: rebuild the curriculum every E epochs.", resume="fixed", teacher=False, sweep="base"
    )
    seed: int = opt(0, "Model init, shuffling, augmentation.", resume="fixed", teacher=True, sweep="arm")
    workers: int = opt(
        0,
        "FFCV decoding threads; 0: one per core (shared among torchrun's processes).",
        resume="may_change",
        teacher=True,
        sweep="base",
    )
    device: str = opt(
        "auto", "auto: cuda when available, else cpu.", choices=DEVICES, resume="may_change", teacher=True, sweep="base"
    )
    augment: bool = opt(True, "Random crop + flip.", resume="fixed", teacher=True, sweep="base")
    views: str = opt(
        "auto",
        "replay: augment with the store's views and distil from their logits; clean: the clean-image logits; "
        "auto: replay when the store has views.",
        choices=lambda: list(VIEW_MODES),
        resume="fixed",
        teacher=False,
        sweep="arm",
    )
    amp: bool = opt(
        True,
        "Mixed precision on CUDA (bf16 where supported); ignored on the CPU.",
        resume="fixed",
        teacher=True,
        sweep="ran",
    )
    compile: bool = opt(
        False,
        "torch.compile the student (opt-in: the first steps compile; worth it for long runs on a GPU).",
        resume="may_change",
        teacher=True,
        sweep="base",
    )
    agreement_samples: int = opt(
        10_000,
        "Clean training images (a fixed subset, the same for every run) on which each epoch measures the "
        "student's agreement and KL with the teacher; 0: validation only.",
        resume="fixed",
        teacher=False,
        sweep="base",
    )
    loader: str = opt(
        "auto",
        "device: decode the images once into device memory (host memory on the CPU) and gather batches there; "
        "ffcv: stream them through FFCV's Loader; auto: device when they fit half the free memory. Batches are "
        "identical either way.",
        choices=LOADERS,
        resume="may_change",
        teacher=True,
        sweep="base",
    )
    teacher_rows: str = opt(
        "auto",
        "Where teacher rows are gathered: device (the table uploaded once), mapped (read from the store file); "
        "auto: device on CUDA when the table fits a quarter of free memory, else mapped. Results are identical.",
        choices=PLACEMENTS,
        resume="may_change",
        teacher=False,
        sweep="base",
    )
    verify: bool = opt(
        False,
        "First hash every store file against its manifest, as `kdstore verify` does (an open always checks "
        "teacher.h5's sha256; this also finds damaged .beton pixels).",
        resume="may_change",
        teacher=False,
        sweep="off",
    )
    overwrite: bool = opt(False, "Replace a finished run in --out.", resume="may_change", teacher=True, sweep="off")
    resume: bool = opt(
        False,
        "Continue from --out/checkpoint.pt (saved after every epoch).",
        resume="may_change",
        teacher=True,
        sweep="off",
    )
    progress: bool = opt(True, "Progress bars.", resume="may_change", teacher=True, sweep="base")
    tensorboard: bool = opt(
        True,
        "TensorBoard event files in --out (`tensorboard --logdir runs`).",
        resume="may_change",
        teacher=True,
        sweep="base",
    )

    def _value_checks(self) -> list[tuple[bool, str]]:
        """(holds, the one-line error when it does not) for every option with a range."""
        return [
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (
                self.batch_size >= 2,
                f"--batch-size must be >= 2 (BatchNorm cannot train on one sample), got {self.batch_size}",
            ),
            (self.lr > 0 and math.isfinite(self.lr), f"--lr must be > 0, got {self.lr}"),
            (
                self.weight_decay >= 0 and math.isfinite(self.weight_decay),
                f"--weight-decay must be a finite number >= 0, got {self.weight_decay}",
            ),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}"),
            (self.seed >= 0, f"--seed must be >= 0, got {self.seed}"),
            (
                self.pretrained_file is None or Path(self.pretrained_file).is_file(),
                f"pretrained weights file {self.pretrained_file} does not exist",
            ),
            (self.tau > 0 and math.isfinite(self.tau), f"--tau must be > 0, got {self.tau}"),
            (0.0 <= self.lam <= 1.0, f"--lam must be in [0, 1], got {self.lam}"),
            (0.0 <= self.label_smoothing < 1.0, f"--label-smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.workers >= 0, f"--workers must be >= 0, got {self.workers}"),
            (
                self.head_lr is None or (self.head_lr > 0 and math.isfinite(self.head_lr)),
                f"--head-lr must be > 0, got {self.head_lr}",
            ),
            (
                0 <= self.freeze_epochs < self.epochs,
                f"--freeze-epochs must be in [0, epochs), got {self.freeze_epochs}",
            ),
            (
                self.input_size is None or self.input_size >= 8,
                f"--input-size must be >= 8 pixels, got {self.input_size}",
            ),
            (self.agreement_samples >= 0, f"--agreement-samples must be >= 0, got {self.agreement_samples}"),
        ]

    def validate(self) -> None:
        for ok, message in self._value_checks():
            if not ok:
                raise KdstoreError(message)
        inside = enclosing_store(Path(self.out))
        if inside is not None:
            raise KdstoreError(
                f"--out {self.out} lies inside the store {inside}; write runs beside stores, not into them"
            )
        try:
            variant = get_variant(self.variant)
        except ValueError as e:
            raise KdstoreError(str(e)) from None
        if self.loader not in LOADERS:
            raise KdstoreError(f"--loader must be one of {', '.join(LOADERS)}, got {self.loader!r}")
        if self.teacher_rows not in PLACEMENTS:
            raise KdstoreError(f"--teacher-rows must be one of {', '.join(PLACEMENTS)}, got {self.teacher_rows!r}")
        if self.views not in VIEW_MODES:
            raise KdstoreError(f"--views must be one of {', '.join(VIEW_MODES)}, got {self.views!r}")
        if VIEW_MODES[self.views].needs_augment and not self.augment:
            raise KdstoreError("--views replay augments with the stored views; it contradicts --no-augment")
        if self.pacing not in PACINGS:
            raise KdstoreError(f"unknown --pacing {self.pacing!r}; known: {', '.join(PACINGS)}")
        if self.scorer not in SCORERS:
            raise KdstoreError(f"unknown --scorer {self.scorer!r}; known: {', '.join(SCORERS)}")
        problems = self.pacing_params.problems() + (
            [f"--rescore-every must be >= 1, got {self.rescore_every}"] if self.rescore_every < 1 else []
        )
        if problems:
            raise KdstoreError(problems[0])
        problem = conflict(variant.ordering, self.pacing, self.scorer, variant.name)
        if problem:
            raise KdstoreError(problem)

    @property
    def pacing_params(self) -> PacingParams:
        return PacingParams(self.pacing_a, self.pacing_b, self.pacing_growth, self.pacing_step_length)

    @property
    def arm(self) -> str:
        """What a report groups runs by: the variant, plus its pacing, scorer and views mode when not the defaults."""
        name = get_variant(self.variant).name
        defaults = TrainConfig(out="")
        return (
            name
            + (f"+{self.pacing}" if PACINGS[self.pacing] is not None else "")
            + (f"+{self.scorer}" if self.scorer != defaults.scorer else "")
            + (f"+{self.views}" if self.views != defaults.views else "")
        )
