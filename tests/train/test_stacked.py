"""Students stacked into one network (train/stacked.py): the stack's arithmetic is each student's
own. In float64 its steps equal the students' separate steps to 1e-12 (parameters, BatchNorm
statistics and counters, momentum); in float32 the grouped kernels sum in another order, and
early training amplifies that as it amplifies any rounding (measured: a 1e-7 relative nudge of
one run's weights grows to 6e-4 in 6 steps on digits), so there the runs are compared loosely
(tests/train/test_concurrent.py)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn

from kdstore.errors import KdstoreError
from kdstore.loader.source import data_from_store
from kdstore.store.format import Store
from kdstore.train import stacked
from kdstore.train.build import build_run
from kdstore.train.concurrent import fit_together
from kdstore.train.config import TrainConfig
from kdstore.train.step import Step
from tests.helpers import student_config

STUDENTS = (("kd", 0), ("kd", 1), ("kd-cl-sr", 0))
STEPS = 2


def _runs(store, tmp_path, dtype=torch.float32, batch_size=64, **kw):
    data = data_from_store(Store.open(str(store)))
    runs = []
    for variant, seed in STUDENTS:
        cfg = student_config(tmp_path, store, variant, seed, batch_size=batch_size, **kw.get(variant, {}))
        run = build_run(cfg, data, cfg.student, "student")
        run.model.to(dtype)
        runs.append(run)
    return runs


def _state(run):
    """Every tensor a student's run carries on: parameters, buffers, momentum buffers."""
    out = {f"model.{k}": v.detach().clone() for k, v in run.model.state_dict().items()}
    for name, p in run.model.named_parameters():
        buf = run.step.optimizer.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            out[f"momentum.{name}"] = buf.clone()
    return out


def test_in_float64_a_stack_steps_exactly_as_its_students_alone(digits_store, tmp_path, monkeypatch):
    cast = Step._input
    monkeypatch.setattr(Step, "_input", lambda self, x: cast(self, x).double())
    alone, together = (_runs(digits_store, tmp_path, torch.float64, batch_size=32) for _ in range(2))
    batches = []
    for run in alone:
        run.loader.set_epoch(0)
        batches.append(list(itertools.islice(iter(run.loader), STEPS)))
    stack = stacked.Stack(together)
    stack.model.train()
    for i in range(STEPS):
        mine = [b[i] for b in batches]
        for run, batch in zip(alone, mine):
            run.model.train()
            run.step(batch)
        terms = stack.step(mine)
        for t in terms:
            assert set(t) == {"loss", "ce", "kd", "correct"}
    stack.write_back()
    for a, b in zip(alone, together):
        sa, sb = _state(a), _state(b)
        assert sa.keys() == sb.keys() and any(k.startswith("momentum.") for k in sa)
        for k in sa:
            assert sa[k].dtype == sb[k].dtype
            if sa[k].is_floating_point():
                torch.testing.assert_close(sb[k], sa[k], rtol=1e-12, atol=1e-12, msg=k)
            else:  # BatchNorm's counters: STEPS steps on from the same start
                assert torch.equal(sb[k], sa[k]) and int(sa[k]) == STEPS, k
        assert b.step.scheduler.last_epoch == a.step.scheduler.last_epoch == STEPS


def test_stacking_and_writing_back_changes_nothing(digits_store, tmp_path):
    runs = _runs(digits_store, tmp_path)
    before = [_state(r) for r in runs]
    stack = stacked.Stack(runs)
    x = torch.randn(5, 3 * len(runs), 32, 32)
    logits = stack.model.eval()(x).view(5, len(runs), -1)
    for n, run in enumerate(runs):  # student n's block of the stack is student n's own network
        torch.testing.assert_close(logits[:, n], run.model.eval()(x[:, 3 * n : 3 * n + 3]), rtol=1e-5, atol=1e-5)
    stack.write_back()
    for run, b in zip(runs, before):
        after = _state(run)
        assert after.keys() == b.keys() and all(torch.equal(after[k], b[k]) for k in b)


def test_what_cannot_be_stacked_is_named(digits_store, tmp_path):
    assert "is not one of kdstore's CIFAR networks" in stacked.unstackable(nn.Sequential(nn.Conv2d(3, 4, 3)))
    runs = _runs(digits_store, tmp_path, **{"kd-cl-sr": {"lr": 0.1}})
    assert stacked.blocker(runs) == "the students differ in lr"
    assert stacked.blocker(runs[:2]) is None
    net = runs[0].model
    net.stages[0][0].shortcut = nn.Dropout(0.1)  # draws random numbers: not each student's own draws
    assert "stages.0.0.shortcut (Dropout) is not known to act on each channel alone" in stacked.unstackable(net)


def test_a_bad_stack_mode_is_one_line(digits_store, tmp_path):
    with pytest.raises(KdstoreError, match="--stack must be one of auto, on, off, got 'sideways'"):
        fit_together([TrainConfig(out=str(tmp_path / "a"), store=str(digits_store))], stack="sideways")
