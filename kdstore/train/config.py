"""`kdstore train`'s options (TrainConfig): everything a run depends on, saved as config.json."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from kdstore.errors import KdstoreError
from kdstore.loader.config import LoaderConfig
from kdstore.method.pacing import PACINGS, PacingParams
from kdstore.method.variants import get_variant
from kdstore.models.build import STEMS
from kdstore.options import old_names, opt, opt_from, path_problems, type_problems, with_new_names
from kdstore.store.publish import enclosing_store


@old_names
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
        resume="may_change",  # the run directory resumed from: however spelt, wherever moved
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
    variant: str = opt_from(LoaderConfig, "variant", resume="fixed", teacher=False, sweep="arm")
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
    epochs: int = opt_from(LoaderConfig, "epochs", resume="fixed", teacher=True, sweep="base")
    batch_size: int = opt_from(LoaderConfig, "batch_size", resume="fixed", teacher=True, sweep="base")
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
    tau: float = opt_from(LoaderConfig, "tau", resume="fixed", teacher=False, sweep="base")
    lam: float = opt_from(LoaderConfig, "lam", resume="fixed", teacher=False, sweep="base")
    loss: str = opt_from(LoaderConfig, "loss", resume="fixed", teacher=False, sweep="arm")
    loss_options: str = opt_from(LoaderConfig, "loss_options", resume="fixed", teacher=False, sweep="base")
    logit_standardize: bool = opt_from(LoaderConfig, "logit_standardize", resume="fixed", teacher=False, sweep="base")
    pacing: str = opt_from(LoaderConfig, "pacing", resume="fixed", teacher=False, sweep="arm")
    pacing_a: float = opt_from(LoaderConfig, "pacing_a", resume="fixed", teacher=False, sweep="base")
    pacing_b: float = opt_from(LoaderConfig, "pacing_b", resume="fixed", teacher=False, sweep="base")
    pacing_growth: float = opt_from(LoaderConfig, "pacing_growth", resume="fixed", teacher=False, sweep="base")
    pacing_step_length: int | None = opt_from(
        LoaderConfig, "pacing_step_length", resume="fixed", teacher=False, sweep="base"
    )
    scorer: str = opt_from(LoaderConfig, "scorer", resume="fixed", teacher=False, sweep="arm")
    rescore_every: int = opt_from(LoaderConfig, "rescore_every", resume="fixed", teacher=False, sweep="base")
    seed: int = opt_from(LoaderConfig, "seed", resume="fixed", teacher=True, sweep="arm")
    workers: int = opt_from(LoaderConfig, "workers", resume="may_change", teacher=True, sweep="base")
    device: str = opt_from(LoaderConfig, "device", resume="may_change", teacher=True, sweep="base")
    augment: bool = opt_from(LoaderConfig, "augment", resume="fixed", teacher=True, sweep="base")
    view_mode: str = opt_from(LoaderConfig, "view_mode", resume="fixed", teacher=False, sweep="arm")
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
    cuda_graph: bool = opt(
        True,
        "On CUDA, replay the training step from one captured CUDA graph (train/graph_step.py; a step that "
        "cannot be captured says why and runs eagerly); ignored on the CPU.",
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
    loader: str = opt_from(LoaderConfig, "loader", resume="may_change", teacher=True, sweep="base")
    teacher_rows: str = opt_from(LoaderConfig, "teacher_rows", resume="may_change", teacher=False, sweep="base")
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

    def loader_config(self) -> LoaderConfig:
        """The options the run's data loader takes (kdstore.loader.StoreLoader), as given here."""
        return LoaderConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(LoaderConfig)})

    def _value_checks(self) -> list[tuple[bool, str]]:
        """(holds, the one-line error when it does not) for every training option with a range
        (the data options' are the loader's: LoaderConfig.validate)."""
        return [
            (self.lr > 0 and math.isfinite(self.lr), f"--lr must be > 0, got {self.lr}"),
            (
                self.weight_decay >= 0 and math.isfinite(self.weight_decay),
                f"--weight-decay must be a finite number >= 0, got {self.weight_decay}",
            ),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}"),
            (
                self.pretrained_file is None or Path(self.pretrained_file).is_file(),
                f"pretrained weights file {self.pretrained_file} does not exist",
            ),
            (0.0 <= self.label_smoothing < 1.0, f"--label-smoothing must be in [0, 1), got {self.label_smoothing}"),
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
        wrong = type_problems(self) + path_problems(self)
        if wrong:
            raise KdstoreError(wrong[0])
        self.loader_config().validate()
        for ok, message in self._value_checks():
            if not ok:
                raise KdstoreError(message)
        inside = enclosing_store(Path(self.out))
        if inside is not None:
            raise KdstoreError(
                f"--out {self.out} lies inside the store {inside}; write runs beside stores, not into them"
            )

    @property
    def pacing_params(self) -> PacingParams:
        return self.loader_config().pacing_params

    @staticmethod
    def recorded(saved: dict[str, Any]) -> dict[str, Any]:
        """A run's recorded options (its config.json or checkpoint), with the options it predates at
        their defaults (NEWER_OPTIONS: a run from before `--loss` trained kd), so that a resume or a
        sweep compares what the run really did. A renamed option's old key reads as its new name."""
        saved = with_new_names(TrainConfig, saved)
        return {**{k: v for k, v in NEWER_OPTIONS.items() if k not in saved}, **saved}

    @property
    def arm(self) -> str:
        """What a report groups runs by: the variant, plus its pacing, scorer and views mode when not the defaults."""
        name = get_variant(self.variant).name
        defaults = TrainConfig(out="")
        return (
            name
            + (f"+{self.loss}" if self.loss != defaults.loss else "")
            + ("+ls" if self.logit_standardize else "")
            + (f"+{self.pacing}" if PACINGS[self.pacing] is not None else "")
            + (f"+{self.scorer}" if self.scorer != defaults.scorer else "")
            + (f"+{self.view_mode}" if self.view_mode != defaults.view_mode else "")
        )


# Options added after runs were recorded without them, with the value those runs had in effect.
NEWER_OPTIONS: dict[str, Any] = {"loss": "kd", "loss_options": "", "logit_standardize": False}
