"""What a run visits in each epoch: the variant's ordering, a pacing function, and the scores
(the teacher's, or the student's own snapshots) that a curriculum is built from.
Everything here is data in registries (ORDERINGS, pacing.PACINGS, SCORERS); the training loop
asks a `EpochPlan` for an epoch's positions and never branches on which ordering, pacing or
scorer it runs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from kdstore.indices import Positions
from kdstore.method.curriculum import curriculum, inverse, stratified_random
from kdstore.method.pacing import PACINGS, PacingParams, fractions, paced_sequence


@dataclass
class Scores:
    """Per-sample difficulty the orderings are built from (arrays by .beton position)."""

    confidence: np.ndarray  # (N,) float, by position
    curriculum_positions: Positions  # (N,) .beton positions (not sample ids), easy to hard
    source: str = "teacher"  # "teacher" (the store's), "none", or "student@E" (scored before epoch E)
    computed: bool = False  # computed during the run (not in the store): the run saves them

    @classmethod
    def from_predictions(cls, confidence: np.ndarray, correct: np.ndarray, labels: np.ndarray, source: str) -> "Scores":
        """The curriculum rules of docs/method.md applied to any scorer's confidences."""
        return cls(
            np.asarray(confidence, dtype=np.float32), Positions(curriculum(confidence, correct, labels)), source, True
        )


@dataclass(frozen=True)
class Ordering:
    # (scores, labels (N,), seed, epoch) -> positions (N,)
    build: Callable[[Scores, np.ndarray, int, int], np.ndarray]
    fixed: bool  # the same order every epoch, so a pacing function can grow a prefix of it
    scored: bool  # built from scores, so a scorer other than the teacher changes it


ORDERINGS: dict[str, Ordering] = {
    "shuffle": Ordering(
        lambda s, labels, seed, epoch: np.random.default_rng([seed, epoch]).permutation(len(labels)), False, False
    ),
    "curriculum": Ordering(lambda s, labels, seed, epoch: s.curriculum_positions, True, True),
    "inverse": Ordering(lambda s, labels, seed, epoch: inverse(s.curriculum_positions), True, True),
    "random": Ordering(lambda s, labels, seed, epoch: stratified_random(labels, seed), True, False),
}


# scorer -> (epoch, rescore_every) -> whether the scores are rebuilt before that epoch
SCORERS: dict[str, Callable[[int, int], bool]] = {
    "teacher": lambda epoch, every: False,  # the store's teacher scores, fixed
    "student": lambda epoch, every: epoch > 0 and epoch % every == 0,  # the current student's
}


def conflict(ordering: str, pacing: str, scorer: str, variant: str) -> str | None:
    """Why a variant (named `variant`, with `ordering`) cannot take this pacing or scorer; None when it can."""
    o = ORDERINGS[ordering]
    if PACINGS[pacing] is not None and not o.fixed:
        return (
            f"--pacing {pacing} needs a variant with a fixed order (curriculum, inverse or random-cl); "
            f"{variant} shuffles"
        )
    if scorer != "teacher" and not o.scored:
        return f"--scorer {scorer} needs a curriculum variant; {variant} does not order by scores"
    return None


@dataclass(kw_only=True)
class EpochPlan:
    """The global positions each epoch visits, in order (a rank takes its share of each batch).

    Without pacing an epoch is the ordering's N positions (cut to `length`); with pacing, batch k
    of the run holds positions drawn uniformly, without repeats, from the first g(k) fraction of
    the ordering (pacing.py).
    """

    ordering: str  # key of ORDERINGS
    pacing: str  # key of pacing.PACINGS
    params: PacingParams
    labels: np.ndarray  # (N,) by .beton position
    batch_size: int
    length: int  # positions per epoch (distributed.usable_length)
    epochs: int
    seed: int
    scores: Scores

    def __post_init__(self) -> None:
        self.steps_per_epoch = math.ceil(self.length / self.batch_size)
        self.total_steps = self.epochs * self.steps_per_epoch
        self._cached: tuple[int, Positions] | None = None

    def set_scores(self, scores: Scores) -> None:
        self.scores = scores
        self._cached = None

    def fractions(self, epoch: int) -> np.ndarray | None:
        """g(t) for each batch of `epoch` (None without pacing)."""
        steps = epoch * self.steps_per_epoch + np.arange(self.steps_per_epoch)
        return fractions(self.pacing, steps, self.total_steps, self.params)

    def order(self, epoch: int) -> np.ndarray:
        """(length,) int64 positions of `epoch` (cached: FFCV and the loop both ask)."""
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        base = np.asarray(ORDERINGS[self.ordering].build(self.scores, self.labels, self.seed, epoch), dtype=np.int64)
        frac = self.fractions(epoch)
        if frac is None:
            order = base[: self.length]
        else:
            order = paced_sequence(
                base, frac, self.batch_size, self.length, np.random.default_rng([self.seed, epoch, 0xFACE])
            )
        self._cached = (epoch, Positions(order))
        return order
