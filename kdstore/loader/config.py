"""The public loader's options (LoaderConfig): which samples each epoch visits, in which order,
augmented how, with which teacher target and lambda. `kdstore train` takes these same options
(its TrainConfig declares them from here, `kdstore.options.opt_from`), so their defaults are train's."""

from __future__ import annotations

import math
from dataclasses import dataclass

from kdstore.data.beton import workers_problem
from kdstore.data.in_memory import LOADERS
from kdstore.errors import KdstoreError
from kdstore.loader.prepare import VIEW_MODES
from kdstore.method.distill_losses import LOSSES, DistillTerm, distill_term
from kdstore.method.losses import DEFAULT_TAU
from kdstore.method.orderings import SCORERS, conflict
from kdstore.method.pacing import PACINGS, PacingParams
from kdstore.method.variants import ALIASES, VARIANTS, get_variant
from kdstore.options import old_names, opt, type_problems
from kdstore.runtime.devices import DEVICES
from kdstore.store.rows import PLACEMENTS


@old_names
@dataclass(frozen=True, kw_only=True)
class LoaderConfig:
    """How a StoreLoader feeds a split; every field is keyword-only and defaults as `kdstore train`."""

    variant: str = opt(
        "kd",
        "The variant (docs/method.md); random-cl is the control.",
        choices=lambda: list(VARIANTS) + list(ALIASES),
    )
    epochs: int = opt(30, "Epochs.")
    batch_size: int = opt(128, "Global batch size (split across torchrun processes).")
    lam: float = opt(0.9, "KD weight of the fixed-lambda variants.")
    tau: float = opt(
        DEFAULT_TAU,
        "KD temperature (of kd, dkd, dist and mlkd; nkd, wttm and ctkd have their own, see --loss-options).",
    )
    loss: str = opt(
        "kd",
        "The distillation loss weighed by lambda against CE (docs/method.md): kd (Hinton), dkd, dist, nkd, wttm, "
        "ctkd (a learnt temperature), mlkd (two stored views of each image).",
        choices=lambda: list(LOSSES),
    )
    loss_options: str = opt(
        "",
        "The loss's hyper-parameters as KEY=VALUE,... over the paper's CIFAR defaults (dkd: alpha, beta, warmup; "
        "dist: beta, gamma; nkd: gamma, temp; wttm: gamma, beta).",
    )
    logit_standardize: bool = opt(
        False, "Z-score both sides' logits before the loss's softmax (logit standardisation; kd and dkd)."
    )
    pacing: str = opt("none", "Draw each batch from the easiest g(t) of the order.", choices=lambda: list(PACINGS))
    pacing_a: float = opt(PacingParams.a, "Fraction of training after which all data is used.")
    pacing_b: float = opt(PacingParams.b, "Fraction of the order used at the start.")
    pacing_growth: float = opt(PacingParams.growth, "fixed-exp: growth factor per stair.")
    pacing_step_length: int | None = opt(help="fixed-exp: steps per stair (default: reach all data at a).")
    scorer: str = opt(
        "teacher", "Who scores the curriculum (student: its own snapshots).", choices=lambda: list(SCORERS)
    )
    rescore_every: int = opt(1, "With --scorer student: rebuild the curriculum every E epochs.")
    seed: int = opt(0, "Model init, shuffling, augmentation.")
    workers: int = opt(0, "FFCV decoding threads; 0: one per core (shared among torchrun's processes).")
    device: str = opt("auto", "auto: cuda when available, else cpu.", choices=DEVICES)
    augment: bool = opt(True, "Random crop + flip.")
    view_mode: str = opt(
        "auto",
        "replay: augment with the store's views and distil from their logits; clean: the clean-image logits; "
        "auto: replay when the store has views.",
        choices=lambda: list(VIEW_MODES),
        was="views",
    )
    loader: str = opt(
        "auto",
        "device: decode the images once into device memory (host memory on the CPU) and gather batches there; "
        "ffcv: stream them through FFCV's Loader; auto: device when they fit half the free memory. Batches are "
        "identical either way.",
        choices=LOADERS,
    )
    teacher_rows: str = opt(
        "auto",
        "Where teacher rows are gathered: device (the table uploaded once), mapped (read from the store file); "
        "auto: device on CUDA when the table fits a quarter of free memory, else mapped. Results are identical.",
        choices=PLACEMENTS,
    )

    def distill_term(self) -> DistillTerm:
        """The distillation loss these options name, or a one-line error."""
        try:
            return distill_term(self.loss, self.loss_options, self.logit_standardize)
        except ValueError as e:
            raise KdstoreError(str(e)) from None

    @property
    def pacing_params(self) -> PacingParams:
        return PacingParams(self.pacing_a, self.pacing_b, self.pacing_growth, self.pacing_step_length)

    def _value_checks(self) -> list[tuple[bool, str]]:
        """(holds, the one-line error when it does not) for every option with a range."""
        return [
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (
                self.batch_size >= 2,
                f"--batch-size must be >= 2 (BatchNorm cannot train on one sample), got {self.batch_size}",
            ),
            (0 <= self.seed < 2**32, f"--seed must be in [0, 2**32), got {self.seed}"),
            (self.tau > 0 and math.isfinite(self.tau), f"--tau must be > 0, got {self.tau}"),
            (0.0 <= self.lam <= 1.0, f"--lam must be in [0, 1], got {self.lam}"),
            (workers_problem(self.workers) is None, workers_problem(self.workers) or ""),
            (self.loader in LOADERS, f"--loader must be one of {', '.join(LOADERS)}, got {self.loader!r}"),
            (
                self.teacher_rows in PLACEMENTS,
                f"--teacher-rows must be one of {', '.join(PLACEMENTS)}, got {self.teacher_rows!r}",
            ),
            (
                self.view_mode in VIEW_MODES,
                f"--view-mode must be one of {', '.join(VIEW_MODES)}, got {self.view_mode!r}",
            ),
            (self.pacing in PACINGS, f"unknown --pacing {self.pacing!r}; known: {', '.join(PACINGS)}"),
            (self.scorer in SCORERS, f"unknown --scorer {self.scorer!r}; known: {', '.join(SCORERS)}"),
            (self.rescore_every >= 1, f"--rescore-every must be >= 1, got {self.rescore_every}"),
        ]

    def validate(self) -> None:
        """Refuse, in one line, an option of the wrong type, out of range, or a combination the
        variant cannot take (the CLI's messages, naming the option)."""
        wrong = type_problems(self)
        if wrong:
            raise KdstoreError(wrong[0])
        for ok, message in self._value_checks():
            if not ok:
                raise KdstoreError(message)
        try:
            variant = get_variant(self.variant)
        except ValueError as e:
            raise KdstoreError(str(e)) from None
        if VIEW_MODES[self.view_mode].needs_augment and not self.augment:
            raise KdstoreError("--view-mode replay augments with the stored views; it contradicts --no-augment")
        problem = self.distill_term().tau_problem(self.tau)
        if problem:
            raise KdstoreError(problem)
        problems = self.pacing_params.problems()
        if problems:
            raise KdstoreError(problems[0])
        problem = conflict(variant.ordering, self.pacing, self.scorer, variant.name)
        if problem:
            raise KdstoreError(problem)
