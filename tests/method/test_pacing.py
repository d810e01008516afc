"""Pacing functions against hand values, and paced epochs drawing only from the allowed prefix."""

import math

import numpy as np
import pytest

from kdstore.method.orderings import EpochPlan, Scores
from kdstore.method.pacing import (
    PACINGS,
    PacingParams,
    fixed_exp_step_length,
    fractions,
    paced_sequence,
    prefix_lengths,
)

T = 100
P = PacingParams(a=0.5, b=0.2)  # all data from step 50 on, 20% at the start


def g(name, t, params=P):
    return fractions(name, np.asarray(t), T, params)


def test_hand_values():
    # x = t / (a T) = t / 50
    np.testing.assert_allclose(g("linear", [0, 25, 50, 99]), [0.2, 0.2 + 0.8 * 0.5, 1.0, 1.0])
    np.testing.assert_allclose(g("quad", [25]), [0.2 + 0.8 * 0.25])
    np.testing.assert_allclose(g("root", [25]), [0.2 + 0.8 * math.sqrt(0.5)])
    np.testing.assert_allclose(g("step", [0, 49, 50, 99]), [0.2, 0.2, 1.0, 1.0])
    np.testing.assert_allclose(g("exp", [25]), [0.2 + 0.8 * (math.exp(5) - 1) / (math.exp(10) - 1)])
    np.testing.assert_allclose(g("log", [25]), [0.2 + 0.8 * (1 + 0.1 * math.log(0.5 + math.exp(-10)))])
    # Hacohen & Weinshall: 0.2 * 2^floor(t / L); from 0.2, 3 doublings reach 1, so L = floor(50 / 3) = 16
    assert fixed_exp_step_length(T, P) == 16
    np.testing.assert_allclose(g("fixed-exp", [0, 15, 16, 32, 48, 99]), [0.2, 0.2, 0.4, 0.8, 1.0, 1.0])
    explicit = PacingParams(a=0.5, b=0.1, growth=3.0, step_length=10)
    np.testing.assert_allclose(g("fixed-exp", [0, 10, 20, 30], explicit), [0.1, 0.3, 0.9, 1.0])
    assert g("none", [0, 50]) is None


@pytest.mark.parametrize("name", [p for p in PACINGS if p != "none"])
@pytest.mark.parametrize("params", [P, PacingParams(a=0.8, b=0.1), PacingParams(a=1.0, b=0.05, growth=1.5)])
def test_every_pacing_starts_at_b_reaches_1_at_aT_and_never_shrinks(name, params):
    steps = np.arange(T)
    values = g(name, steps, params)
    assert values[0] == pytest.approx(params.b)
    assert g(name, [math.ceil(params.a * T)], params)[0] == pytest.approx(1.0)
    assert np.all(np.diff(values) >= -1e-12) and values.min() >= params.b - 1e-12 and values.max() <= 1.0


def test_paced_batches_come_only_from_the_allowed_prefix():
    rng = np.random.default_rng(0)
    order = rng.permutation(1000)
    frac = np.array([0.1, 0.1, 0.35, 1.0, 0.01])
    seq = paced_sequence(order, frac, batch_size=64, length=5 * 64 - 10, rng=np.random.default_rng(1))
    assert len(seq) == 310
    limits = prefix_lengths(frac, 1000, 64)
    assert limits.tolist() == [100, 100, 350, 1000, 64]  # ceil(g n), never below one batch
    rank = np.argsort(order)  # position -> rank in the order
    for k, limit in enumerate(limits):
        batch = seq[k * 64 : (k + 1) * 64]
        assert len(set(batch.tolist())) == len(batch)  # no repeats within a batch
        assert rank[batch].max() < limit


def test_paced_schedule_grows_the_curriculum_prefix_and_is_seeded():
    n, batch, epochs = 200, 20, 3
    labels = np.arange(n) % 4
    curriculum = np.random.default_rng(5).permutation(n)
    scores = Scores(np.ones(n, dtype=np.float32), curriculum)

    def make(ordering, seed=0):
        return EpochPlan(
            ordering=ordering,
            pacing="linear",
            params=PacingParams(a=0.5, b=0.1),
            labels=labels,
            batch_size=batch,
            length=n,
            epochs=epochs,
            seed=seed,
            scores=scores,
        )

    s = make("curriculum")
    assert s.total_steps == 30 and s.fractions(0)[0] == pytest.approx(0.1)
    first = s.order(0)
    assert np.isin(first[:batch], curriculum[:20]).all()  # g(0) n = 20 easiest
    assert make("curriculum").order(0).tolist() == first.tolist()  # reproducible
    assert make("curriculum", seed=1).order(0).tolist() != first.tolist()
    assert s.order(2).tolist() != first.tolist()  # a new draw every epoch
    hard = make("inverse").order(0)
    assert np.isin(hard[:batch], curriculum[-20:]).all()  # the inverse curriculum starts from the hardest
