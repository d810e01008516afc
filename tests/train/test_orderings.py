"""Orderings through `train`: paced batches from the allowed prefix, student-scored curricula,
the random-order control, merged stores, sweep arms; and the loop never names a variant."""

import ast
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from kdstore.errors import KdstoreError
from kdstore.loader.prepare import VIEW_MODES
from kdstore.method.kd_weight import POLICIES
from kdstore.method.orderings import ORDERINGS, SCORERS
from kdstore.method.pacing import PACINGS, PacingParams, fractions, prefix_lengths
from kdstore.method.variants import ALIASES, VARIANTS
from kdstore.report.sweep import arms
from kdstore.store import merge
from kdstore.store.format import Store, build_split
from kdstore.train import loop as train
from kdstore.train.config import TrainConfig

BATCH = 4  # small_store: 30 training images -> 8 batches an epoch


@pytest.mark.slow
def test_paced_sr_run_draws_each_batch_from_the_prefix_with_sr_lambda(ordering_store, tmp_path):
    seen = []
    cfg = TrainConfig(
        out=str(tmp_path / "run"),
        store=str(ordering_store),
        variant="kd-cl-sr",
        pacing="linear",
        pacing_a=0.5,
        pacing_b=0.25,
        epochs=2,
        batch_size=BATCH,
        workers=1,
        progress=False,
    )
    train.run(cfg, hook=lambda e, b, ids, lam: seen.append((e, b, ids, lam)))
    t = Store.open(ordering_store).train
    rank = np.empty(len(t), dtype=np.int64)
    rank[t.positions(t.curriculum)] = np.arange(len(t))  # position -> place in the curriculum
    steps = int(np.ceil(len(t) / BATCH))
    g = fractions("linear", np.arange(2 * steps), 2 * steps, PacingParams(a=0.5, b=0.25))
    limits = prefix_lengths(g, len(t), BATCH)
    assert limits[0] == int(np.ceil(0.25 * len(t))) and limits[-1] == len(t)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    np.testing.assert_allclose(np.concatenate([r["pace"] for r in rows]), g, atol=1e-5)  # g(t) is logged
    for epoch in (0, 1):
        batches = [s for s in seen if s[0] == epoch]
        for e, b, ids, lam in batches:
            assert rank[t.positions(ids)].max() < limits[epoch * steps + b]
        pos = t.positions(np.concatenate([s[2] for s in batches]))
        expected = POLICIES["sr"](t.confidence[pos], BATCH, 0.9, float(t.confidence.max()))
        np.testing.assert_allclose([s[3] for s in batches], expected, rtol=1e-12)
    early = t.positions(seen[0][2])
    assert len(np.unique(early)) == BATCH and rank[early].max() < len(t) // 4 + 1


@pytest.mark.slow
def test_student_scorer_rebuilds_the_curriculum_reproducibly(ordering_store, tmp_path):
    cfg = TrainConfig(
        out="",
        store=str(ordering_store),
        variant="kd-cl",
        scorer="student",
        rescore_every=1,
        epochs=2,
        batch_size=8,
        workers=1,
        progress=False,
    )
    firsts = []
    for name in ("a", "b"):
        seen = []
        train.run(replace(cfg, out=str(tmp_path / name)), hook=lambda e, b, ids, lam: seen.append((e, ids)))
        firsts.append(np.concatenate([ids for e, ids in seen if e == 1]))
    t = Store.open(ordering_store).train
    a, b = (np.load(tmp_path / n / "orders" / "epoch-002.npz") for n in ("a", "b"))
    np.testing.assert_array_equal(a["curriculum"], b["curriculum"])  # same seed, same student, same order
    np.testing.assert_array_equal(firsts[0], a["curriculum"])  # epoch 2 visited the student's curriculum
    assert not np.array_equal(a["curriculum"], t.curriculum)  # and it is not the teacher's
    assert sorted(a["curriculum"].tolist()) == sorted(t.sample_id.tolist())
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["scores"] for r in rows] == ["teacher", "student@2"]


def test_orderings_that_cannot_take_an_option_are_refused(tmp_path):
    base = TrainConfig(out=str(tmp_path), store=str(tmp_path / "store"))
    with pytest.raises(KdstoreError, match="needs a variant with a fixed order"):
        replace(base, variant="kd", pacing="linear").validate()
    with pytest.raises(KdstoreError, match="needs a curriculum variant"):
        replace(base, variant="random-cl", scorer="student").validate()
    with pytest.raises(KdstoreError, match="pacing-b"):
        replace(base, variant="kd-cl", pacing="linear", pacing_b=0.0).validate()
    names = [c.arm for c in arms(base, ["kd", "kd-cl", "random-cl"], ["none", "linear"], ["teacher", "student"])]
    assert names == [
        "kd",
        "kd-cl",
        "kd-cl+student",
        "kd-cl+linear",
        "kd-cl+linear+student",
        "random-cl",
        "random-cl+linear",
    ]


@pytest.mark.parametrize("module", ["loop", "build", "epochs", "run_dir", "step"])
def test_the_loop_names_no_variant_ordering_or_pacing(module):
    """Variants, orderings, pacings, scorers, view modes and lambda policies are registry data:
    no module of the training loop compares their names."""
    tree = ast.parse((Path(train.__file__).parent / f"{module}.py").read_text())
    names = (
        set(VARIANTS) | set(ALIASES) | set(ORDERINGS) | set(PACINGS) | set(SCORERS) | set(VIEW_MODES) | set(POLICIES)
    )
    compared = {
        n.value
        for c in ast.walk(tree)
        if isinstance(c, (ast.Compare, ast.Match))
        for n in ast.walk(c)
        if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }
    assert not compared & names  # no `if variant == "kd-cl"`, `pacing in ("linear", ...)`, ...
    assert any(isinstance(c, ast.Compare) for c in ast.walk(tree))  # the check looks at real comparisons


def _split(logits, labels):
    logits = np.asarray(logits, dtype=np.float32)
    return build_split(logits, np.asarray(labels), np.arange(len(labels)), with_orders=True)


def test_merge_by_hand():
    labels = [0, 1, 0]
    a = _split([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0]], labels)
    b = _split([[0.0, 0.5], [0.0, 3.0], [1.0, 0.0]], labels)
    m = merge.merge_split([a, b], "mean", with_orders=True)
    np.testing.assert_allclose(m.logits, [[1.0, 0.25], [0.0, 2.0], [0.5, 1.5]])  # mean logits
    np.testing.assert_allclose(m.confidence, (a.confidence + b.confidence) / 2)
    # sample 0: a says 0 (p 0.88), b says 1 (p 0.62): mean p(0) = 0.63 -> right;
    # sample 2: a says 1 (p 0.95), b says 0 (p 0.73): mean p(1) = 0.61 -> wrong
    assert m.correct.tolist() == [True, True, False]
    one = merge.merge_split([a, b], "1", with_orders=True)
    np.testing.assert_array_equal(one.confidence, b.confidence)
    assert one.correct.tolist() == b.correct.tolist() == [False, True, True]


def test_merge_refuses_other_images_and_writes_a_store(digits_store, small_store, tmp_path):
    with pytest.raises(KdstoreError, match="different images"):
        merge.run(merge.MergeConfig(stores=(str(digits_store), str(small_store)), out=str(tmp_path / "m")))
    assert not (tmp_path / "m").exists()
    out = merge.run(merge.MergeConfig(stores=(str(digits_store), str(digits_store)), out=str(tmp_path / "same")))
    s, m = Store.open(digits_store), Store.open(out)
    np.testing.assert_allclose(m.train.logits, s.train.logits, atol=1e-3)
    np.testing.assert_array_equal(m.train.confidence, s.train.confidence)
    # "mean" recomputes correctness from the stored (float16) logits, where a tie can flip an argmax
    # that the cache decided on float32 logits; one teacher's confidence keeps its curriculum exactly.
    assert (m.train.correct == s.train.correct).mean() > 0.99
    one = Store.open(
        merge.run(
            merge.MergeConfig(stores=(str(digits_store), str(digits_store)), out=str(tmp_path / "one"), confidence="0")
        )
    )
    np.testing.assert_array_equal(one.train.curriculum, s.train.curriculum)
    assert m.attrs["teacher"] == "ensemble(cifar_resnet8,cifar_resnet8)" and json.loads(m.attrs["merged_from"])[1][
        "path"
    ] == str(digits_store)


def test_pacing_figure_draws_the_logged_g(tmp_path):
    from PIL import Image

    from kdstore.report.figures import pacing_profile
    from kdstore.report.runs import RunRecord

    g = fractions("linear", np.arange(12), 12, PacingParams(a=0.5, b=0.25))
    metrics = [{"epoch": e + 1, "pace": g[4 * e : 4 * e + 4].tolist()} for e in range(3)]
    run = RunRecord(tmp_path, {}, {"variant": "kd-cl", "arm": "kd-cl+linear", "seed": 0}, metrics)
    assert pacing_profile([run], tmp_path / "pacing.png") == "pacing.png"
    assert Image.open(tmp_path / "pacing.png").size == (1200, 450)
    unpaced = RunRecord(tmp_path, {}, {"variant": "kd", "seed": 0}, [{"epoch": 1}])
    assert pacing_profile([unpaced], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


@pytest.mark.slow
def test_resumed_student_scored_run_reloads_its_curriculum(ordering_store, tmp_path):
    """Rescored before epoch 3 only; killed in epoch 4, the resumed run must visit the saved
    student curriculum (not the teacher's) and end like the uninterrupted run."""
    base = TrainConfig(
        out="",
        store=str(ordering_store),
        variant="kd-cl-sr",
        scorer="student",
        rescore_every=2,
        epochs=4,
        batch_size=8,
        workers=1,
        progress=False,
    )
    straight_seen, resumed_seen = [], []
    straight = train.run(
        replace(base, out=str(tmp_path / "straight")), hook=lambda e, b, ids, lam: straight_seen.append((e, ids, lam))
    )

    def die_in_epoch_4(epoch, b, ids, lam):
        if epoch == 3 and b == 1:
            raise KeyboardInterrupt

    killed = replace(base, out=str(tmp_path / "killed"))
    with pytest.raises(KeyboardInterrupt):
        train.run(killed, hook=die_in_epoch_4)
    resumed = train.run(replace(killed, resume=True), hook=lambda e, b, ids, lam: resumed_seen.append((e, ids, lam)))
    last = [(ids.tolist(), lam) for e, ids, lam in straight_seen if e == 3]
    assert [(ids.tolist(), lam) for e, ids, lam in resumed_seen] == last
    assert resumed["final_val_acc"] == straight["final_val_acc"]
    t = Store.open(ordering_store).train
    assert sum((ids for ids, _ in last), []) != t.curriculum.tolist()  # epoch 4 followed the student's order
