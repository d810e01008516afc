"""`kdstore sweep`: every variant x seed from one store, one after another, then the report.

Resumable: a run whose summary.json exists is finished and is not redone; a run without one
(killed part-way) is started again from scratch.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from . import report, train
from .errors import KdstoreError
from .progress import console
from .train import TrainConfig
from .variants import VARIANTS, get_variant


def parse_variants(spec: str) -> list[str]:
    """`all` or a comma-separated list (aliases allowed) -> canonical names, in the given order."""
    if spec.strip() == "all":
        return list(VARIANTS)
    try:
        names = [get_variant(v.strip()).name for v in spec.split(",") if v.strip()]
    except ValueError as e:
        raise KdstoreError(str(e)) from None
    if not names:
        raise KdstoreError("--variants names no variant")
    return list(dict.fromkeys(names))


def parse_seeds(spec: str) -> list[int]:
    try:
        seeds = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise KdstoreError(f"--seeds must be comma-separated integers, got {spec!r}") from None
    if not seeds:
        raise KdstoreError("--seeds names no seed")
    return list(dict.fromkeys(seeds))


def run_dir(out: Path, variant: str, seed: int) -> Path:
    return Path(out) / f"{variant}-s{seed}"


def run(base: TrainConfig, variants: Sequence[str], seeds: Sequence[int], out: Path) -> dict[str, Any]:
    """Train every (variant, seed) not finished yet under `out`, then write out/report."""
    out = Path(out)
    base.validate()
    jobs = [(v, s) for v in variants for s in seeds]
    for i, (variant, seed) in enumerate(jobs, 1):
        target = run_dir(out, variant, seed)
        if (target / "summary.json").is_file():
            console.print(f"[dim]{i}/{len(jobs)} {target.name}: finished earlier, kept[/]")
            continue
        console.print(f"[bold]{i}/{len(jobs)}[/] {target.name}")
        train.run(replace(base, out=str(target), variant=variant, seed=seed, overwrite=True))
    runs = [report.load_run(run_dir(out, v, s)) for v, s in jobs]
    summary = report.summarize(runs)
    report.write_report(summary, out / "report", runs)
    return summary
