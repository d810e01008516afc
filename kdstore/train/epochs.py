"""One epoch of a run: a pass of training over the loader's batches, then validation and the
agreement with the teacher; its log line and its TensorBoard scalars."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from kdstore.passes.inference import ModelInput
from kdstore.runtime.console import clock
from kdstore.runtime.distributed import Context, all_reduce_sum
from kdstore.train import agreement
from kdstore.train.build import Run


def run_epoch(run: Run, epoch: int, bar) -> dict[str, Any]:
    """Rescore if due, the epoch's lambdas, one pass of training, then evaluation."""
    row, lambdas, task = begin_epoch(run, epoch, bar)
    row.update(train_epoch(run, epoch, lambdas, bar, task))
    return end_epoch(run, row, bar, task)


def begin_epoch(run: Run, epoch: int, bar) -> tuple[dict[str, Any], np.ndarray, Any]:
    """An epoch's start: its order set (rescored first if due), its lambdas, its row begun (lr, g(t)
    and lambda of every batch) and its progress task. Returns (row, lambdas, task)."""
    cfg, loader = run.cfg, run.loader
    loader.set_epoch(epoch)
    if loader.rescore_due(epoch):
        loader.rescore(run.model, input_size=cfg.input_size, amp=cfg.amp, progress=cfg.progress and run.ctx.main)
    lambdas = loader.lambdas(epoch)
    total = len(loader) * loader.batch_size if loader.drop_last else len(loader.rank_order(epoch))
    task = bar.add_task(f"{run.variant.name} epoch {epoch + 1}/{cfg.epochs}", total=total, info="")
    plan = loader.plan
    assert plan is not None
    row: dict[str, Any] = {
        "epoch": epoch + 1,
        "lr": float(run.step.scheduler.get_last_lr()[0]),
        "scores": plan.scores.source,
    }
    pace = plan.fractions(epoch)
    if pace is not None:  # g(t) for every batch of the epoch, for `kdstore report`
        row["pace"] = np.round(pace, 5).tolist()
    row["lam"] = np.round(lambdas, 5).tolist()  # lambda of every batch, for `kdstore report`'s figure
    for p in run.body:  # --freeze-epochs: only the head learns at first (frozen params get no grad)
        p.requires_grad_(epoch >= cfg.freeze_epochs)
    return row, lambdas, task


def end_epoch(run: Run, row: dict[str, Any], bar, task, val: dict[str, float] | None = None) -> dict[str, Any]:
    """An epoch's end, after its training pass: what the loss learnt, validation (`val`: measured
    already, beside other students on the same batches) and the agreement; the row joins the history."""
    if run.step.loss is not None:  # what a loss learns (ctkd: its temperature), as the epoch left it
        row.update({f"loss_{k}": v for k, v in run.step.loss.readings().items()})
    t_eval = time.perf_counter()
    row.update(val if val is not None else val_metrics(model_input(run), run.val_loader, run.ctx))
    if run.agreement is not None:
        row.update(run.agreement(run.model))
    row["eval_seconds"] = time.perf_counter() - t_eval  # validation and agreement (`seconds` is training alone)
    bar.remove_task(task)  # the epoch's line (epoch_line) takes its place
    run.history.append(row)
    return row


def model_input(run: Run) -> ModelInput:
    """How the run's model is evaluated: on clean images, normalised and sized as in training."""
    loader = run.loader
    return ModelInput(
        model=run.model,
        mean=loader.mean,
        std=loader.std,
        input_size=run.cfg.input_size or run.data.image_size,
        device=run.device,
        amp=run.cfg.amp,
    )


class TrainPass:
    """A pass of training under way: steps the run on each batch it is given (after the run's
    hook) and sums the step's terms on the device; result() reads them once, at the end."""

    def __init__(self, run: Run, epoch: int, bar, task) -> None:
        self.run, self.epoch, self.bar, self.task = run, epoch, bar, task
        self.sums = torch.zeros(4, dtype=torch.float64, device=run.device)  # loss, ce, kd, correct (sample-weighted)
        self.n_seen = 0
        run.step.model.train()

    def __call__(self, batch) -> torch.Tensor:
        """One step on `batch`; returns its loss (on the device)."""
        run = self.run
        self.observe(batch)
        terms = run.step(batch)
        self.add(terms, len(batch))
        return terms["loss"]

    def observe(self, batch) -> None:
        """The run's hook on a batch about to be trained on."""
        if self.run.hook is not None:
            self.run.hook(self.epoch, batch.index, batch.ids.copy(), batch.lam)

    def add(self, terms: dict[str, torch.Tensor], n: int) -> None:
        """A step's terms (on `n` samples) into the pass's sums."""
        self.n_seen += n
        self.sums += torch.stack(
            [terms["loss"].double() * n, terms["ce"].double() * n, terms["kd"].double() * n, terms["correct"].double()]
        )
        self.bar.update(self.task, completed=self.n_seen)  # a number only: no sync with the device

    def result(self, lambdas: np.ndarray, seconds: float, wait: float) -> dict[str, float]:
        """The pass's row: mean terms and accuracy over every rank's samples, lambda's range, and
        its speed (`seconds` of training, `wait` of them spent waiting for batches)."""
        run = self.run
        totals = all_reduce_sum(
            torch.cat([self.sums, torch.tensor([float(self.n_seen)], dtype=torch.float64, device=run.device)]),
            run.ctx,
        )
        n_all = max(totals[4].item(), 1.0)
        loss, ce, kd, correct = (totals[:4] / n_all).tolist()
        return {
            "train_loss": loss,
            "train_ce": ce,
            "train_kd": kd,
            "train_acc": correct,
            "lam_mean": float(lambdas.mean()),
            "lam_min": float(lambdas.min()),
            "lam_max": float(lambdas.max()),
            "seconds": seconds,
            "images_per_s": n_all / max(seconds, 1e-9),
            "data_wait_frac": wait / max(seconds, 1e-9),
        }


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (so that it counts as training time, not evaluation's)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_epoch(run: Run, epoch: int, lambdas: np.ndarray, bar, task) -> dict[str, float]:
    """One pass over the training loader (this rank's share of the epoch's batches, each checked
    by the loader against the sample ids it read); lambdas[b] is batch b's lambda."""
    step = TrainPass(run, epoch, bar, task)
    wait = 0.0
    t0 = t_wait = time.perf_counter()
    for batch in run.loader:
        wait += time.perf_counter() - t_wait
        step(batch)
        t_wait = time.perf_counter()
    synchronize(run.device)
    return step.result(lambdas, time.perf_counter() - t0, wait)


def val_metrics(inp: ModelInput, loader: Any, ctx: Context = Context()) -> dict[str, float]:
    """Validation accuracy and loss (mean CE) of inp.model over the whole split (each rank reads
    its shard in order); where the batches carry the teacher's logits, also the agreement with it
    (agreement.py). Sums stay on the device: the host waits once, at the end."""
    return val_metrics_of([inp], loader, ctx)[0]


class _ValSums:
    """One model's validation sums, on the device."""

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.agreement = agreement.Sums(device)


@torch.inference_mode()
def val_metrics_of(inps: list[ModelInput], loader: Any, ctx: Context = Context()) -> list[dict[str, float]]:
    """val_metrics of several models from one pass over the split: each batch is read once and
    every model runs on it (students trained together), each with its own sums."""
    device = inps[0].device
    sums = [_ValSums(device) for _ in inps]
    for inp in inps:
        inp.model.eval()
    n, with_teacher = 0, False
    for batch in loader:
        y = batch.labels  # on the device already
        for inp, s in zip(inps, sums):
            logits = inp.logits(batch.images)
            s.loss += nn.functional.cross_entropy(logits, y, reduction="sum").double()
            s.correct += (logits.argmax(1) == y).sum()
            if batch.target.logits is not None:
                s.agreement.add(logits, batch.target.logits)
        with_teacher = with_teacher or batch.target.logits is not None
        n += len(y)
    out = []
    for s in sums:
        totals = all_reduce_sum(
            torch.stack([s.loss, s.correct.double(), torch.tensor(float(n), dtype=torch.float64, device=device)]), ctx
        )
        n_all = max(totals[2].item(), 1.0)
        row = {"val_acc": totals[1].item() / n_all, "val_loss": totals[0].item() / n_all}
        if with_teacher:
            row["agree_val"], row["kl_val"] = s.agreement.result(ctx)
        out.append(row)
    return out


def epoch_line(run: Run, row: dict[str, Any], elapsed: float, epochs_timed: int) -> str:
    """The log line of a finished epoch, with the run's ETA from the epochs timed so far."""
    left = run.cfg.epochs - row["epoch"]
    eta = clock(elapsed / max(epochs_timed, 1) * left)
    kd = run.variant.needs_teacher  # a teacher (an unguided student) has no KD term: no kd, no lambda
    return (
        f"{run.label} seed {run.cfg.seed} epoch {row['epoch']}/{run.cfg.epochs}: loss {row['train_loss']:.4f} "
        + (f"(ce {row['train_ce']:.4f}, kd {row['train_kd']:.4f}), " if kd else "")
        + f"train acc {row['train_acc']:.2%}, val acc {row['val_acc']:.2%}, val loss {row['val_loss']:.4f}, "
        + (f"agreement {row['agree_val']:.2%} (KL {row['kl_val']:.3f}), " if "agree_val" in row else "")
        + (f"lambda {row['lam_mean']:.3f}, " if kd else "")
        + f"lr {row['lr']:.4g}, {row['images_per_s']:,.0f} img/s, {row['seconds']:.1f} s, ETA {eta}"
    )


# The metrics of a KD term: left out of the TensorBoard scalars of a run without one (a teacher,
# an unguided student); metrics.jsonl keeps every field, the same for every run
NO_KD_TERM = ("train_kd", "lam_mean", "lam_min", "lam_max", "lam")


def scalars_of(run: Run, row: dict[str, Any]) -> dict[str, Any]:
    """The epoch row as TensorBoard records it: without the KD term and lambda in a run that has none."""
    return row if run.variant.needs_teacher else {k: v for k, v in row.items() if k not in NO_KD_TERM}
