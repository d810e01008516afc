"""The whole signal matrix of `kdstore cache` (issue: Reliability IV), too heavy for the suite:
SIGINT and SIGTERM, each sent to the process alone and to its whole process group, at each of
the five phases (estimate, betons, teacher, views, publish) of a digits cache with --views 4,
and the same with --logits-dtype int8 (one signal and target per phase). Every case must exit
non-zero within 2 s of the signal, in one line, with no traceback from any process, leave no
child behind, and `--resume` must then complete a store that `verify` passes.

    .venv/bin/python tests/signal_matrix.py [--json F]   # about 12 minutes on 2 cores

The suite runs one case per phase (tests/cache/test_signal_phases.py); the figures of a full run
are in benchmarks/RESULTS.md."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.cache.test_signal_phases import check  # noqa: E402
from tests.signal_cases import PHASES, interrupt  # noqa: E402


def cases() -> list[tuple[str, signal.Signals, bool, tuple[str, ...]]]:
    out = [(p, s, g, ()) for p in PHASES for s in (signal.SIGINT, signal.SIGTERM) for g in (False, True)]
    combos = [(signal.SIGINT, True), (signal.SIGTERM, False), (signal.SIGTERM, True), (signal.SIGINT, False)]
    int8 = ("--logits-dtype", "int8")
    return out + [(p, *combos[i % len(combos)], int8) for i, p in enumerate(PHASES)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="write every case's outcome here")
    args = ap.parse_args()
    rows, failed = [], 0
    t_all = time.monotonic()
    for phase, sig, group, extra in cases():
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "store"
            outcome = interrupt(out, phase, sig, group, *extra)
            try:
                check(outcome, out, extra)
                verdict = "ok"
            except AssertionError as e:
                verdict, failed = f"FAILED: {str(e)[:300]}", failed + 1
        row = {
            "phase": phase,
            "signal": sig.name,
            "target": outcome.target,
            "storage": "int8" if extra else "float16",
            "exit": outcome.returncode,
            "seconds_to_exit": round(outcome.seconds, 3),
            "line": (outcome.lines or [""])[-1][:100],
            "left": outcome.left,
            "verdict": verdict,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    seconds = [r["seconds_to_exit"] for r in rows]
    print(
        f"{len(rows)} cases, {failed} failed; exit after the signal: max {max(seconds):.2f} s, "
        f"median {sorted(seconds)[len(seconds) // 2]:.2f} s; {time.monotonic() - t_all:.0f} s in all"
    )
    if args.json:
        args.json.write_text(json.dumps({"cases": rows, "failed": failed}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
