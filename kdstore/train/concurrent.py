"""Students trained together: many runs of one architecture in one process, from one store,
epoch by epoch (`kdstore sweep --concurrent N`; `kdstore.train.concurrent.fit_together` in Python).

Each student is a whole run of its own (build.py): its loader with its own order, pacing,
augmentation draws and lambda, its seed, model, optimiser and learning-rate schedule, its own
global random state (swapped in around everything it does), and its own run directory, written
exactly as `kdstore train` writes one. What they share is what one store gives them all: the
data opened once, the splits held in memory once, and each validation batch read once for every
student.

Each epoch the students train either as one stacked network (stacked.py: one step for all, each
on its own batch; `stack="on"`, or `auto` on CUDA), which computes each student's own step in
another summation order, or in turn, an epoch each, each taking the step it would take alone
(its metrics equal its separate run's bit for bit on the CPU: tests/train/test_concurrent.py;
each pass's `seconds` and images/s are its own). Then one validation pass reads each batch once
for all of them; a student's summary.json `seconds` is the whole group's wall time. A student
whose training loss goes NaN or infinite is stopped after that epoch (stopped.json in its
directory says when) and the others go on; `--resume` (the sweep resumes each killed student from its last checkpoint)
continues every student from its own epoch."""

from __future__ import annotations

import gc
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from kdstore.errors import KdstoreError
from kdstore.loader.source import TrainData, data_from_store
from kdstore.runtime import distributed
from kdstore.runtime.console import images_progress, say
from kdstore.runtime.devices import resolve_device
from kdstore.store.format import Store
from kdstore.train import stacked
from kdstore.train.build import Run, build_run
from kdstore.train.config import TrainConfig
from kdstore.train.epochs import (
    TrainPass,
    begin_epoch,
    end_epoch,
    epoch_line,
    model_input,
    scalars_of,
    synchronize,
    train_epoch,
    val_metrics_of,
)
from kdstore.train.footprint import capacity
from kdstore.train.run_dir import diverged, open_run, save_epoch, save_stopped, summarize
from kdstore.train.tensorboard import EventLog

# What students trained together must share: one store, one architecture as built, one batch
# (size and input size), one device and precision. Everything else is a student's own.
SHARED = ("store", "student", "stem", "pretrained", "pretrained_file", "batch_size", "input_size", "device", "amp")
STACK_MODES = ("auto", "on", "off")  # fit_together's `stack`: stacked.py


def check_together(cfgs: list[TrainConfig]) -> None:
    """Refuse, in one line naming the first mismatch, students that cannot be trained together."""
    if not cfgs:
        raise KdstoreError("no students to train together")
    first = cfgs[0]
    for cfg in cfgs[1:]:
        for name in SHARED:
            if getattr(cfg, name) != getattr(first, name):
                raise KdstoreError(
                    f"--concurrent: the students differ in {name} ({getattr(first, name)!r} for {first.arm} seed "
                    f"{first.seed}, {getattr(cfg, name)!r} for {cfg.arm} seed {cfg.seed}); students trained together "
                    f"share {', '.join(SHARED)}"
                )
    outs = [str(c.out) for c in cfgs]
    if len(set(outs)) < len(outs):
        raise KdstoreError("--concurrent: two students would write the same run directory")


def check_fits(cfgs: list[TrainConfig], data: TrainData) -> None:
    """Refuse more students than the device holds, saying the largest number that fits (measured
    before training starts: train/footprint.py)."""
    room = capacity(cfgs[0], data)
    if room.students < len(cfgs):
        raise KdstoreError(
            f"--concurrent {len(cfgs)}: too many students of {cfgs[0].student} at batch {cfgs[0].batch_size}: "
            f"{room.describe()}; pass --concurrent {room.students} or auto"
            if room.students
            else f"one student of {cfgs[0].student} at batch {cfgs[0].batch_size} does not fit: {room.describe()}"
        )


@dataclass(kw_only=True)
class Student:
    """One run trained among others: the run, its own random state, where it stands."""

    run: Run
    start: int  # the first epoch it trains (after a resume, its next one)
    rng: torch.Tensor  # its global (CPU) random state between its turns
    cuda_rng: torch.Tensor | None
    events: EventLog | None
    stopped: str | None = None  # why it was stopped (its loss diverged)

    def trains(self, epoch: int) -> bool:
        return self.stopped is None and self.start <= epoch < self.run.cfg.epochs

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Everything the student does runs with its own global random state, as it would alone."""
        cuda = self.run.device.type == "cuda"
        outer = torch.get_rng_state()
        outer_cuda = torch.cuda.get_rng_state(self.run.device) if cuda else None
        torch.set_rng_state(self.rng)
        if cuda and self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng, self.run.device)
        try:
            yield
        finally:
            self.rng = torch.get_rng_state()
            torch.set_rng_state(outer)
            if cuda and outer_cuda is not None:
                self.cuda_rng = torch.cuda.get_rng_state(self.run.device)
                torch.cuda.set_rng_state(outer_cuda, self.run.device)


def _student(cfg: TrainConfig, data: TrainData) -> Student:
    """A run built, resumed if asked, and its directory made ready, as `train` does it."""
    outer = torch.get_rng_state()
    run = build_run(cfg, data, cfg.student, "student")
    caution = run.step.loss.lam_caution(cfg.lam) if run.step.loss is not None else None
    if caution and run.variant.fixed_lambda:
        say(f"warning: {run.label} seed {cfg.seed}: {caution}")
    start = open_run(run)
    cuda = run.device.type == "cuda"
    student = Student(
        run=run,
        start=start,
        rng=torch.get_rng_state(),
        cuda_rng=torch.cuda.get_rng_state(run.device) if cuda else None,
        events=EventLog(run.out) if cfg.tensorboard else None,
    )
    torch.set_rng_state(outer)
    return student


def fit_together(
    cfgs: list[TrainConfig], data: TrainData | None = None, stack: str = "auto"
) -> list[dict[str, Any] | None]:
    """Train every student of cfgs together (module docstring) from `data` (default: the store
    of cfgs[0]); returns each one's summary (None for a student stopped because its loss diverged).
    stack: `on` (one stacked network where it can: stacked.py), `off` (their own steps in turn) or
    `auto` (stacked on CUDA only)."""
    if stack not in STACK_MODES:
        raise KdstoreError(f"--stack must be one of {', '.join(STACK_MODES)}, got {stack!r}")
    check_together(cfgs)
    for cfg in cfgs:
        cfg.validate()
    if distributed.init(resolve_device(cfgs[0].device))[0].active:
        raise KdstoreError("--concurrent is not supported under torchrun yet; train the students in one process each")
    if data is None:
        data = data_from_store(Store.open(str(cfgs[0].store)))
    check_fits(cfgs, data)
    students = [_student(cfg, data) for cfg in cfgs]
    said: set[str] = set()  # why the students could not be stacked, said once each
    t0, trained = time.perf_counter(), [0, 0.0]  # images trained, seconds of training
    with images_progress(cfgs[0].progress) as bar:
        for epoch in range(min(s.start for s in students), max(c.epochs for c in cfgs)):
            going = [s for s in students if s.trains(epoch)]
            if going:
                images, seconds = _epoch(going, epoch, bar, time.perf_counter() - t0, (stack, said))
                trained[0] += images
                trained[1] += seconds
    if trained[1]:
        say(f"{len(students)} students together: {trained[0] / trained[1]:,.0f} training images/s in all")
    summaries: list[dict[str, Any] | None] = []
    for s in students:
        if s.events is not None:
            s.events.close()
        if s.stopped is None:
            summaries.append(summarize(s.run, s.run.cfg.student, time.perf_counter() - t0))
        else:
            summaries.append(None)
    del students  # their FFCV loaders and threads end here
    gc.collect()
    return summaries


def _epoch(students: list[Student], epoch: int, bar, elapsed: float, stack: tuple[str, set[str]]) -> tuple[int, float]:
    """One epoch of every student: their training passes (as one stack, or in turn), one
    validation pass for all, then each one's row, checkpoint and line (or its stop). Returns the
    images trained on (all students) and the seconds their training took."""
    t0 = time.perf_counter()
    begun = []
    for s in students:
        with s.turn():
            begun.append(begin_epoch(s.run, epoch, bar))
    if _stacks(students, epoch, stack):
        passes = _stacked_pass(students, epoch, bar, begun)
        seconds = passes[0]["seconds"]  # one pass for all
    else:
        passes = []
        for s, (_, lambdas, task) in zip(students, begun):
            with s.turn():
                passes.append(train_epoch(s.run, epoch, lambdas, bar, task))
        seconds = sum(p["seconds"] for p in passes)
    trained = sum(round(p["images_per_s"] * p["seconds"]) for p in passes)
    val = val_metrics_of([model_input(s.run) for s in students], students[0].run.val_loader, students[0].run.ctx)
    for s, (row, _, task), p, v in zip(students, begun, passes, val):
        row.update(p)
        with s.turn():
            end_epoch(s.run, row, bar, task, v)
            _close_epoch(s, row, elapsed + time.perf_counter() - t0, epoch + 1 - s.start)
    return trained, seconds


def _stacks(students: list[Student], epoch: int, stack: tuple[str, set[str]]) -> bool:
    """Whether this epoch's students train as one stack (stacked.py): the mode (stack[0]) on, or
    auto on CUDA; nothing blocks it (else the reason is said once, kept in stack[1], and they step
    in turn); their epochs have the same batches."""
    mode, said = stack
    if mode == "off" or (mode == "auto" and students[0].run.device.type != "cuda"):
        return False
    runs = [s.run for s in students]
    why = stacked.blocker(runs)
    if why is None and len({len(r.loader.rank_order(epoch)) for r in runs}) > 1:
        why = "their epochs have different numbers of samples"
    if why is not None:
        if why not in said:
            say(f"--stack: the students take their steps in turn ({why})")
            said.add(why)
        return False
    return True


def _stacked_pass(students: list[Student], epoch: int, bar, begun: list) -> list[dict[str, float]]:
    """One pass of training of every student as one stack: each batch of each student's own loader
    (under its own random state), one step for all; returns each one's pass row (train_epoch's)."""
    stack = stacked.Stack([s.run for s in students])
    passes = [TrainPass(s.run, epoch, bar, task) for s, (_, _, task) in zip(students, begun)]
    stack.model.train()
    iters = []
    for s in students:
        with s.turn():
            iters.append(iter(s.run.loader))
    wait = 0.0
    t0 = time.perf_counter()
    while True:
        t_wait = time.perf_counter()
        got = []
        for s, it in zip(students, iters):
            with s.turn():
                got.append(next(it, None))
        wait += time.perf_counter() - t_wait
        batches = [b for b in got if b is not None]
        if not batches:
            break
        if len(batches) < len(got) or len({len(b) for b in batches}) > 1:  # _stacks checked the epoch's length
            raise KdstoreError("--stack: the students' loaders gave batches of different sizes")
        for p, b in zip(passes, batches):
            p.observe(b)
        for p, terms, b in zip(passes, stack.step(batches), batches):
            p.add(terms, len(b))
    synchronize(students[0].run.device)
    stack.write_back()
    seconds = time.perf_counter() - t0
    # `seconds` is the stack's pass, shared; `stacked` says how many students took it
    return [{**p.result(lambdas, seconds, wait), "stacked": len(students)} for p, (_, lambdas, _) in zip(passes, begun)]


def _close_epoch(s: Student, row: dict[str, Any], elapsed: float, epochs_timed: int) -> None:
    """A student's epoch written (metrics line, checkpoint, scalars, its line), or its stop."""
    run = s.run
    s.stopped = diverged(run, row)
    if s.stopped is not None:
        path = save_stopped(run, row, s.stopped)
        say(f"{run.label} seed {run.cfg.seed}: {s.stopped}; stopped (the others go on; {path})")
        return
    save_epoch(run, row)
    if s.events is not None:
        s.events.epoch(scalars_of(run, row))
    say(epoch_line(run, row, elapsed, epochs_timed))
