"""What a StoreLoader yields (Batch, with its teacher Target) and the loss that reads it (kd_loss).

A Batch is ready for the student: images normalised, augmented and on the device; labels on the
device; the teacher's target for exactly those pixels; the batch's lambda. `kd_loss` is the loss
of docs/method.md on it, whatever the store kept (full logits, top-k with fill, sampled ids, mixed
views). Both are public: `from kdstore import Batch, Target, kd_loss`."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Mapping, NamedTuple

import numpy as np
import torch

from kdstore.errors import KdstoreError
from kdstore.method.distill_losses import DistillTerm, distill_term
from kdstore.method.losses import DEFAULT_TAU, ce_mean, student_loss, weigh

# Target.kind: where a batch's teacher logits come from
TARGET_KINDS = {
    "none": "no teacher term (unguided, or a split without teacher logits)",
    "logits": "the stored logits (the clean images', or the replayed view's)",
    "topk": "the view's stored top-k logits, the other classes at the stored fill value",
    "sampled": "tau * log of the empirical distribution of the view's sampled class ids",
    "online": "a live teacher's logits on the batch's images (the online-KD baseline)",
}


@dataclass(frozen=True, kw_only=True)
class Target:
    """The teacher's target of a batch, as the KD term reads it.

    logits: (B, C) float32 on the device, dense whatever the storage (top-k rows are expanded,
    sampled ids become tau * log of their empirical distribution); None when kind is "none".
    partner_labels, label_weight: for mixed views, each sample's partner label and the weight
    w of its own label in the CE term (w * CE(y) + (1 - w) * CE(y_partner)); None otherwise.
    tau: the temperature the KD term reads these targets at: the loader's --tau (for sampled ids,
    the temperature they were drawn at, which the loader's must equal); kd_loss uses it unless told
    another (a sampled target refuses another)."""

    kind: str
    logits: torch.Tensor | None = None
    partner_labels: torch.Tensor | None = None
    label_weight: torch.Tensor | None = None
    tau: float | None = None

    @property
    def mix(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.partner_labels is None or self.label_weight is None:
            return None
        return self.partner_labels, self.label_weight


@dataclass(frozen=True, kw_only=True)
class Pair:
    """A second stored view of every sample of a batch, for a loss that reads two (mlkd: the
    batch's own images are its weak view, these its strong one). images: (B, 3, H, W) as
    Batch.images; target: the teacher's target for exactly these pixels; views: (B,) their
    stored view indices (host), never those of the batch's own images."""

    images: torch.Tensor
    target: Target
    views: np.ndarray


@dataclass(kw_only=True)
class Batch:
    """One batch of a StoreLoader, on its device.

    images: (B, 3, H, W) float, normalised and augmented, in channels_last memory layout.
    labels: (B,) int64. ids: (B,) int64 sample ids (host). positions: (B,) int64 row positions
    in the split (host). lam: the batch's KD weight lambda (0 on a validation split).
    target: the teacher's target. epoch, index: where the batch sits in the run. pair: a second
    view of each sample (Pair) when the loss reads two (mlkd), else None."""

    images: torch.Tensor
    labels: torch.Tensor
    ids: np.ndarray
    positions: np.ndarray
    lam: float
    target: Target
    epoch: int
    index: int
    pair: Pair | None = None

    def __len__(self) -> int:
        return len(self.labels)


class LossTerms(NamedTuple):
    """kd_loss's result: the loss to backpropagate, and its CE and KD terms (detached batch means)."""

    loss: torch.Tensor
    ce: torch.Tensor
    kd: torch.Tensor


def kd_loss(
    student_logits: torch.Tensor,
    batch: Batch,
    *,
    tau: float | None = None,
    lam: float | None = None,
    label_smoothing: float = 0.0,
    loss: DistillTerm | None = None,
    pair_logits: torch.Tensor | None = None,
) -> LossTerms:
    """(1 - lam) * CE + lam * tau^2 * KL(softmax(z_T / tau) || softmax(z_S / tau)), batch means
    (docs/method.md); with `loss` (distill_loss), that loss's term in place of Hinton's KD. lam
    defaults to the batch's; a batch without a teacher term trains on CE alone. For mixed views
    the CE term mixes the two labels by the stored weight. A target of sampled ids must be read
    at the temperature it was drawn at (a mismatch is an error). A loss that reads two views
    (mlkd) also takes `pair_logits`, the student's logits on batch.pair.images; its CE is then
    the sum of both views' (as MLKD trains on both). tau: the batch's target's (its loader's
    --tau) unless given; 4 for a target that carries none."""
    target = batch.target
    tau = _tau_of(tau, target, loss)
    _check_logits(student_logits, batch)
    weight = batch.lam if lam is None else lam
    if loss is not None and loss.spec.pairs and target.logits is not None:
        zs, labels, zt, mix = _with_pair(student_logits.float(), batch, loss, pair_logits)
        terms = weigh(
            ce_mean(zs, labels, label_smoothing, mix, views=2), loss(zs, zt, labels, tau, batch.epoch), weight
        )
    else:
        terms = student_loss(
            student_logits.float(),
            batch.labels,
            target.logits,
            weight if target.logits is not None else 0.0,
            tau,
            label_smoothing,
            target.mix,
            None if loss is None else functools.partial(_term, loss, batch.labels, tau, batch.epoch),
        )
    return LossTerms(terms["loss"], terms["ce"], terms["kd"])


def _tau_of(tau: float | None, target: Target, loss: DistillTerm | None) -> float:
    """The temperature of a kd_loss call: `tau` when given, else the target's, else DEFAULT_TAU;
    checked (finite, > 0, the one sampled ids were drawn at, one the loss can run at)."""
    chosen = tau if tau is not None else target.tau if target.tau is not None else DEFAULT_TAU
    check_tau(chosen, "kd_loss")
    if target.kind == "sampled" and target.tau is not None and chosen != target.tau:
        raise KdstoreError(f"this batch's targets were sampled at tau {target.tau}; kd_loss got tau {chosen}")
    problem = loss.tau_problem(chosen) if loss is not None else None
    if problem:
        raise KdstoreError(problem.replace("--", ""))
    return chosen


def _with_pair(student_logits: torch.Tensor, batch: Batch, loss: DistillTerm, pair_logits: torch.Tensor | None):
    """A two-view loss's inputs: the batch's rows then its pair's (2B rows): student logits,
    labels, teacher logits and the label mix (None unless both views are mixed)."""
    name = loss.spec.name
    if batch.pair is None:
        raise KdstoreError(
            f"kd_loss: --loss {name} reads two views of every image and this batch has none (a StoreLoader "
            f"opened with loss={name!r} over a store with views gives them)"
        )
    if pair_logits is None:
        raise KdstoreError(f"kd_loss: --loss {name} needs pair_logits=model(batch.pair.images)")
    if tuple(pair_logits.shape) != tuple(student_logits.shape):
        raise KdstoreError(
            f"kd_loss: pair_logits of shape {tuple(pair_logits.shape)}, "
            f"the batch's logits {tuple(student_logits.shape)}"
        )
    pair = batch.pair
    assert batch.target.logits is not None and pair.target.logits is not None
    mix, pair_mix = batch.target.mix, pair.target.mix
    both = None
    if mix is not None and pair_mix is not None:
        both = (torch.cat([mix[0], pair_mix[0]]), torch.cat([mix[1], pair_mix[1]]))
    return (
        torch.cat([student_logits, pair_logits.float()]),
        torch.cat([batch.labels, batch.labels]),
        torch.cat([batch.target.logits, pair.target.logits]),
        both,
    )


def _term(loss: DistillTerm, labels: torch.Tensor, tau: float, epoch: int, zs: torch.Tensor, zt: torch.Tensor):
    return loss(zs, zt, labels, tau, epoch)


def distill_loss(
    name: str = "kd",
    *,
    tau: float | None = None,
    logit_standardize: bool = False,
    options: Mapping[str, float] | None = None,
    **hyper: float,
) -> "DistillLoss":
    """A distillation loss by name (kd, dkd, dist, nkd, wttm, ctkd, mlkd; docs/method.md) with
    its hyper-parameters (the paper's CIFAR defaults unless given), as a module called
    `(student_logits, batch, *, lam=None, label_smoothing=0.0, pair_logits=None) -> LossTerms`,
    the terms named as kd_loss's; `distill_loss("kd")` is kd_loss. Its `parameters()` (ctkd's
    temperature; none for the others) go to the optimiser. The hyper-parameters come as keywords
    and/or as the mapping `options`; `tau` overrides the temperature each batch's target carries
    (its loader's --tau). Bad names or values are one KdstoreError."""
    if tau is not None:
        check_tau(tau, "distill_loss")
    text = ",".join(f"{k}={v}" for k, v in {**(options or {}), **hyper}.items())
    try:
        term = distill_term(name, text, logit_standardize)
    except ValueError as e:
        raise KdstoreError(str(e).replace("--loss-options ", "").replace("--", "")) from None
    problem = term.tau_problem(tau) if tau is not None else None
    if problem:
        raise KdstoreError(problem.replace("--", ""))
    return loss_of(term, tau)


class DistillLoss(torch.nn.Module):
    """A distillation loss over (student_logits, batch): kd_loss with `term`, at `tau` (None: the
    temperature each batch's target carries, its loader's --tau).
    A module: a loss with learnt parts (ctkd's temperature) gives them by `parameters()`, to be
    handed to the optimiser with the student's (`kdstore train` does), and saved with
    `state_dict()`. A two-view loss (mlkd) also takes `pair_logits`."""

    def __init__(self, term: DistillTerm, tau: float | None) -> None:
        super().__init__()
        self.term, self.tau = term, tau

    def forward(
        self,
        student_logits: torch.Tensor,
        batch: Batch,
        *,
        lam: float | None = None,
        label_smoothing: float = 0.0,
        pair_logits: torch.Tensor | None = None,
    ) -> LossTerms:
        return kd_loss(
            student_logits,
            batch,
            tau=self.tau,
            lam=lam,
            label_smoothing=label_smoothing,
            loss=self.term,
            pair_logits=pair_logits,
        )


def loss_of(term: DistillTerm, tau: float | None) -> DistillLoss:
    """`term` at temperature `tau` (None: each batch's target's) as a module over
    (student_logits, batch) (distill_loss)."""
    return DistillLoss(term, tau)


def check_tau(tau: object, where: str) -> None:
    """A KD temperature must be a finite number > 0 (NaN or inf would train on NaN losses)."""
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not (math.isfinite(tau) and tau > 0):
        raise KdstoreError(f"{where}: tau must be a finite number > 0, got {tau!r}")


def _check_logits(student_logits: torch.Tensor, batch: Batch) -> None:
    """The student's logits must be (B, C) for the batch's B samples and the store's C classes."""
    shape = tuple(student_logits.shape)
    classes = batch.target.logits.shape[-1] if batch.target.logits is not None else None
    if len(shape) != 2 or shape[0] != len(batch):
        raise KdstoreError(f"kd_loss: student logits of shape {shape} for a batch of {len(batch)} samples")
    if classes is not None and shape[1] != classes:
        raise KdstoreError(
            f"kd_loss: the student gives {shape[1]} classes, the store's teacher {classes}: build the student with "
            f"num_classes={classes}"
        )
