"""The KD loss against hand computations (docs/method.md, "Losses")."""

import math

import pytest
import torch

from kdstore.method.losses import ce_per_sample, kd_per_sample, student_loss


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def test_kd_tau1_two_classes_by_hand():
    # teacher logits (ln 3, 0) -> p_T = (3/4, 1/4); student logits (0, 0) -> p_S = (1/2, 1/2)
    zs = torch.tensor([[0.0, 0.0]])
    zt = torch.tensor([[math.log(3.0), 0.0]])
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # 0.130812
    assert kd_per_sample(zs, zt, tau=1.0).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.130812, abs=1e-6)


def test_kd_temperature_scales_logits_and_multiplies_by_tau_squared():
    # tau = 2: p_T = softmax((ln 3)/2, 0) = (sqrt3, 1)/(1 + sqrt3); KL vs uniform, times 4
    zs = torch.tensor([[0.0, 0.0]])
    zt = torch.tensor([[math.log(3.0), 0.0]])
    r3 = math.sqrt(3.0)
    p_t = (r3 / (1 + r3), 1 / (1 + r3))
    expected = 4.0 * _kl(p_t, (0.5, 0.5))  # 0.145363
    assert kd_per_sample(zs, zt, tau=2.0).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.145363, abs=1e-6)


def test_kd_is_zero_when_student_matches_teacher_and_per_sample():
    z = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]])
    other = torch.tensor([[3.0, 2.0, 1.0], [0.5, -1.0, 2.0]])
    per = kd_per_sample(other, z, tau=4.0)
    assert per.shape == (2,)
    assert per[1].item() == pytest.approx(0.0, abs=1e-7)
    assert per[0].item() > 0


def test_student_loss_mixes_ce_and_kd_with_lambda():
    zs = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    zt = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    y = torch.tensor([0, 1])
    ce = (math.log(2.0) + (math.log(1 + math.e) - 0.0)) / 2  # -log softmax: ln2 and ln(1+e) - 0
    kd0 = _kl((0.75, 0.25), (0.5, 0.5))
    e = math.e
    kd1 = _kl((0.5, 0.5), (e / (1 + e), 1 / (1 + e)))
    kd = (kd0 + kd1) / 2
    out = student_loss(zs, y, zt, lam=0.3, tau=1.0)
    assert out["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert out["kd"].item() == pytest.approx(kd, rel=1e-6)
    assert out["loss"].item() == pytest.approx(0.7 * ce + 0.3 * kd, rel=1e-6)
    assert ce_per_sample(zs, y).shape == (2,)


def test_unguided_needs_no_teacher_and_bad_values_fail():
    zs = torch.tensor([[0.0, 1.0]])
    y = torch.tensor([1])
    out = student_loss(zs, y, None, lam=0.0, tau=4.0)
    assert out["kd"].item() == 0.0 and out["loss"].item() == pytest.approx(math.log(1 + math.e**-1), rel=1e-6)
    with pytest.raises(ValueError, match="lambda"):
        student_loss(zs, y, zs, lam=1.5, tau=4.0)
    with pytest.raises(ValueError, match="teacher logits"):
        student_loss(zs, y, None, lam=0.5, tau=4.0)
    with pytest.raises(ValueError, match="tau"):
        kd_per_sample(zs, zs, tau=0.0)
