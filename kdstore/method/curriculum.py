"""Teacher confidence and the class-stratified curriculum (docs/method.md, "Confidence and the curriculum").

Pure numpy functions over per-sample arrays; every order they return is a permutation of the
positions 0..N-1 of the arrays passed in (the caller maps positions to sample ids)."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax at tau = 1, computed in float64. (N, C) -> (N, C)."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def confidence_and_correct(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C_i = max_k softmax(z_i)_k (float32) and correct_i = argmax_k z_i == y_i (bool)."""
    p = softmax(logits)
    return p.max(axis=1).astype(np.float32), p.argmax(axis=1) == labels


def _within_class_order(confidence: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Easy-to-hard order of one class: correct by C descending, then wrong by C ascending.

    Ties keep the input order (stable sort), so the result is deterministic.
    """
    idx = np.arange(len(confidence))
    right = idx[correct]
    wrong = idx[~correct]
    right = right[np.argsort(-confidence[right], kind="stable")]
    wrong = wrong[np.argsort(confidence[wrong], kind="stable")]
    return np.concatenate([right, wrong])


def curriculum(confidence: np.ndarray, correct: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Class-stratified easy-to-hard order (positions into the arrays).

    Within each class the order is `_within_class_order`; every sample then gets
    q_i = (rank in class + 0.5) / class size, and the global order sorts by q, ties by class id.
    """
    n = len(labels)
    if not (len(confidence) == len(correct) == n):
        raise ValueError("confidence, correct and labels must have the same length")
    q = np.empty(n, dtype=np.float64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        ranked = members[_within_class_order(confidence[members], correct[members])]
        q[ranked] = (np.arange(len(ranked)) + 0.5) / len(ranked)
    # lexsort: last key is primary -> sort by q, then class id, then position (deterministic).
    return np.lexsort((np.arange(n), labels, q))


def inverse(order: np.ndarray) -> np.ndarray:
    """The inverse curriculum (the paper's CL'): the same order, hard to easy."""
    return order[::-1].copy()


def stratified_random(labels: np.ndarray, seed: int) -> np.ndarray:
    """A fixed random order with the curriculum's class stratification (the `random-cl` control):
    the curriculum rules applied to seeded random confidences."""
    rng = np.random.default_rng([seed, 0x5EED])
    return curriculum(rng.random(len(labels)), np.ones(len(labels), dtype=bool), labels)
