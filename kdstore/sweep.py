"""`kdstore sweep`: every variant x pacing x scorer x seed from one store, then the report.

Combinations that mean nothing are left out: pacing needs a fixed order (not a shuffled
variant), a scorer other than the teacher needs a curriculum variant.

Resumable: a run whose summary.json exists is finished and is not redone; a run without one
(killed part-way) is started again from scratch.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from . import report, train
from .config import opt
from .errors import KdstoreError
from .progress import console
from .train import TrainConfig
from .views import VIEW_MODES
from .pacing import PACINGS
from .schedule import SCORERS, conflict
from .variants import PAPER_VARIANTS, VARIANTS, get_variant


@dataclass(frozen=True)
class SweepConfig:
    """`kdstore sweep`: the arms and seeds; every other option is the base TrainConfig's."""

    variants: str = opt("all", "'all', 'paper' (the six) or a comma-separated list of variants.")
    seeds: str = opt("0,1,2", "Comma-separated seeds.")
    pacing: str = opt("none", "Comma-separated pacing functions, each an arm.", choices=lambda: list(PACINGS))
    scorer: str = opt("teacher", "Comma-separated scorers, each an arm.", choices=lambda: list(SCORERS))
    views: str = opt("auto", "Comma-separated views modes (replay, clean), each an arm.", choices=lambda: list(VIEW_MODES))

    def run(self, base: TrainConfig) -> dict[str, Any]:
        return run(base, parse_variants(self.variants), parse_seeds(self.seeds), Path(base.out), parse_pacings(self.pacing),
                   parse_scorers(self.scorer), parse_views(self.views))


def parse_variants(spec: str) -> list[str]:
    """`all`, `paper` (the six of the paper) or a comma-separated list (aliases allowed) -> canonical names, in the given order."""
    if spec.strip() == "all":
        return list(VARIANTS)
    if spec.strip() == "paper":
        return list(PAPER_VARIANTS)
    try:
        names = [get_variant(v.strip()).name for v in spec.split(",") if v.strip()]
    except ValueError as e:
        raise KdstoreError(str(e)) from None
    if not names:
        raise KdstoreError("--variants names no variant")
    return list(dict.fromkeys(names))


def parse_choices(spec: str, known: dict, option: str) -> list[str]:
    """A comma-separated list of registry keys, e.g. `--pacing none,linear`."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [s for s in names if s not in known]
    if unknown or not names:
        raise KdstoreError(f"{option}: unknown {', '.join(unknown) or 'empty list'}; known: {', '.join(known)}")
    return list(dict.fromkeys(names))


def parse_pacings(spec: str) -> list[str]:
    return parse_choices(spec, PACINGS, "--pacing")


def parse_scorers(spec: str) -> list[str]:
    return parse_choices(spec, SCORERS, "--scorer")


def parse_views(spec: str) -> list[str]:
    return parse_choices(spec, dict.fromkeys(VIEW_MODES), "--views")


def arms(base: TrainConfig, variants: Sequence[str], pacings: Sequence[str] = ("none",), scorers: Sequence[str] = ("teacher",),
         views: Sequence[str] | None = None) -> list[TrainConfig]:
    """One config per meaningful (variant, pacing, scorer, views mode), in that nesting order."""
    out = []
    for v in variants:
        ordering = get_variant(v).ordering
        for p in pacings:
            for s in scorers:
                if conflict(ordering, p, s, v) is None:
                    out.extend(replace(base, variant=v, pacing=p, scorer=s, views=m) for m in (views or [base.views]))
    return out


def parse_seeds(spec: str) -> list[int]:
    try:
        seeds = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise KdstoreError(f"--seeds must be comma-separated integers, got {spec!r}") from None
    if not seeds:
        raise KdstoreError("--seeds names no seed")
    return list(dict.fromkeys(seeds))


def run_dir(out: Path, arm: str, seed: int) -> Path:
    return Path(out) / f"{arm}-s{seed}"


def run(base: TrainConfig, variants: Sequence[str], seeds: Sequence[int], out: Path,
        pacings: Sequence[str] = ("none",), scorers: Sequence[str] = ("teacher",), views: Sequence[str] | None = None) -> dict[str, Any]:
    """Train every (arm, seed) not finished yet under `out`, then write out/report."""
    out = Path(out)
    base.validate()
    configs = arms(base, variants, pacings, scorers, views)
    if not configs:
        raise KdstoreError("no variant takes the given --pacing/--scorer (pacing needs a fixed order, a student scorer a curriculum)")
    jobs = [(c, s) for c in configs for s in seeds]
    for i, (cfg, seed) in enumerate(jobs, 1):
        target = run_dir(out, cfg.arm, seed)
        if (target / "summary.json").is_file():
            console.print(f"[dim]{i}/{len(jobs)} {target.name}: finished earlier, kept[/]")
            continue
        console.print(f"[bold]{i}/{len(jobs)}[/] {target.name}")
        train.run(replace(cfg, out=str(target), seed=seed, overwrite=True))
    runs = [report.load_run(run_dir(out, c.arm, s)) for c, s in jobs]
    summary = report.summarize(runs)
    report.write_report(summary, out / "report", runs)
    return summary
