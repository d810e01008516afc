"""Confidence, the class-stratified curriculum and SR lambda, on hand-made examples."""

import math

import numpy as np
import pytest

from kdstore.method.curriculum import confidence_and_correct, curriculum, inverse
from kdstore.method.kd_weight import POLICIES, batch_means, sr_lambda
from kdstore.method.orderings import EpochPlan, Scores
from kdstore.method.pacing import PacingParams


def test_confidence_is_top1_softmax_and_correct_is_argmax():
    logits = np.array([[math.log(3.0), 0.0], [0.0, 0.0], [0.0, 2.0]])
    conf, correct = confidence_and_correct(logits, np.array([0, 1, 0]))
    np.testing.assert_allclose(conf, [0.75, 0.5, 1 / (1 + math.exp(-2))], rtol=1e-6)
    # row 1 ties (argmax 0) against label 1; row 2 predicts 1 against label 0
    assert correct.tolist() == [True, False, False]


def test_curriculum_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 1])
    conf = np.array([0.9, 0.6, 0.8, 0.7, 0.95, 0.5])
    correct = np.array([True, True, False, True, False, True])
    # class 0: right 0 (.9), 1 (.6) by C desc, then wrong 2 -> q = 1/6, 3/6, 5/6
    # class 1: right 3 (.7), 5 (.5), then wrong 4 (.95) -> q = 1/6, 3/6, 5/6
    # global: by q, ties by class id
    order = curriculum(conf, correct, labels)
    assert order.tolist() == [0, 3, 1, 5, 2, 4]
    assert inverse(order).tolist() == [4, 2, 5, 1, 3, 0]


def test_misclassified_go_last_with_confident_mistakes_hardest():
    labels = np.zeros(5, dtype=int)
    conf = np.array([0.3, 0.9, 0.99, 0.4, 0.6])
    correct = np.array([True, True, False, False, True])
    # right by C desc: 1 (.9), 4 (.6), 0 (.3); wrong by C asc: 3 (.4), 2 (.99)
    assert curriculum(conf, correct, labels).tolist() == [1, 4, 0, 3, 2]


def test_stratification_keeps_class_proportions_with_unequal_sizes():
    labels = np.array([0, 0, 1, 1, 1, 1])
    conf = np.array([0.9, 0.8, 0.9, 0.8, 0.7, 0.6])
    correct = np.ones(6, dtype=bool)
    # class 0 q: .25 (0), .75 (1); class 1 q: .125 (2), .375 (3), .625 (4), .875 (5)
    assert curriculum(conf, correct, labels).tolist() == [2, 0, 3, 4, 1, 5]


def test_sr_lambda_by_hand():
    conf_in_order = np.array([0.9, 0.9, 0.7, 0.7, 0.4, 0.4])
    lam = POLICIES["sr"](conf_in_order, 2, 0.9, 0.95)
    # batch means .9, .7, .4; s = (1-.9)/.95; lambda_b = (1 - mean)/.95 - s
    np.testing.assert_allclose(lam, [0.0, 0.2 / 0.95, 0.5 / 0.95], rtol=1e-9)


def test_sr_lambda_clips_and_handles_short_last_batch():
    # a batch more confident than the first gets a negative raw lambda -> 0; a huge one -> 1
    np.testing.assert_allclose(sr_lambda(np.array([0.5, 0.9, 0.0]), 0.5, 0.5), [0.0, 0.0, 1.0])
    np.testing.assert_allclose(batch_means(np.array([1.0, 3.0, 5.0]), 2), [2.0, 5.0])
    assert POLICIES["fixed"](np.ones(5), 2, 0.9, 1.0).tolist() == [0.9, 0.9, 0.9]
    assert POLICIES["zero"](np.ones(5), 2, 0.9, 1.0).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        batch_means(np.ones(3), 0)


def test_epoch_orders():
    labels = np.array([0, 0, 1, 1, 0, 1, 0, 1, 0, 1])
    scores = Scores(np.linspace(1, 0.1, 10), np.array([3, 1, 2, 0, 9, 8, 7, 6, 5, 4]))

    def make(ordering, seed=3):
        return EpochPlan(
            ordering=ordering,
            pacing="none",
            params=PacingParams(),
            labels=labels,
            batch_size=4,
            length=10,
            epochs=2,
            seed=seed,
            scores=scores,
        )

    shuffled = make("shuffle")
    a, b = shuffled.order(0).copy(), shuffled.order(1)
    assert sorted(a.tolist()) == list(range(10)) and a.tolist() != b.tolist()
    assert shuffled.order(0).tolist() == a.tolist()  # seeded: the same epoch gives the same order
    cl = make("curriculum")
    assert cl.order(0).tolist() == cl.order(1).tolist() == scores.curriculum_positions.tolist()
    assert make("inverse").order(1).tolist() == scores.curriculum_positions[::-1].tolist()
    rnd = make("random")
    assert rnd.order(0).tolist() == rnd.order(1).tolist() == make("random").order(0).tolist()  # fixed by seed
    assert rnd.order(0).tolist() != make("random", seed=4).order(0).tolist()
    assert labels[rnd.order(0)].tolist() == [0, 1] * 5  # class-stratified, like the curriculum
    assert make("curriculum").fractions(0) is None
