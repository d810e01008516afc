"""Per-sample distillation losses (docs/method.md, "Losses").

Every function returns one value per sample, shape (B,); the caller weights and reduces them once."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

DEFAULT_TAU = 4.0  # the KD temperature unless told (--tau; a batch's target carries its loader's)


def ce_per_sample(student_logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """CE(y_true, softmax(z_S)) per sample. (B, C), (B,) -> (B,)."""
    return F.cross_entropy(student_logits, labels, reduction="none", label_smoothing=label_smoothing)


def kd_per_sample(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """tau^2 * KL(softmax(z_T/tau) || softmax(z_S/tau)) per sample. (B, C), (B, C) -> (B,)."""
    if tau <= 0:
        raise ValueError(f"temperature tau must be > 0, got {tau}")
    dtype = torch.promote_types(student_logits.dtype, torch.float32)  # float32, or float64 when given
    log_p_s = F.log_softmax(student_logits.to(dtype) / tau, dim=1)
    log_p_t = F.log_softmax(teacher_logits.to(dtype) / tau, dim=1)
    # KL(p_T || p_S) = sum_k p_T,k (log p_T,k - log p_S,k); log_target avoids 0*log 0 issues.
    kl = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(dim=1)
    return (tau * tau) * kl


def ce_mean(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    label_smoothing: float = 0.0,
    label_mix: tuple[torch.Tensor, torch.Tensor] | None = None,
    views: int = 1,
) -> torch.Tensor:
    """The CE term, a batch mean. `label_mix` = (partner labels, weights w) for mixed images: a
    sample's CE is w * CE(y) + (1 - w) * CE(y_partner). `views`: the rows are that many views of
    the same B samples, one after another (mlkd: 2), and the term is the sum of their means."""
    ce = ce_per_sample(student_logits, labels, label_smoothing)
    if label_mix is not None:
        partner_labels, w = label_mix
        ce = w * ce + (1.0 - w) * ce_per_sample(student_logits, partner_labels, label_smoothing)
    return ce.mean() if views == 1 else ce.view(views, -1).mean(dim=1).sum()


def weigh(ce: torch.Tensor, kd: torch.Tensor, lam: float | torch.Tensor) -> dict[str, torch.Tensor]:
    """(1 - lam) * ce + lam * kd, with both terms (detached): every loss's composition. `lam` may
    also be a device tensor (1 - lambda, lambda), each rounded from the host's double, as a CUDA
    graph reads it (train/graph_step.py): the same products, bit for bit, with nothing baked in."""
    check_lam(lam)
    if isinstance(lam, torch.Tensor):
        return {"loss": lam[0] * ce + lam[1] * kd, "ce": ce.detach(), "kd": kd.detach()}
    return {"loss": (1.0 - lam) * ce + lam * kd, "ce": ce.detach(), "kd": kd.detach()}


def check_lam(lam: float | torch.Tensor) -> None:
    """lambda must be in [0, 1]; a device tensor (a CUDA graph's input, checked as it is filled) is not read here."""
    if isinstance(lam, torch.Tensor):
        return
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must be in [0, 1], got {lam}")


def student_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    lam: float,
    tau: float,
    label_smoothing: float = 0.0,
    label_mix: tuple[torch.Tensor, torch.Tensor] | None = None,
    term: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """L_student = (1 - lam) * L_ce + lam * L_kd, batch means; returns the named terms.

    With lam == 0 (unguided, or an SR batch at the start of an epoch) no teacher logits are
    needed and ``kd`` is reported as 0. `label_mix`: see ce_mean. `term`(z_S, z_T) gives another
    distillation loss's batch value in place of Hinton's KD (distill_losses.py).
    """
    check_lam(lam)
    ce = ce_mean(student_logits, labels, label_smoothing, label_mix)
    if teacher_logits is None:
        if lam != 0.0:
            raise ValueError("a KD weight lambda > 0 needs teacher logits")
        kd = torch.zeros((), device=student_logits.device)
    else:
        kd = term(student_logits, teacher_logits) if term else kd_per_sample(student_logits, teacher_logits, tau).mean()
    return weigh(ce, kd, lam)
