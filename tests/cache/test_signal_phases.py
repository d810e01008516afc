"""Ctrl-C and SIGTERM stop a cache at every phase (estimate, .beton files, the teacher's clean
pass, its views pass, publish): within 2 s, in one line, without a traceback from any process,
leaving no child behind, and `--resume` then completes a store that `verify` passes.

Here each phase is hit once, each of SIGINT/SIGTERM x process/group in turn, plus an int8 cache;
the whole matrix (2 signals x 2 targets x 5 phases, and int8 at every phase) is
tests/signal_matrix.py, a script too heavy for the suite (its figures: benchmarks/RESULTS.md)."""

from __future__ import annotations

import signal

import pytest

from kdstore.store.verification import verify
from tests.signal_cases import interrupt, resume

pytestmark = [pytest.mark.slow, pytest.mark.heavy]  # caches in child processes and signals them

CASES = [
    ("estimate", signal.SIGINT, True, ()),
    ("betons", signal.SIGTERM, False, ()),
    ("teacher", signal.SIGTERM, True, ()),
    ("views", signal.SIGINT, False, ()),
    ("publish", signal.SIGINT, True, ()),
    ("views", signal.SIGTERM, True, ("--logits-dtype", "int8")),
]


def check(outcome, out, extra) -> None:
    where = f"{outcome.signal} to the {outcome.target} during {outcome.phase}"
    assert outcome.returncode in (2, 130), (where, outcome.returncode, outcome.stderr[-2000:])
    assert outcome.seconds < 2.0, (where, outcome.seconds)
    noise = ("Traceback", "Exception ignored", "terminate called")  # the last: FFCV's reader thread at teardown
    assert not [n for n in noise if n in outcome.stderr], outcome.stderr
    said = [line for line in outcome.lines if not line.startswith("estimate: ")]
    assert len(said) == 1 and (said[0].startswith("error: interrupted") or said[0] == "interrupted"), said
    assert outcome.left == [], (where, outcome.left)
    assert not out.exists(), f"{where}: a store was published"
    resumed = resume(out, *extra)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert verify(out) == []


@pytest.mark.parametrize(
    "phase,sig,group,extra", CASES, ids=[f"{c[0]}-{c[1].name}-{'group' if c[2] else 'process'}" for c in CASES]
)
def test_a_signal_at_each_phase_stops_the_cache_and_resume_completes_it(phase, sig, group, extra, tmp_path):
    out = tmp_path / "store"
    check(interrupt(out, phase, sig, group, *extra), out, extra)
