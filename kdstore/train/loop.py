"""`kdstore train` (students from a store) and `kdstore teacher`: one training loop for both.

The loop reads its batches from the public loader (kdstore.loader.StoreLoader: the variant's
order and pacing, augmentation or replayed views, teacher targets and lambda per batch) and
takes the public loss on them (kd_loss, in step.py): it never asks which variant, pacing, scorer
or storage it runs. No teacher model is ever built here (except the online-KD baseline's)."""

from __future__ import annotations

import gc
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from kdstore.errors import KdstoreError
from kdstore.loader.source import TrainData, data_from_store
from kdstore.loader.store_loader import StoreLoader
from kdstore.loader.teacher_targets import TeacherFn, online_teacher
from kdstore.method.orderings import Scores
from kdstore.method.variants import Variant
from kdstore.models.build import build_model
from kdstore.models.checkpoints import load_checkpoint, save_checkpoint
from kdstore.models.teachers import TeacherSpec, load_teacher
from kdstore.options import (
    PROVENANCE_KEYS,
    differing,
    provenance,
    to_dict,
    with_policy,
    write_json,
)
from kdstore.passes.inference import ModelInput
from kdstore.runtime import distributed
from kdstore.runtime.console import clock, images_progress, say
from kdstore.runtime.devices import resolve_device
from kdstore.runtime.distributed import Context, all_reduce_sum
from kdstore.runtime.files import writing
from kdstore.runtime.precision import for_device
from kdstore.store.format import Store
from kdstore.store.publish import default_store
from kdstore.store.rows import Rows
from kdstore.store.verification import verify
from kdstore.train import agreement
from kdstore.train.config import TrainConfig
from kdstore.train.step import Step, cosine, sgd
from kdstore.train.tensorboard import EventLog

__all__ = ["TrainData", "data_from_store", "Run", "build_run", "fit", "run", "run_online"]

# on_batch(epoch, batch index, sample ids (B,), lambda): observes what the loop trained on.
BatchHook = Callable[[int, int, np.ndarray, float], None]


@dataclass(kw_only=True)
class Run:
    """One training run as build_run makes it; run_epoch advances it an epoch at a time."""

    cfg: TrainConfig
    data: TrainData
    kind: str  # "student" or "teacher"
    variant: Variant
    ctx: Context
    device: torch.device
    model: nn.Module  # the bare model (checkpoints, evaluation)
    meta: dict[str, Any]  # how to rebuild the model
    body: list[nn.Parameter]  # every parameter but the classifier head's (--freeze-epochs)
    step: Step  # runs `net` (DDP-wrapped under torchrun)
    loader: StoreLoader  # the training split: batches with their targets and lambda
    val_loader: StoreLoader  # the validation split, with the teacher's validation logits as targets
    agreement: Callable[[nn.Module], dict[str, float]] | None  # the epoch's agreement with the teacher (a store's runs)
    config: dict[str, Any]  # config.json
    hook: BatchHook | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def label(self) -> str:
        """What its log lines call the run: the arm of a student, `teacher` for a teacher."""
        return self.kind if self.kind in NAMED_KINDS else self.cfg.arm

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def train_loader(self) -> StoreLoader:
        return self.loader

    def rank_order(self, epoch: int) -> np.ndarray:
        return self.loader.rank_order(epoch)

    def raw_step(self, epoch: int, pos: np.ndarray, images: torch.Tensor, labels: torch.Tensor, lam: float) -> Any:
        """One step on a raw batch (uint8 images at positions `pos`, as the loader underneath
        reads them): its assembly by the run's loader (augmentation, targets), then the step.
        What `bench` and the GPU benchmarks time."""
        return self.step(self.loader.assemble(epoch, 0, pos, images, labels, lam))


def _check_run(cfg: TrainConfig, ctx: Context) -> None:
    """The checks of a run's own (the loader checks its data)."""
    out = Path(cfg.out)
    if (out / "summary.json").exists() and not cfg.overwrite:
        raise KdstoreError(f"{out} already holds a finished run; pass --overwrite to replace it")
    if cfg.resume and not (out / "checkpoint.pt").is_file():
        raise KdstoreError(f"--resume: {out} has no checkpoint.pt to continue from")
    if ctx.active and cfg.freeze_epochs:
        raise KdstoreError(
            "--freeze-epochs is not supported under torchrun (DDP fixes the trained parameters when it starts)"
        )
    spec = cfg.loader_config().distill_term().spec
    if ctx.active and (spec.module is not None or spec.pairs):
        why = (
            "its learnt temperature is not synchronised across processes"
            if spec.module
            else "it runs two forward passes a step"
        )
        raise KdstoreError(f"--loss {cfg.loss} is not supported under torchrun yet ({why}); train it in one process")


def _model(
    cfg: TrainConfig, data: TrainData, model_name: str, device: torch.device, ctx: Context
) -> tuple[nn.Module, Any, dict]:
    """The bare model (seeded), the network the step runs (DDP-wrapped under torchrun, compiled
    with --compile), and how to rebuild the model."""
    torch.manual_seed(cfg.seed)
    size = cfg.input_size or data.image_size
    model, meta = build_model(model_name, data.num_classes, size, cfg.stem, cfg.pretrained, cfg.pretrained_file)
    for_device(model, device)
    net: Any = model
    if ctx.active:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    return model, net, meta


def _record(run: Run) -> dict[str, Any]:
    """config.json: the options as resolved, and what the run ran with (RUN_RECORD)."""
    return {
        **to_dict(run.cfg),
        "store": run.data.meta.get("store"),
        "amp": run.step.amp_on,
        "loader_used": run.loader.loader_used,
        "variant": run.variant.name,
        "kind": run.kind,
        "model": run.meta,
        "data": run.data.meta,
        "views_used": run.loader.views_used,
        **provenance(),
    }


def _step(cfg: TrainConfig, models: tuple[nn.Module, Any], device: torch.device, batches: int) -> tuple[Step, list]:
    """The run's optimiser (SGD; the head at --head-lr), schedule (cosine over `batches` per epoch)
    and step; also the parameters outside the head (--freeze-epochs). models: (bare, as run)."""
    model, net = models
    head, body = _split_head(model)
    term = cfg.loader_config().distill_term().to(device)
    optimizer = sgd(
        [
            {"params": body, "lr": cfg.lr},
            {"params": head, "lr": cfg.head_lr or cfg.lr},
            {"params": list(term.parameters()), "lr": cfg.lr},  # ctkd's temperature (CTKD trains it with the student)
        ],
        cfg.momentum,
        cfg.weight_decay,
    )
    step = Step(
        model=net,
        optimizer=optimizer,
        scheduler=cosine(optimizer, cfg.epochs * batches),
        device=device,
        tau=cfg.tau,
        loss=term,
        label_smoothing=cfg.label_smoothing,
        input_size=cfg.input_size,
        amp=cfg.amp,
    )
    return step, body


def build_run(
    cfg: TrainConfig,
    data: TrainData,
    model_name: str,
    kind: str,
    hook: BatchHook | None = None,
    teacher: TeacherFn | None = None,
) -> Run:
    """Loaders, model, optimiser and step of a run; nothing is written yet."""
    cfg.validate()
    ctx, device = distributed.init(resolve_device(cfg.device))
    _check_run(cfg, ctx)
    loader = StoreLoader(data, "train", cfg.loader_config(), teacher=teacher)
    model, net, meta = _model(cfg, data, model_name, loader.device, ctx)
    step, body = _step(cfg, (model, net), loader.device, len(loader))
    run = Run(
        cfg=cfg,
        data=data,
        kind=kind,
        variant=loader.variant,
        ctx=ctx,
        device=loader.device,
        model=model,
        meta=meta,
        body=body,
        step=step,
        loader=loader,
        val_loader=loader.val(),
        agreement=_agreement(cfg, data, loader),
        config={},
        hook=hook,
    )
    run.config = _record(run)
    return run


def _agreement(
    cfg: TrainConfig, data: TrainData, loader: StoreLoader
) -> Callable[[nn.Module], dict[str, float]] | None:
    """Agreement and KL with the teacher on the clean training subset (agreement.py; the
    validation split's are measured by `val_metrics`), for runs whose data carry the teacher's logits."""
    positions = agreement.fixed_subset(len(loader.sample_id), cfg.agreement_samples, 0)
    if data.teacher_logits is None or not len(positions):
        return None
    device = loader.device
    inp = ModelInput(
        model=nn.Identity(),
        mean=loader.mean,
        std=loader.std,
        input_size=cfg.input_size or data.image_size,
        device=device,
        amp=cfg.amp,
    )
    rows = Rows(data.teacher_logits, device, cfg.teacher_rows)
    batches = (
        agreement.resident_batches(loader.resident.images)
        if loader.resident is not None
        else agreement.beton_batches(data.train_beton, cfg.workers)
    )

    def measure(model: nn.Module) -> dict[str, float]:
        m = agreement.measure(replace(inp, model=model), batches, positions, rows, loader.ctx)
        return {"agree_train": m["agree"], "kl_train": m["kl"]}

    return measure


def train_epoch(run: Run, epoch: int, lambdas: np.ndarray, bar, task) -> dict[str, float]:
    """One pass over the training loader (this rank's share of the epoch's batches, each checked
    by the loader against the sample ids it read); lambdas[b] is batch b's lambda."""
    sums = torch.zeros(4, dtype=torch.float64, device=run.device)  # loss, ce, kd, correct (sample-weighted)
    n_seen, wait = 0, 0.0
    run.step.model.train()
    t0 = t_wait = time.perf_counter()
    for batch in run.loader:
        wait += time.perf_counter() - t_wait
        if run.hook is not None:
            run.hook(epoch, batch.index, batch.ids.copy(), batch.lam)
        terms = run.step(batch)
        n = len(batch)
        n_seen += n
        sums += torch.stack(
            [terms["loss"].double() * n, terms["ce"].double() * n, terms["kd"].double() * n, terms["correct"].double()]
        )
        bar.update(task, completed=n_seen)  # a number only: no sync with the device
        t_wait = time.perf_counter()
    if run.device.type == "cuda":  # the epoch's queued work counts as training time, not evaluation's
        torch.cuda.synchronize(run.device)
    seconds = time.perf_counter() - t0
    totals = all_reduce_sum(
        torch.cat([sums, torch.tensor([float(n_seen)], dtype=torch.float64, device=run.device)]), run.ctx
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


@torch.inference_mode()
def val_metrics(inp: ModelInput, loader: Any, ctx: Context = Context()) -> dict[str, float]:
    """Validation accuracy and loss (mean CE) of inp.model over the whole split (each rank reads
    its shard in order); where the batches carry the teacher's logits, also the agreement with it
    (agreement.py). Sums stay on the device: the host waits once, at the end."""
    inp.model.eval()
    device = inp.device
    loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    sums = agreement.Sums(device)
    n, with_teacher = 0, False
    for batch in loader:
        logits = inp.logits(batch.images)
        y = batch.labels  # on the device already
        loss += nn.functional.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        if batch.target.logits is not None:
            sums.add(logits, batch.target.logits)
            with_teacher = True
        n += len(y)
    totals = all_reduce_sum(
        torch.stack([loss, correct.double(), torch.tensor(float(n), dtype=torch.float64, device=device)]), ctx
    )
    n_all = max(totals[2].item(), 1.0)
    out = {"val_acc": totals[1].item() / n_all, "val_loss": totals[0].item() / n_all}
    if with_teacher:
        out["agree_val"], out["kl_val"] = sums.result(ctx)
    return out


def run_epoch(run: Run, epoch: int, bar) -> dict[str, Any]:
    """Rescore if due, the epoch's lambdas, one pass of training, then evaluation."""
    cfg, loader = run.cfg, run.loader
    loader.set_epoch(epoch)
    if loader.rescore_due(epoch):
        loader.rescore(run.model, input_size=cfg.input_size, amp=cfg.amp, progress=cfg.progress and run.ctx.main)
    lambdas = loader.lambdas(epoch)
    total = len(loader) * loader.batch_size if loader.drop_last else len(loader.rank_order(epoch))
    task = bar.add_task(f"{run.variant.name} epoch {epoch + 1}/{cfg.epochs}", total=total, info="")
    schedule = loader.schedule
    assert schedule is not None
    row: dict[str, Any] = {
        "epoch": epoch + 1,
        "lr": run.step.scheduler.get_last_lr()[0],
        "scores": schedule.scores.source,
    }
    pace = schedule.fractions(epoch)
    if pace is not None:  # g(t) for every batch of the epoch, for `kdstore report`
        row["pace"] = np.round(pace, 5).tolist()
    row["lam"] = np.round(lambdas, 5).tolist()  # lambda of every batch, for `kdstore report`'s figure
    for p in run.body:  # --freeze-epochs: only the head learns at first (frozen params get no grad)
        p.requires_grad_(epoch >= cfg.freeze_epochs)
    row.update(train_epoch(run, epoch, lambdas, bar, task))
    if run.step.loss is not None:  # what a loss learns (ctkd: its temperature), as the epoch left it
        row.update({f"loss_{k}": v for k, v in run.step.loss.readings().items()})
    t_eval = time.perf_counter()
    inp = ModelInput(
        model=run.model,
        mean=loader.mean,
        std=loader.std,
        input_size=cfg.input_size or run.data.image_size,
        device=run.device,
        amp=cfg.amp,
    )
    row.update(val_metrics(inp, run.val_loader, run.ctx))
    if run.agreement is not None:
        row.update(run.agreement(run.model))
    row["eval_seconds"] = time.perf_counter() - t_eval  # validation and agreement (`seconds` is training alone)
    bar.remove_task(task)  # the epoch's line (epoch_line) takes its place
    run.history.append(row)
    return row


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


def save_epoch(run: Run, row: dict[str, Any]) -> None:
    """After an epoch (main rank): its metrics line, a student scorer's curriculum, the checkpoint."""
    out = run.out
    with writing(out / "metrics.jsonl"), open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    scores = run.loader.schedule.scores if run.loader.schedule is not None else None
    if scores is not None and scores.computed:  # the store holds the teacher's scores; save the run's own
        _save_scores(out, row["epoch"], scores, run.loader.sample_id)
    meta = {
        **run.meta,
        "kind": run.kind,
        "class_names": run.data.meta.get("class_names", []),
        "dataset": run.data.meta.get("dataset", ""),
        "split": run.data.meta.get("split"),
        "normalize_mean": list(run.data.mean),
        "normalize_std": list(run.data.std),
    }
    save_checkpoint(
        out / "checkpoint.pt",
        {
            "state_dict": run.model.state_dict(),
            "optimizer": run.step.optimizer.state_dict(),
            "scheduler": run.step.scheduler.state_dict(),
            "epoch": row["epoch"],
            "meta": meta,
            "config": json.loads(json.dumps(run.config)),
            "history": json.loads(json.dumps(run.history)),
            "rng": {"torch": torch.get_rng_state()},
            "loader": run.loader.state_dict(),
            **({"loss": run.step.loss.state_dict()} if run.step.loss is not None and _learns(run.step.loss) else {}),
        },
    )


def _learns(loss: nn.Module | None) -> bool:
    """Whether a run's distillation loss has learnt parameters (ctkd), kept in its checkpoint."""
    return loss is not None and any(True for _ in loss.parameters())


def summarize(run: Run, model_name: str, seconds: float) -> dict[str, Any]:
    """summary.json (main rank) and the closing line."""
    history = run.history
    summary = {
        "variant": run.variant.name,
        "arm": run.cfg.arm,
        "kind": run.kind,
        "model": model_name,
        "epochs": run.cfg.epochs,
        "seed": run.cfg.seed,
        "final_val_acc": history[-1]["val_acc"],
        "best_val_acc": max(r["val_acc"] for r in history),
        "final_val_loss": history[-1]["val_loss"],
        "seconds": seconds,
        "images_per_s": float(np.median([r["images_per_s"] for r in history])),
        **{k: v for k, v in run.data.meta.items() if k not in ("class_names", "identity")},
        "processes": run.ctx.world,
        "views": run.loader.views_used,
    }
    if run.ctx.main:
        with writing(run.out / "summary.json"):
            write_json(run.out / "summary.json", summary)
        say(
            f"{run.label} {model_name}: val acc {summary['final_val_acc']:.2%} (best {summary['best_val_acc']:.2%}), "
            f"{seconds:.1f} s; wrote {run.out}"
        )
    return summary


def fit(
    cfg: TrainConfig,
    data: TrainData,
    model_name: str,
    kind: str,
    hook: BatchHook | None = None,
    teacher: TeacherFn | None = None,
) -> dict[str, Any]:
    """Train `model_name` on `data` with cfg; writes config.json, metrics.jsonl, summary.json and
    checkpoint.pt under cfg.out. `kind` ("student" or "teacher") goes into the checkpoint.
    `teacher` replaces the cached logits as the KD target (the online-KD baseline)."""
    run = build_run(cfg, data, model_name, kind, hook, teacher)
    caution = run.step.loss.lam_caution(cfg.lam) if run.step.loss is not None else None
    if caution and run.variant.fixed_lambda and run.ctx.main:
        say(f"warning: {caution}")
    start = 0
    if cfg.resume:
        start, run.history = _restore(run.out / "checkpoint.pt", run)
    if run.ctx.main:
        run.out.mkdir(parents=True, exist_ok=True)
        with writing(run.out / "config.json"):
            write_json(run.out / "config.json", run.config)
        with writing(run.out / "metrics.jsonl"):
            (run.out / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in run.history))
    events = EventLog(run.out) if cfg.tensorboard and run.ctx.main else None
    t0 = time.perf_counter()
    with images_progress(cfg.progress and run.ctx.main) as bar:
        for epoch in range(start, cfg.epochs):
            row = run_epoch(run, epoch, bar)
            if run.ctx.main:
                save_epoch(run, row)
                if events is not None:
                    events.epoch(scalars_of(run, row))
                say(epoch_line(run, row, time.perf_counter() - t0, epoch + 1 - start))
    if events is not None:
        events.close()
    summary = summarize(run, model_name, time.perf_counter() - t0)
    del run  # its FFCV loaders and their threads end here, not at interpreter exit
    gc.collect()
    return summary


def _scores_path(out: Path, epoch: int) -> Path:
    return out / "orders" / f"epoch-{epoch:03d}.npz"


def _save_scores(out: Path, epoch: int, scores: Scores, sample_id: np.ndarray) -> None:
    """orders/epoch-NNN.npz: the curriculum (sample ids) and confidences (by .beton position) used in epoch NNN."""
    path = _scores_path(out, epoch)
    with writing(path):
        path.parent.mkdir(exist_ok=True)
        _savez(path, sample_id, scores)


def _savez(path: Path, sample_id: np.ndarray, scores: Scores) -> None:
    np.savez(
        path,
        curriculum=sample_id[scores.curriculum_positions],
        confidence=scores.confidence,
        source=np.array(scores.source),
    )


def _split_head(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(classifier head parameters, the rest), the head as timm's get_classifier() names it."""
    get = getattr(model, "get_classifier", None)
    head_module = get() if callable(get) else None
    head = list(head_module.parameters()) if isinstance(head_module, nn.Module) else []
    ids = {id(p) for p in head}
    return head, [p for p in model.parameters() if id(p) not in ids]


NAMED_KINDS = ("teacher",)  # runs whose log lines carry their kind rather than their arm

# What config.json records beside train's options (build_run): how the run went and what it ran with.
RUN_RECORD = ("loader_used", "kind", "model", "data", "views_used", *PROVENANCE_KEYS)
# What may differ between a run and its resumption: the options that say how it runs (their
# `resume` policy), the loader it ended up with, and the versions and command line it ran with.
RESUMABLE_CHANGES = frozenset(with_policy(TrainConfig, "resume", "may_change")) | {"loader_used", *PROVENANCE_KEYS}


def _restore(path: Path, run: Run) -> tuple[int, list[dict[str, Any]]]:
    """Load a per-epoch checkpoint into the run's model, optimiser, schedule and loader; refuses
    one from a different run. Returns the epoch to start from and the history so far."""
    ckpt = load_checkpoint(path)
    needed = {"config", "state_dict", "optimizer", "scheduler", "epoch", "rng"}
    if not isinstance(ckpt, dict) or not needed <= set(ckpt):
        raise KdstoreError(f"--resume: {path} is not a per-epoch checkpoint of `kdstore train` (a bare state dict?)")
    saved = ckpt.get("config", {})
    changed = differing(
        TrainConfig.recorded(saved) if isinstance(saved, dict) else {}, run.config, ignore=RESUMABLE_CHANGES
    )
    if changed:
        raise KdstoreError(f"--resume: {path} was saved by a run with different {', '.join(changed)}")
    try:
        run.model.load_state_dict(ckpt["state_dict"])
        run.step.optimizer.load_state_dict(ckpt["optimizer"])
        run.step.scheduler.load_state_dict(ckpt["scheduler"])
        if _learns(run.step.loss):
            assert run.step.loss is not None
            run.step.loss.load_state_dict(ckpt["loss"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise KdstoreError(
            f"--resume: {path} holds other weights than this run's model ({str(e).splitlines()[0][:120]})"
        ) from None
    torch.set_rng_state(ckpt["rng"]["torch"])
    state = ckpt.get("loader")
    if state is None:  # saved before the loader kept its own state: the epoch and augmentation's
        state = {**run.loader.state_dict(), "epoch": int(ckpt["epoch"]), "batch": 0}
        state.update(augment=ckpt["rng"].get("augment"), scores=None)
    run.loader.load_state_dict(state)
    return int(ckpt["epoch"]), list(ckpt.get("history", []))


def run(cfg: TrainConfig, *, hook: BatchHook | None = None) -> dict[str, Any]:
    """Train a student from cfg.store (default: the one store under stores/); returns the summary."""
    cfg.validate()
    if not cfg.store:
        cfg = replace(cfg, store=str(default_store()))
        say(f"using the store {cfg.store}")
    if cfg.verify:
        problems = verify(str(cfg.store))
        if problems:
            raise KdstoreError(
                f"--verify: {problems[0]}" + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else "")
            )
    store = Store.open(str(cfg.store))
    return fit(cfg, data_from_store(store), cfg.student, "student", hook)


def run_online(
    cfg: TrainConfig, store: Store, checkpoint: str | None = None, teacher_name: str | None = None
) -> dict[str, Any]:
    """Train a student with online KD (the teacher runs on every batch) through the same loop and
    step as `run`; a baseline for benchmarks, not part of the offline workflow."""
    spec = TeacherSpec(teacher=teacher_name, checkpoint=checkpoint, input_size=int(store.attrs["input_size"]))
    loaded = load_teacher(spec, store.num_classes, int(store.attrs["image_size"]))
    device = resolve_device(cfg.device)
    for_device(loaded.model, device)
    data = data_from_store(store)
    data.meta["online_teacher"] = loaded.meta["model"]
    return fit(
        cfg,
        data,
        cfg.student,
        "student",
        teacher=online_teacher(loaded.model, int(loaded.meta["input_size"]), device, cfg.amp),
    )
