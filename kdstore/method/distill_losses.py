"""Logit-distillation losses as data (docs/method.md, "Distillation losses").

Each loss maps a batch's student logits z_S (B, C), teacher logits z_T (B, C) and labels (B,)
to its distillation term, a batch mean; the variant's lambda weighs it against cross-entropy
exactly as it weighs Hinton's KD: L = (1 - lambda) * CE + lambda * L_loss (losses.student_loss).
A loss's own weights (DKD's alpha and beta, DIST's beta and gamma, ...) scale L_loss inside.

Logit standardisation (Sun et al., CVPR 2024) replaces both sides' logits by their Z-score
(per sample, over classes) before the loss's softmax at temperature tau, for the losses that
define it (`standardizable`).

Two losses are more than a function: `ctkd` learns its temperature (a module whose parameter the
optimiser gets: DistillTerm is an nn.Module, and `parameters()` of a loss without learnt parts is
empty), and `mlkd` reads two views of every image (`pairs`): its term gets the weak view's rows
then the strong view's, 2B rows in all."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdstore.method.losses import kd_per_sample

# (student logits, teacher logits, labels, tau, hyper-parameters, epoch (0-based)) -> the term
Term = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float, Mapping[str, float], int], torch.Tensor]


@dataclass(frozen=True)
class LossSpec:
    """One distillation loss: its paper, its hyper-parameters with their defaults (the paper's
    CIFAR settings) and the check each must pass, and what a store must give it."""

    name: str
    paper: str
    term: Term
    hyper: Mapping[str, float]  # name -> default
    ranges: Mapping[str, tuple[float, float, str]]  # name -> (low, high, what), low inclusive, high inclusive
    uses_tau: bool  # reads --tau (kd, dkd, dist); the others have their own temperatures
    standardizable: bool  # logit standardisation is defined for it
    full_logits: bool = True  # needs the teacher's full logits (not top-k rows or sampled ids)
    module: Callable[[Mapping[str, float]], nn.Module] | None = None  # learnt parts: a module replacing `term`
    pairs: bool = False  # reads two stored views of each image (weak rows, then strong rows)
    whole: Mapping[str, str] | None = None  # options that must be whole numbers, and why
    standardizes_itself: bool = False  # applies logit standardisation to some of its terms only
    tau_above: str | None = None  # the option that tau must exceed (its temperatures tau - it must be > 0)
    lam_above: tuple[float, str] | None = None  # a fixed lambda above this is warned of, and why


STANDARDIZE = "standardize"  # in the hyper-parameters a loss that standardizes_itself is given


def standardize(z: torch.Tensor) -> torch.Tensor:
    """Z-score of each row over its classes: (z - mean) / (std + 1e-7), std with Bessel's
    correction (as the logit-standardisation paper's code computes it)."""
    return (z - z.mean(dim=1, keepdim=True)) / (z.std(dim=1, keepdim=True) + 1e-7)


def _kd(zs: torch.Tensor, zt: torch.Tensor, labels: torch.Tensor, tau: float, h: Mapping[str, float], epoch: int):
    """Hinton et al. 2015: tau^2 * KL(softmax(z_T / tau) || softmax(z_S / tau))."""
    return kd_per_sample(zs, zt, tau).mean()


def _non_target(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The (B, C - 1) logits of the classes other than each sample's label, in class order."""
    keep = torch.ones_like(z, dtype=torch.bool).scatter_(1, labels[:, None], False)
    return z[keep].view(z.shape[0], z.shape[1] - 1)


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row from log-probabilities."""
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(dim=1)


def _dkd(zs: torch.Tensor, zt: torch.Tensor, labels: torch.Tensor, tau: float, h: Mapping[str, float], epoch: int):
    """Zhao et al., CVPR 2022: warm-up * (alpha * TCKD + beta * NCKD), both times tau^2.
    TCKD: KL between the binary (target, all others) probabilities at tau; NCKD: KL between the
    softmaxes at tau over the non-target classes only. The warm-up weight is min((epoch + 1) /
    warmup, 1) (epochs counted from 1, as DKD's code does; warmup 0: none)."""
    log_ps, log_pt = F.log_softmax(zs / tau, dim=1), F.log_softmax(zt / tau, dim=1)
    target = labels[:, None]
    ps_t, pt_t = log_ps.gather(1, target).exp(), log_pt.gather(1, target).exp()
    eps = torch.finfo(zs.dtype).tiny
    b_s = torch.cat([ps_t, 1 - ps_t], dim=1).clamp_min(eps).log()
    b_t = torch.cat([pt_t, 1 - pt_t], dim=1).clamp_min(eps).log()
    tckd = _kl_rows(b_t, b_s)
    nckd = _kl_rows(
        F.log_softmax(_non_target(zt, labels) / tau, dim=1), F.log_softmax(_non_target(zs, labels) / tau, dim=1)
    )
    warm = min((epoch + 1) / h["warmup"], 1.0) if h["warmup"] > 0 else 1.0
    return warm * (tau * tau) * (h["alpha"] * tckd + h["beta"] * nckd).mean()


def _pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of a with the same row of b."""
    a, b = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def _dist(zs: torch.Tensor, zt: torch.Tensor, labels: torch.Tensor, tau: float, h: Mapping[str, float], epoch: int):
    """Huang et al., NeurIPS 2022: tau^2 * (beta * inter + gamma * intra), on y = softmax(z / tau):
    inter = 1 - mean over samples of the Pearson correlation of y_S and y_T across classes;
    intra = 1 - mean over classes of their Pearson correlation across the batch's samples."""
    ys, yt = F.softmax(zs / tau, dim=1), F.softmax(zt / tau, dim=1)
    inter = 1 - _pearson_rows(ys, yt).mean()
    intra = 1 - _pearson_rows(ys.T, yt.T).mean()
    return (tau * tau) * (h["beta"] * inter + h["gamma"] * intra)


def _nkd(zs: torch.Tensor, zt: torch.Tensor, labels: torch.Tensor, tau: float, h: Mapping[str, float], epoch: int):
    """Yang et al., ICCV 2023: -T_t log S_t (the teacher's target probability times the student's
    log target probability, both at temperature 1) - gamma * temp^2 * sum over non-target classes
    of N(T)_i log N(S)_i, N the softmax at `temp` over the non-target classes only."""
    target = labels[:, None]
    log_s_t = F.log_softmax(zs, dim=1).gather(1, target).squeeze(1)
    t_t = F.softmax(zt, dim=1).gather(1, target).squeeze(1)
    temp = h["temp"]
    log_ns = F.log_softmax(_non_target(zs, labels) / temp, dim=1)
    nt = F.softmax(_non_target(zt, labels) / temp, dim=1)
    return (-(t_t * log_s_t) - h["gamma"] * temp * temp * (nt * log_ns).sum(dim=1)).mean()


def _wttm(zs: torch.Tensor, zt: torch.Tensor, labels: torch.Tensor, tau: float, h: Mapping[str, float], epoch: int):
    """Zheng & Yang, ICLR 2024: the teacher's softmax power-transformed, p^gamma / U with
    U = sum_k p_k^gamma, matched by the student at temperature 1; each sample weighted by U
    (larger for a flatter teacher): beta * mean(U * KL(p^gamma / U || softmax(z_S)))."""
    log_pt = F.log_softmax(zt, dim=1) * h["gamma"]
    log_u = torch.logsumexp(log_pt, dim=1, keepdim=True)
    kl = _kl_rows(log_pt - log_u, F.log_softmax(zs, dim=1))
    return h["beta"] * (log_u.squeeze(1).exp() * kl).mean()


class _Reversal(torch.autograd.Function):
    """Identity forward; the gradient times -weight backward (Ganin & Lempitsky's reversal layer)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = weight
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.weight * grad, None


def reversal_weight(epoch: int, loops: float, reversal: float) -> float:
    """CTKD's curriculum: the reversal weight of `epoch` (0-based) rises from 0 to `reversal` as
    reversal * (1 - cos(pi * e / loops)) / 2, e = min(epoch + 1, loops) (epochs counted from 1, as
    CTKD's code does; loops 0: the full weight at once)."""
    if loops <= 0:
        return reversal
    e = min(epoch + 1, loops)
    return reversal * (1.0 - math.cos(math.pi * e / loops)) / 2.0


class CurriculumTemperature(nn.Module):
    """Li et al., AAAI 2023 (CTKD), its global temperature: tau = t_start + t_range * sigmoid(theta),
    theta one learnt scalar (starting at 1, as CTKD's code does), trained by the student's optimiser
    through a gradient reversal of weight reversal_weight(epoch): the temperature ascends the KD loss
    the student descends. The term is Hinton's KD at that temperature, times tau^2 (tau --tau is not read)."""

    def __init__(self, hyper: Mapping[str, float]) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.ones(()))
        self.t_start, self.t_range = hyper["t_start"], hyper["t_range"]

    def temperature(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        return self.t_start + self.t_range * torch.sigmoid(self.theta if theta is None else theta)

    def forward(self, zs, zt, labels, tau, h: Mapping[str, float], epoch: int) -> torch.Tensor:
        t = self.temperature(_Reversal.apply(self.theta, reversal_weight(epoch, h["loops"], h["reversal"])))
        t = t.to(zs.dtype)
        kl = _kl_rows(F.log_softmax(zt / t, dim=1), F.log_softmax(zs / t, dim=1))
        return (t * t) * kl.mean()

    def readings(self) -> dict[str, float]:
        """What the run's metrics record of it each epoch: the learnt temperature."""
        return {"temperature": float(self.temperature().detach())}


def _pair_halves(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    half = z.shape[0] // 2
    return z[:half], z[half:]


def _gram_gap(ps: torch.Tensor, pt: torch.Tensor, scale: int) -> torch.Tensor:
    """||pt pt^T - ps ps^T||_F^2 / scale (rows of ps, pt are the items compared)."""
    return (pt @ pt.T - ps @ ps.T).pow(2).sum() / scale


def mlkd_temperatures(tau: float, spread: float) -> list[float]:
    """MLKD's temperatures: tau - spread, ..., tau + spread in steps of 1 (the paper's 2..6 at tau 4)."""
    return [tau + d for d in range(-int(spread), int(spread) + 1)]


def _mlkd(zs: torch.Tensor, zt: torch.Tensor, labels: torch.Tensor, tau: float, h: Mapping[str, float], epoch: int):
    """Jin et al., CVPR 2023 (multi-level logit distillation), over 2B rows: the weak view's B then
    the strong view's B. At every temperature T of mlkd_temperatures(tau, spread):
    instance: T^2 * mean KL(p_T || p_S) on each view (both views);
    batch: ||G_T - G_S||_F^2 / B on the weak view, G = P P^T (B x B) of the softmaxes P at T;
    class: ||M_T - M_S||_F^2 / C on the weak view, M = P^T P (C x C).
    The loss is the sum over temperatures of instance + batch + class, each times its weight.
    With logit standardisation the instance terms read Z-scored logits, the batch and class terms
    the raw ones (as the logit-standardisation paper's MLKD code does)."""
    (ws, _), (wt, _) = _pair_halves(zs), _pair_halves(zt)
    zs_i, zt_i = (standardize(zs), standardize(zt)) if h.get(STANDARDIZE) else (zs, zt)
    (ws_i, ss_i), (wt_i, st_i) = _pair_halves(zs_i), _pair_halves(zt_i)
    b, c = ws.shape
    total = zs.new_zeros(())
    for t in mlkd_temperatures(tau, h["spread"]):
        pws, pwt = F.softmax(ws / t, dim=1), F.softmax(wt / t, dim=1)
        instance = sum(
            _kl_rows(F.log_softmax(zt_ / t, dim=1), F.log_softmax(zs_ / t, dim=1)).mean()
            for zs_, zt_ in ((ws_i, wt_i), (ss_i, st_i))
        )
        total = total + h["instance"] * (t * t) * instance
        total = total + h["batch"] * _gram_gap(pws, pwt, b) + h["class"] * _gram_gap(pws.T, pwt.T, c)
    return total


_NONNEG = (0.0, math.inf, ">= 0")
_POSITIVE = (1e-12, math.inf, "> 0")

LOSSES: dict[str, LossSpec] = {
    s.name: s
    for s in (
        LossSpec("kd", "Hinton et al. 2015", _kd, {}, {}, uses_tau=True, standardizable=True, full_logits=False),
        LossSpec(
            "dkd",
            "Zhao et al., CVPR 2022",
            _dkd,
            {"alpha": 1.0, "beta": 8.0, "warmup": 20.0},
            {"alpha": _NONNEG, "beta": _NONNEG, "warmup": _NONNEG},
            uses_tau=True,
            standardizable=True,
        ),
        LossSpec(
            "dist",
            "Huang et al., NeurIPS 2022",
            _dist,
            {"beta": 2.0, "gamma": 2.0},
            {"beta": _NONNEG, "gamma": _NONNEG},
            uses_tau=True,
            standardizable=False,
        ),
        LossSpec(
            "nkd",
            "Yang et al., ICCV 2023",
            _nkd,
            {"gamma": 1.5, "temp": 1.0},
            {"gamma": _NONNEG, "temp": _POSITIVE},
            uses_tau=False,
            standardizable=False,
        ),
        LossSpec(
            "wttm",
            "Zheng & Yang, ICLR 2024",
            _wttm,
            {"gamma": 0.25, "beta": 1.0},
            {"gamma": (1e-12, 1.0, "in (0, 1]"), "beta": _NONNEG},
            uses_tau=False,
            standardizable=False,
        ),
        LossSpec(
            "ctkd",
            "Li et al., AAAI 2023",
            _kd,  # not called: its module (the learnt temperature) computes the term
            {"t_start": 1.0, "t_range": 20.0, "loops": 10.0, "reversal": 1.0},
            {"t_start": _POSITIVE, "t_range": _NONNEG, "loops": _NONNEG, "reversal": _NONNEG},
            uses_tau=False,
            standardizable=False,
            module=CurriculumTemperature,
        ),
        LossSpec(
            "mlkd",
            "Jin et al., CVPR 2023",
            _mlkd,
            {"spread": 2.0, "instance": 1.0, "batch": 1.0, "class": 1.0},
            {"spread": _NONNEG, "instance": _NONNEG, "batch": _NONNEG, "class": _NONNEG},
            uses_tau=True,
            standardizable=True,
            pairs=True,
            standardizes_itself=True,
            tau_above="spread",
            lam_above=(
                0.5,
                "MLKD weighs its CE 1:1 against its term (--lam 0.5); at a fixed --lam above that its term, an "
                "order of magnitude larger than KD's, dominated and the students collapsed to chance on CIFAR-10 "
                "(benchmarks/RESULTS.md); a -sr variant or --lam 0.5 trained",
            ),
            whole={"spread": "the temperatures are tau - spread ... tau + spread in steps of 1"},
        ),
    )
}


def parse_options(name: str, text: str) -> dict[str, float]:
    """A loss's hyper-parameters from `KEY=VALUE,KEY=VALUE` (the others at their defaults), or
    a ValueError naming what is wrong: an unknown loss or key (listing the known ones), a value
    that is not a number, NaN or infinite, or out of its range."""
    if name not in LOSSES:
        raise ValueError(f"unknown --loss {name!r}; known: {', '.join(LOSSES)}")
    spec = LOSSES[name]
    values = dict(spec.hyper)
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in spec.hyper:
            known = ", ".join(spec.hyper) or "none"
            raise ValueError(f"--loss-options {item!r}: {name} takes {known} (as KEY=VALUE)")
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"--loss-options {key}={raw}: not a number") from None
        low, high, what = spec.ranges[key]
        if not (math.isfinite(value) and low <= value <= high):
            raise ValueError(f"--loss-options {key} of {name} must be a finite number {what}, got {raw}")
        if spec.whole and key in spec.whole and value != int(value):
            raise ValueError(f"--loss-options {key} of {name} must be a whole number ({spec.whole[key]}), got {raw}")
        values[key] = value
    return values


def options_for(name: str, text: str) -> str:
    """The items of `text` (KEY=VALUE,...) that loss `name` takes: a sweep over several losses
    gives each the options meant for it."""
    items = [part.strip() for part in text.split(",") if part.strip()]
    return ",".join(item for item in items if item.partition("=")[0].strip() in LOSSES[name].hyper)


class DistillTerm(nn.Module):
    """A loss with its hyper-parameters set: `term(z_S, z_T, labels, tau, epoch)` is its value.
    An nn.Module: a loss with learnt parts (ctkd) holds them, and `parameters()` hands them to the
    optimiser; `readings()` is what a run records of them each epoch (empty without)."""

    def __init__(self, spec: LossSpec, hyper: Mapping[str, float], standardize: bool = False) -> None:
        super().__init__()
        self.spec, self.hyper, self.standardize = spec, dict(hyper), standardize
        # the learnt parts (a module with the term's signature and readings()), or None
        self.learnt: Any = spec.module(self.hyper) if spec.module is not None else None

    def forward(
        self, zs: torch.Tensor, zt: torch.Tensor, labels: torch.Tensor, tau: float, epoch: int = 0
    ) -> torch.Tensor:
        hyper = self.hyper
        if self.standardize and self.spec.standardizes_itself:
            hyper = {**hyper, STANDARDIZE: 1.0}
        elif self.standardize:
            zs, zt = standardize(zs), standardize(zt)
        term = self.learnt if self.learnt is not None else self.spec.term
        return term(zs, zt, labels, tau, hyper, epoch)

    def readings(self) -> dict[str, float]:
        return self.learnt.readings() if self.learnt is not None else {}

    def lam_caution(self, lam: float) -> str | None:
        """A warning for this loss at a fixed lambda `lam` (None when there is none)."""
        above = self.spec.lam_above
        if above is None or lam <= above[0]:
            return None
        return f"--loss {self.spec.name} at --lam {lam:g}: {above[1]}"

    def tau_problem(self, tau: float) -> str | None:
        """Why this loss cannot run at temperature `tau` (None when it can)."""
        key = self.spec.tau_above
        if key is not None and not tau > self.hyper[key]:
            return f"--loss {self.spec.name} needs --tau > its {key} ({self.hyper[key]:g}), got --tau {tau:g}"
        return None


def distill_term(name: str = "kd", options: str = "", logit_standardize: bool = False) -> DistillTerm:
    """The loss `name` with `options` (KEY=VALUE,...) over its defaults, standardised or not; a
    ValueError names what is wrong (see parse_options; a loss without standardisation)."""
    hyper = parse_options(name, options)
    if logit_standardize and not LOSSES[name].standardizable:
        known = ", ".join(n for n, s in LOSSES.items() if s.standardizable)
        raise ValueError(f"--logit-standardize is not defined for --loss {name}; it is for {known}")
    return DistillTerm(LOSSES[name], hyper, logit_standardize)
