"""Each distillation loss (kdstore.method.distill_losses) against a second implementation written
here from the paper's equations: plain loops over samples and classes in float64, on tiny cases
(three classes, a one-hot and a very confident teacher, ties, tau != 1, logit standardisation).
Gradients by torch.autograd.gradcheck. Pure maths: the fast tier."""

from __future__ import annotations

import math

import pytest
import torch

from kdstore.errors import KdstoreError
from kdstore.method.distill_losses import LOSSES, distill_term, parse_options

# ---- the second implementation: lists of floats, loops, the papers' equations ---------------------


def softmax(v: list[float], t: float = 1.0) -> list[float]:
    m = max(x / t for x in v)
    e = [math.exp(x / t - m) for x in v]
    return [x / sum(e) for x in e]


def kl(p: list[float], q: list[float]) -> float:
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)


def drop(v: list[float], y: int) -> list[float]:
    return [x for j, x in enumerate(v) if j != y]


def zscore(v: list[float]) -> list[float]:
    mean = sum(v) / len(v)
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1))
    return [(x - mean) / (std + 1e-7) for x in v]


def ref_kd(s, t, y, tau, h, epoch):
    return sum(tau * tau * kl(softmax(ti, tau), softmax(si, tau)) for si, ti in zip(s, t)) / len(s)


def ref_dkd(s, t, y, tau, h, epoch):
    total = 0.0
    for si, ti, yi in zip(s, t, y):
        ps, pt = softmax(si, tau), softmax(ti, tau)
        tckd = kl([pt[yi], 1 - pt[yi]], [ps[yi], 1 - ps[yi]])
        nckd = kl(softmax(drop(ti, yi), tau), softmax(drop(si, yi), tau))
        total += tau * tau * (h["alpha"] * tckd + h["beta"] * nckd)
    return min((epoch + 1) / h["warmup"], 1.0) * total / len(s)


def pearson(a: list[float], b: list[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (z - mb) for x, z in zip(a, b))
    na, nb = math.sqrt(sum((x - ma) ** 2 for x in a)), math.sqrt(sum((z - mb) ** 2 for z in b))
    return cov / (na * nb + 1e-8)


def ref_dist(s, t, y, tau, h, epoch):
    ys, yt = [softmax(v, tau) for v in s], [softmax(v, tau) for v in t]
    inter = 1 - sum(pearson(a, b) for a, b in zip(ys, yt)) / len(ys)
    columns = range(len(ys[0]))
    intra = 1 - sum(pearson([r[j] for r in ys], [r[j] for r in yt]) for j in columns) / len(columns)
    return tau * tau * (h["beta"] * inter + h["gamma"] * intra)


def ref_nkd(s, t, y, tau, h, epoch):
    total, temp = 0.0, h["temp"]
    for si, ti, yi in zip(s, t, y):
        target = -softmax(ti)[yi] * math.log(softmax(si)[yi])
        ns, nt = softmax(drop(si, yi), temp), softmax(drop(ti, yi), temp)
        total += target - h["gamma"] * temp * temp * sum(a * math.log(b) for a, b in zip(nt, ns))
    return total / len(s)


def ref_wttm(s, t, y, tau, h, epoch):
    total = 0.0
    for si, ti in zip(s, t):
        powered = [p ** h["gamma"] for p in softmax(ti)]
        u = sum(powered)
        total += u * kl([p / u for p in powered], softmax(si))
    return h["beta"] * total / len(s)


def ref_ctkd(s, t, y, tau, h, epoch):
    """KD at CTKD's temperature t_start + t_range * sigmoid(theta), theta at its start, 1."""
    return ref_kd(s, t, y, h["t_start"] + h["t_range"] / (1 + math.exp(-1.0)), h, epoch)


def gram_gap(ps, pt, rows: bool) -> float:
    """sum over pairs (a, b) of (<pt_a, pt_b> - <ps_a, ps_b>)^2, a and b rows (or columns)."""
    if not rows:
        ps, pt = [list(c) for c in zip(*ps)], [list(c) for c in zip(*pt)]
    total = 0.0
    for a in range(len(ps)):
        for b in range(len(ps)):
            dt = sum(x * z for x, z in zip(pt[a], pt[b]))
            ds = sum(x * z for x, z in zip(ps[a], ps[b]))
            total += (dt - ds) ** 2
    return total


def ref_mlkd(s, t, y, tau, h, epoch):
    """The first half of the rows is the weak view, the second the strong one."""
    b, c = len(s) // 2, len(s[0])
    std = zscore if h.get("standardize") else (lambda v: v)
    si, ti = [std(v) for v in s], [std(v) for v in t]
    total = 0.0
    for d in range(-int(h["spread"]), int(h["spread"]) + 1):
        temp = tau + d
        instance = ref_kd(si[:b], ti[:b], y, temp, h, epoch) + ref_kd(si[b:], ti[b:], y, temp, h, epoch)
        ps, pt = [softmax(v, temp) for v in s[:b]], [softmax(v, temp) for v in t[:b]]
        total += h["instance"] * instance
        total += h["batch"] * gram_gap(ps, pt, rows=True) / b + h["class"] * gram_gap(ps, pt, rows=False) / c
    return total


REFERENCES = {
    "kd": ref_kd,
    "dkd": ref_dkd,
    "dist": ref_dist,
    "nkd": ref_nkd,
    "wttm": ref_wttm,
    "ctkd": ref_ctkd,
    "mlkd": ref_mlkd,
}

STUDENT = [[0.5, -1.0, 2.0], [1.0, 1.0, 1.0], [3.0, 0.2, -0.7], [-2.0, 0.5, 0.4]]
TEACHERS = {
    "ordinary": [[1.0, 0.0, 2.5], [0.3, 1.2, -0.4], [2.0, 1.9, -1.0], [-1.0, 2.0, 0.0]],
    "very confident": [[0.0, 0.0, 30.0], [25.0, 0.0, 0.0], [0.0, 40.0, 0.0], [0.0, 0.0, 35.0]],
    "ties": [[1.0, 1.0, 1.0], [2.0, 2.0, 0.0], [0.5, 0.5, 0.5], [0.0, 3.0, 3.0]],
}
LABELS = [2, 0, 1, 1]


def _both(name: str, teacher: str, tau: float, options: str = "", standardize: bool = False, epoch: int = 3):
    if name == "mlkd" and tau <= 2 and not options:
        options = "spread=0"  # its temperatures tau - spread .. tau + spread must be > 0
    term = distill_term(name, options, standardize)
    s = torch.tensor(STUDENT, dtype=torch.float64)
    t = torch.tensor(TEACHERS[teacher], dtype=torch.float64)
    got = float(term(s, t, torch.tensor(LABELS), tau, epoch).detach())
    hyper = dict(term.hyper)
    if term.spec.standardizes_itself:  # mlkd Z-scores its instance terms only: the reference does it
        hyper["standardize"], standardize = standardize, False
    rs, rt = (
        (STUDENT, TEACHERS[teacher])
        if not standardize
        else ([zscore(v) for v in STUDENT], [zscore(v) for v in TEACHERS[teacher]])
    )
    want = REFERENCES[name](rs, rt, LABELS, tau, hyper, epoch)
    return got, want


@pytest.mark.parametrize("teacher", list(TEACHERS))
@pytest.mark.parametrize("tau", [1.0, 3.0])
@pytest.mark.parametrize("name", list(REFERENCES))
def test_each_loss_equals_its_equations(name, teacher, tau):
    got, want = _both(name, teacher, tau)
    assert got == pytest.approx(want, rel=1e-6, abs=1e-9), (got, want)


@pytest.mark.parametrize("name", ["kd", "dkd", "mlkd"])
def test_logit_standardisation_is_the_z_score_before_the_loss(name):
    got, want = _both(name, "ordinary", 2.0, standardize=True)
    assert got == pytest.approx(want, rel=1e-6, abs=1e-9)
    plain, _ = _both(name, "ordinary", 2.0)
    assert got != pytest.approx(plain)


def test_options_change_the_terms_as_the_equations_say():
    for name, options in (
        ("dkd", "alpha=0.5,beta=2,warmup=10"),
        ("dist", "beta=1,gamma=3"),
        ("nkd", "gamma=2,temp=2"),
        ("wttm", "gamma=0.5,beta=3"),
        ("ctkd", "t_start=2,t_range=5"),
        ("mlkd", "spread=1,instance=0.5,batch=2,class=3"),
    ):
        term = distill_term(name, options)
        s, t = torch.tensor(STUDENT, dtype=torch.float64), torch.tensor(TEACHERS["ordinary"], dtype=torch.float64)
        got = float(term(s, t, torch.tensor(LABELS), 2.0, 4).detach())
        assert got == pytest.approx(
            REFERENCES[name](STUDENT, TEACHERS["ordinary"], LABELS, 2.0, term.hyper, 4), rel=1e-6
        )


def test_by_hand_values():
    """Values worked out on paper: a student equal to its teacher owes nothing to KD or DKD (DIST's
    1e-8 in the Pearson denominators, as its paper's code has it, leaves a trace); DKD's warm-up
    is 1/20 of the loss in epoch 1; NKD on two classes is its target term alone."""
    z = torch.tensor(TEACHERS["ordinary"], dtype=torch.float64)
    y = torch.tensor(LABELS)
    for name in ("kd", "dkd"):
        assert float(distill_term(name)(z, z, y, 4.0, 30)) == pytest.approx(0.0, abs=1e-12)
    s = torch.tensor(STUDENT, dtype=torch.float64)
    dkd = distill_term("dkd")
    assert float(dkd(s, z, y, 4.0, 0)) == pytest.approx(float(dkd(s, z, y, 4.0, 19)) / 20, rel=1e-12)
    # two classes, teacher (log 3, 0): p_T = (3/4, 1/4); student uniform: -3/4 log(1/2), and one
    # non-target class, whose normalised probabilities are 1 on both sides: gamma * 1 * log 1 = 0
    nkd = distill_term("nkd")
    two_t = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
    two_s = torch.zeros(1, 2, dtype=torch.float64)
    assert float(nkd(two_s, two_t, torch.tensor([0]), 1.0)) == pytest.approx(0.75 * math.log(2.0), rel=1e-12)


@pytest.mark.parametrize(
    "name, standardize", [(n, False) for n in LOSSES] + [(n, True) for n, s in LOSSES.items() if s.standardizable]
)
def test_gradients(name, standardize):
    term = distill_term(name, "spread=1" if name == "mlkd" else "", standardize)  # mlkd: temperatures 1, 2, 3
    # no constant row: a Z-score divides by the row's std, 0 for a constant row
    s = torch.tensor([[0.5, -1.0, 2.0], [1.0, 1.3, 0.9], [3.0, 0.2, -0.7], [-2.0, 0.5, 0.4]], dtype=torch.float64)
    s.requires_grad_(True)
    t = torch.tensor(TEACHERS["ordinary"], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: term(x, t, torch.tensor(LABELS), 2.0, 5), (s,))


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("bogus", "", "unknown --loss 'bogus'; known: kd, dkd, dist, nkd, wttm"),
        ("dkd", "beta=-1", "beta of dkd must be a finite number >= 0, got -1"),
        ("dkd", "beta=nan", "must be a finite number"),
        ("nkd", "temp=0", "temp of nkd must be a finite number > 0"),
        ("wttm", "gamma=2", "gamma of wttm must be a finite number in (0, 1]"),
        ("dkd", "gama=1", "dkd takes alpha, beta, warmup"),
        ("kd", "beta=1", "kd takes none"),
        ("dist", "beta", "dist takes beta, gamma"),
        ("dist", "beta=x", "not a number"),
    ],
)
def test_bad_options_are_one_line(name, options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        parse_options(name, options)


def test_standardisation_of_a_loss_that_does_not_define_it_is_refused():
    with pytest.raises(ValueError, match="--logit-standardize is not defined for --loss nkd; it is for kd, dkd"):
        distill_term("nkd", logit_standardize=True)


def _batch(epoch: int, dtype: torch.dtype = torch.float32):
    """A Batch of the four samples above, the ordinary teacher's logits as its target."""
    from kdstore.loader.batch import Batch, Target

    return Batch(
        images=torch.zeros(4, 3, 2, 2),
        labels=torch.tensor(LABELS),
        ids=torch.arange(4).numpy(),
        positions=torch.arange(4).numpy(),
        lam=0.9,
        target=Target(kind="logits", logits=torch.tensor(TEACHERS["ordinary"], dtype=dtype)),
        epoch=epoch,
        index=0,
    )


def test_the_public_distill_loss_and_the_loader_options():
    import kdstore

    batch = _batch(epoch=2)
    s = torch.tensor(STUDENT)
    kd = kdstore.kd_loss(s, batch, tau=3.0)
    same = kdstore.distill_loss("kd", tau=3.0)(s, batch)
    assert torch.equal(kd.loss, same.loss) and torch.equal(kd.kd, same.kd)  # kd is kd_loss, bit for bit
    dkd = kdstore.distill_loss("dkd", tau=3.0, beta=4.0)(s, batch)
    want = ref_dkd(STUDENT, TEACHERS["ordinary"], LABELS, 3.0, {"alpha": 1.0, "beta": 4.0, "warmup": 20.0}, 2)
    assert float(dkd.kd) == pytest.approx(want, rel=1e-5)
    assert float(dkd.loss) == pytest.approx(0.1 * float(dkd.ce) + 0.9 * want, rel=1e-5)
    from kdstore.integrations.timm import OfflineDistillationTask

    task = OfflineDistillationTask(torch.nn.Identity(), temperature=3.0, loss="dkd", loss_options={"beta": 4.0})
    assert float(task(s, batch)["kd_loss"]) == pytest.approx(want, rel=1e-5)
    with pytest.raises(KdstoreError, match="dkd takes alpha, beta, warmup"):
        kdstore.distill_loss("dkd", gama=1.0)
    with pytest.raises(KdstoreError, match="unknown loss 'x'"):
        kdstore.distill_loss("x")
    for options, message in (
        (dict(loss="x"), "unknown --loss 'x'"),
        (dict(loss="dkd", loss_options="beta=-2"), "beta of dkd must be"),
        (dict(loss="dist", logit_standardize=True), "not defined for --loss dist"),
    ):
        with pytest.raises(KdstoreError, match=message):
            kdstore.LoaderConfig(**options).validate()


def test_ctkd_reversal_curriculum_by_hand():
    """CTKD's reversal weight rises as (1 - cos(pi * e / loops)) / 2, e the 1-based epoch, to
    its full weight at epoch `loops` and stays there."""
    from kdstore.method.distill_losses import reversal_weight

    assert reversal_weight(0, 10, 1.0) == pytest.approx((1 - math.cos(math.pi / 10)) / 2, rel=1e-12)  # 0.0245
    assert reversal_weight(4, 10, 1.0) == pytest.approx(0.5, rel=1e-12)  # epoch 5 of 10: cos(pi / 2) = 0
    assert reversal_weight(9, 10, 2.0) == pytest.approx(2.0, rel=1e-12)
    assert reversal_weight(50, 10, 1.0) == pytest.approx(1.0, rel=1e-12)
    assert reversal_weight(0, 0, 0.7) == 0.7  # no curriculum: the full weight at once


@pytest.mark.parametrize("epoch", [0, 4, 12])
def test_ctkd_temperature_ascends_the_kd_loss_through_the_reversal(epoch):
    """The temperature's gradient is -w(epoch) times the KD loss's derivative in theta (a finite
    difference of the reference at T(theta) = 1 + 20 sigmoid(theta)); the student's gradient is
    plain KD's at that temperature; `readings` give the temperature."""
    from kdstore.method.distill_losses import reversal_weight

    term = distill_term("ctkd").double()
    s = torch.tensor(STUDENT, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(TEACHERS["ordinary"], dtype=torch.float64)
    term(s, t, torch.tensor(LABELS), 4.0, epoch).backward()

    def kd_at(theta: float) -> float:
        return ref_kd(STUDENT, TEACHERS["ordinary"], LABELS, 1 + 20 / (1 + math.exp(-theta)), {}, 0)

    h = 1e-6
    slope = (kd_at(1 + h) - kd_at(1 - h)) / (2 * h)
    assert float(term.learnt.theta.grad) == pytest.approx(-reversal_weight(epoch, 10, 1.0) * slope, rel=1e-5)
    temperature = 1 + 20 / (1 + math.exp(-1.0))
    assert term.readings()["temperature"] == pytest.approx(temperature, rel=1e-12)
    plain = s.detach().clone().requires_grad_(True)
    distill_term("kd")(plain, t, torch.tensor(LABELS), temperature).backward()
    assert torch.allclose(s.grad, plain.grad, rtol=1e-9, atol=1e-12)


def test_ctkd_parameters_reach_the_optimiser_from_the_public_loss():
    import kdstore

    loss = kdstore.distill_loss("ctkd")
    params = list(loss.parameters())
    assert len(params) == 1 and params[0].item() == 1.0
    assert list(kdstore.distill_loss("dkd").parameters()) == []
    batch = _batch(epoch=20, dtype=torch.float64)
    s = torch.tensor(STUDENT, dtype=torch.float64)
    loss.double()
    before = float(loss(s, batch).kd)
    opt = torch.optim.SGD(params, lr=1000.0)  # the slope is ~1e-4: a step that moves theta visibly
    loss(s, batch).loss.backward()
    opt.step()
    assert params[0].item() != 1.0
    assert float(loss(s, batch).kd) > before  # the temperature ascends the KD term


def test_mlkd_by_hand():
    """A student equal to its teacher on both views owes MLKD nothing; with one sample per view
    and two classes, uniform student, teacher (log 3, 0) at spread 0 and tau 1: the instance term
    is KL((3/4, 1/4) || (1/2, 1/2)) per view, the batch term (<pt, pt> - <ps, ps>)^2 / 1 =
    (10/16 - 1/2)^2, the class term sum over (k, l) of (pt_k pt_l - 1/4)^2 / 2."""
    term = distill_term("mlkd")
    z = torch.tensor(TEACHERS["ordinary"], dtype=torch.float64)
    assert float(term(z, z, torch.tensor(LABELS), 4.0)) == pytest.approx(0.0, abs=1e-12)
    one = distill_term("mlkd", "spread=0")
    s = torch.zeros(2, 2, dtype=torch.float64)
    t = torch.tensor([[math.log(3.0), 0.0]] * 2, dtype=torch.float64)
    kl_one = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    batch = (10 / 16 - 0.5) ** 2
    cls = ((9 / 16 - 0.25) ** 2 + 2 * (3 / 16 - 0.25) ** 2 + (1 / 16 - 0.25) ** 2) / 2
    assert float(one(s, t, torch.tensor([0, 0]), 1.0)) == pytest.approx(2 * kl_one + batch + cls, rel=1e-12)


def test_mlkd_refuses_what_it_cannot_compute():
    import kdstore

    with pytest.raises(ValueError, match="spread of mlkd must be a whole number"):
        parse_options("mlkd", "spread=1.5")
    with pytest.raises(KdstoreError, match=r"--loss mlkd needs --tau > its spread \(2\), got --tau 2"):
        kdstore.LoaderConfig(loss="mlkd", tau=2.0).validate()
    with pytest.raises(KdstoreError, match=r"loss mlkd needs tau > its spread \(3\), got tau 3"):
        kdstore.distill_loss("mlkd", tau=3.0, spread=3)


def test_the_target_carries_the_temperature_and_kd_loss_overrides_it():
    """A batch's target carries its loader's --tau: kd_loss and distill_loss read it unless told
    another; a target without one is read at the default, 4."""
    import dataclasses

    import kdstore

    batch, s = _batch(epoch=2), torch.tensor(STUDENT)
    at = {tau: float(kdstore.kd_loss(s, batch, tau=tau).kd) for tau in (2.0, 4.0)}
    assert float(kdstore.kd_loss(s, batch).kd) == at[4.0]  # no tau anywhere: 4
    batch.target = dataclasses.replace(batch.target, tau=2.0)
    assert float(kdstore.kd_loss(s, batch).kd) == at[2.0] != at[4.0]
    assert float(kdstore.kd_loss(s, batch, tau=4.0).kd) == at[4.0]  # an explicit tau overrides
    assert float(kdstore.distill_loss("kd")(s, batch).kd) == at[2.0]
    assert float(kdstore.distill_loss("kd", tau=4.0)(s, batch).kd) == at[4.0]
    with pytest.raises(KdstoreError, match=r"loss mlkd needs tau > its spread \(2\), got tau 2"):
        kdstore.distill_loss("mlkd")(s, batch, pair_logits=s)
