"""`kdstore sweep`: every variant x pacing x scorer x views x loss x seed from one store, then the report.

Combinations that mean nothing are left out: pacing needs a fixed order (not a shuffled
variant), a scorer other than the teacher needs a curriculum variant.
Resumable: a run whose summary.json exists and whose config.json matches the sweep's options is
finished and kept; a finished run made with other options is refused (or redone with
--overwrite); a run killed part-way resumes from its last per-epoch checkpoint when its
config.json matches (else it starts again from scratch). A run whose loss diverged (stopped.json)
is kept as stopped and left out of the report, and the sweep goes on.

`--concurrent N` trains N students at once in one process (train/concurrent.py): the same runs,
the same run directories, the same metrics; `auto` takes as many as the device's memory holds."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from kdstore.errors import Diverged, KdstoreError
from kdstore.loader.prepare import VIEW_MODES
from kdstore.loader.source import data_from_store
from kdstore.method.distill_losses import LOSSES, options_for
from kdstore.method.orderings import SCORERS, conflict
from kdstore.method.pacing import PACINGS
from kdstore.method.variants import PAPER_VARIANTS, VARIANTS, get_variant
from kdstore.options import differing, fields_of, old_names, opt, to_dict, with_policy
from kdstore.report import tables as report
from kdstore.runtime.console import clock, say
from kdstore.store.format import Store
from kdstore.store.publish import default_store
from kdstore.train import loop as train
from kdstore.train.concurrent import STACK_MODES, fit_together
from kdstore.train.config import TrainConfig
from kdstore.train.footprint import capacity
from kdstore.train.run_dir import STOPPED


@old_names
@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    """`kdstore sweep`: the arms and seeds; every other option is `base`'s, the TrainConfig each
    run starts from (its `out` is the sweep's directory). `kdstore.sweep.run(cfg)` runs it."""

    base: TrainConfig | None = None  # the runs' options but the swept ones (not a CLI option: train's own)

    variants: str = opt("all", "'all', 'paper' (the six) or a comma-separated list of variants.")
    seeds: str = opt("0,1,2", "Comma-separated seeds.")
    pacing: str = opt("none", "Comma-separated pacing functions, each an arm.", choices=lambda: list(PACINGS))
    scorer: str = opt("teacher", "Comma-separated scorers, each an arm.", choices=lambda: list(SCORERS))
    view_modes: str = opt(
        "auto",
        "Comma-separated view modes (replay, clean), each an arm.",
        choices=lambda: list(VIEW_MODES),
        was="views",
    )
    losses: str = opt(
        "kd",
        "Comma-separated distillation losses, each an arm crossed with every variant that has a teacher term; "
        "--loss-options gives each the keys it takes.",
        choices=lambda: list(LOSSES),
    )
    baseline: str = opt(report.BASELINE, "The arm the report compares every other with, paired by seed.")
    overwrite: bool = opt(
        False, "Redo finished runs under --out that were made with other options (without it the sweep refuses them)."
    )
    concurrent: str = opt(
        "1",
        "Students trained together in one process, from one store: a number, or 'auto' (as many as the device's "
        "memory holds, measured before training). Each writes its own run directory, as `kdstore train` does.",
    )
    stack: str = opt(
        "auto",
        "How students trained together step: 'on' as one network of grouped convolutions (kdstore's CIFAR "
        "networks; one launch per layer for all), 'off' each its own step in turn, 'auto' stacked on CUDA only.",
        choices=lambda: list(STACK_MODES),
    )


def parse_variants(spec: str) -> list[str]:
    """`all`, `paper` (the six of the paper) or a comma-separated list (aliases allowed) -> canonical
    names, in the given order."""
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
    return parse_choices(spec, dict.fromkeys(VIEW_MODES), "--view-modes")


def arms(
    base: TrainConfig,
    variants: Sequence[str],
    pacings: Sequence[str] = ("none",),
    scorers: Sequence[str] = ("teacher",),
    views: Sequence[str] | None = None,
    losses: Sequence[str] | None = None,
) -> list[TrainConfig]:
    """One config per meaningful (variant, pacing, scorer, views mode, loss), in that nesting
    order; a variant without a teacher term (unguided) gets one arm whatever the losses."""
    out: list[TrainConfig] = []
    given = base.loss_options
    for v in variants:
        variant = get_variant(v)
        kinds = (losses or [base.loss]) if variant.needs_teacher else ["kd"]  # unguided reads no loss
        for p in pacings:
            for s in scorers:
                if conflict(variant.ordering, p, s, v) is None:
                    out.extend(
                        replace(
                            base, variant=v, pacing=p, scorer=s, view_mode=m, loss=k, loss_options=options_for(k, given)
                        )
                        for m in (views or [base.view_mode])
                        for k in kinds
                    )
    return out


def _check_losses(base: TrainConfig, configs: list[TrainConfig]) -> None:
    """Every arm's loss with its options, and every --loss-options key taken by a swept loss: one
    line before any run."""
    for c in configs:
        c.loader_config().distill_term()
    taken = {item for c in configs for item in c.loss_options.split(",") if item}
    unused = [item for item in base.loss_options.split(",") if item.strip() and item.strip() not in taken]
    if unused:
        raise KdstoreError(f"--loss-options {', '.join(unused)}: no swept loss takes it (--losses names which)")


def parse_seeds(spec: str) -> list[int]:
    try:
        seeds = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise KdstoreError(f"--seeds must be comma-separated integers, got {spec!r}") from None
    if not seeds:
        raise KdstoreError("--seeds names no seed")
    return list(dict.fromkeys(seeds))


def parse_concurrent(spec: str) -> int | None:
    """--concurrent: a positive number of students, or `auto` (None: as many as fit)."""
    if str(spec).strip() == "auto":
        return None
    try:
        n = int(spec)
    except ValueError:
        n = 0
    if n < 1:
        raise KdstoreError(f"--concurrent must be a positive number of students or auto, got {spec!r}")
    return n


def run_dir(out: Path, arm: str, seed: int) -> Path:
    return Path(out) / f"{arm}-s{seed}"


# What a finished run may have been made with and still be kept: how it ran, not what it computed
# (train's RESUMABLE_CHANGES), where it is and its store (compared as an absolute path below), and
# the options recorded as they ran (amp: off on the CPU).
_KEEP_DESPITE = train.RESUMABLE_CHANGES | set(with_policy(TrainConfig, "sweep", "where", "ran"))


def stale(cfg: TrainConfig, target: Path) -> list[str]:
    """The options a finished run in `target` was made with that differ from `cfg` (empty: keep it)."""
    try:
        saved = json.loads((target / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return ["config.json (unreadable)"]
    if not isinstance(saved, dict):
        return ["config.json (not an object)"]
    changed = differing(fields_of(TrainConfig, TrainConfig.recorded(saved)), to_dict(cfg), ignore=_KEEP_DESPITE)
    if cfg.store and saved.get("store") != str(Path(cfg.store).resolve()):
        changed.append("store")
    return changed


def run(sweep: SweepConfig) -> dict[str, Any]:
    """Train every (arm, seed) of `sweep` not finished yet under sweep.base.out, then write
    sweep.base.out/report; returns the report's summary."""
    base = sweep.base
    if base is None:
        raise KdstoreError("SweepConfig needs base=TrainConfig(out=..., ...): the options of its runs")
    out = Path(base.out)
    replace(base, loss_options="").validate()  # the options are checked against each swept loss (_check_losses)
    seeds, baseline, overwrite = parse_seeds(sweep.seeds), sweep.baseline, sweep.overwrite
    concurrent = parse_concurrent(sweep.concurrent)
    configs = arms(
        base,
        parse_variants(sweep.variants),
        parse_pacings(sweep.pacing),
        parse_scorers(sweep.scorer),
        parse_views(sweep.view_modes),
        parse_choices(sweep.losses, LOSSES, "--losses"),
    )
    _check_losses(base, configs)
    if not configs:
        raise KdstoreError(
            "no variant takes the given --pacing/--scorer (pacing needs a fixed order, a student scorer a curriculum)"
        )
    jobs = [(replace(c, out=str(run_dir(out, c.arm, s)), seed=s, overwrite=True), s) for c in configs for s in seeds]
    if baseline not in {c.arm for c, _ in jobs}:
        say(
            f"warning: the baseline arm {baseline!r} is not in this sweep; the report has no Δ column (pass "
            "--baseline ARM)"
        )
    todo = _todo([cfg for cfg, _ in jobs], overwrite)
    if concurrent == 1:
        _one_by_one([cfg for cfg, _ in jobs], todo)
    elif todo:
        _together(todo, concurrent, sweep.stack)
    stopped = [c for c, _ in jobs if (Path(c.out) / STOPPED).is_file()]
    if stopped:
        say(f"left out of the report, their loss diverged: {', '.join(Path(c.out).name for c in stopped)}")
    runs = [report.load_run(Path(c.out)) for c, _ in jobs if c not in stopped]
    if not runs:
        raise KdstoreError("every run of the sweep stopped (its loss diverged); see their stopped.json")
    summary = report.summarize(runs, baseline=baseline)
    report.write_report(summary, out / "report", runs)
    return summary


def _todo(cfgs: list[TrainConfig], overwrite: bool) -> list[TrainConfig]:
    """The runs still to train (a killed one with a matching config.json and a checkpoint resumes);
    a finished or stopped run made with other options is refused without --overwrite."""
    todo = []
    for cfg in cfgs:
        target = Path(cfg.out)
        ended = (target / "summary.json").is_file() or (target / STOPPED).is_file()
        changed = stale(cfg, target) if ended or (target / "config.json").is_file() else ["config.json"]
        if ended and changed and not overwrite:
            raise KdstoreError(
                f"{target} holds a finished run made with different {', '.join(changed)}; "
                "pass --overwrite to redo it, or sweep into another --out"
            )
        if ended and not changed:
            continue
        resumable = not ended and not changed and (target / "checkpoint.pt").is_file()
        todo.append(replace(cfg, resume=True) if resumable else cfg)
    return todo


def _one_by_one(cfgs: list[TrainConfig], todo: list[TrainConfig]) -> None:
    """Train the runs in `todo` one after another, saying for each of `cfgs` what becomes of it."""
    waiting = {c.out: c for c in todo}
    t0, done = time.perf_counter(), 0
    for i, cfg in enumerate(cfgs, 1):
        head = f"[{i}/{len(cfgs)}] {Path(cfg.out).name}"
        if cfg.out not in waiting:
            say(f"{head}: {_ended(Path(cfg.out))} earlier with the same options, kept")
            continue
        elapsed = time.perf_counter() - t0
        eta = f", ETA {clock(elapsed / done * (len(todo) - done))}" if done else ""
        resumed = " resumed from its last epoch" if waiting[cfg.out].resume else ""
        say(f"{head}{resumed} (elapsed {clock(elapsed)}{eta})")
        try:
            train.run(waiting[cfg.out])
        except Diverged as e:
            say(f"{e}; the sweep goes on")
        done += 1


def _ended(target: Path) -> str:
    return "stopped (its loss diverged)" if (target / STOPPED).is_file() else "finished"


def _together(todo: list[TrainConfig], concurrent: int | None, stack: str = "auto") -> None:
    """Train the runs in `todo` in groups of `concurrent` students (None: as many as fit), each
    group stacked into one network or not (`stack`: fit_together's)."""
    store = todo[0].store or str(default_store())
    todo = [replace(c, store=store) for c in todo]
    data = data_from_store(Store.open(store))
    if concurrent is None:
        room = capacity(todo[0], data)
        if room.students < 1:
            raise KdstoreError(f"--concurrent auto: one student of {todo[0].student} does not fit: {room.describe()}")
        concurrent = min(room.students, len(todo))
        say(f"--concurrent auto: {concurrent} students at once ({room.describe()})")
    t0 = time.perf_counter()
    for start in range(0, len(todo), concurrent):
        group = todo[start : start + concurrent]
        names = ", ".join(Path(c.out).name + (" (resumed)" if c.resume else "") for c in group)
        elapsed = clock(time.perf_counter() - t0)
        say(f"[{start + 1}-{start + len(group)}/{len(todo)}] together: {names} (elapsed {elapsed})")
        fit_together(group, data, stack)
