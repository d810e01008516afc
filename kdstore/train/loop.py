"""`kdstore train` (students from a store) and `kdstore teacher`: one training loop for both.

The loop never asks which variant, pacing or scorer it runs: a `schedule.Schedule` gives each
epoch's positions (handed to FFCV's Loader), reliance.POLICIES a lambda per batch; teacher
logits are looked up by the .beton position of each image. No teacher model is ever built here."""

from __future__ import annotations

import functools
import gc
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from kdstore.cache.inference import ModelInput, ScorePass, clean_forward, score_beton
from kdstore.config import (
    PROVENANCE_KEYS,
    differing,
    provenance,
    to_dict,
    with_policy,
    write_json,
)
from kdstore.data.augment import augmentation_for
from kdstore.data.beton import make_loader, read_int_fields
from kdstore.data.in_memory import (
    ResidentLoader,
    batch_sizes,
    decoded_bytes,
    fits,
    holds,
    resident_split,
)
from kdstore.errors import KdstoreError
from kdstore.indices import Positions
from kdstore.method.kd_weight import POLICIES
from kdstore.method.orderings import SCORERS, Schedule, Scores
from kdstore.method.variants import Variant, get_variant
from kdstore.models.build import build_model
from kdstore.models.checkpoints import load_checkpoint, save_checkpoint
from kdstore.models.teachers import TeacherSpec, load_teacher
from kdstore.runtime import distributed
from kdstore.runtime.console import clock, images_progress, say
from kdstore.runtime.devices import resolve_device
from kdstore.runtime.distributed import Context, all_reduce_sum
from kdstore.runtime.files import writing
from kdstore.runtime.precision import for_device
from kdstore.runtime.transfer import upload
from kdstore.store.mixes import LabelMix, resident_partners, view_label_mix
from kdstore.store.rows import Rows
from kdstore.store.store import Store, default_store, verify
from kdstore.store.views import Views
from kdstore.train import agreement
from kdstore.train.config import TrainConfig
from kdstore.train.prepare import (
    VIEW_MODES,
    Prepare,
    no_augment,
    random_augment,
    replay_views,
)
from kdstore.train.step import Step, cosine, sgd
from kdstore.train.teacher_targets import (
    TeacherFn,
    cached_teacher,
    online_teacher,
    view_teacher,
)
from kdstore.train.tensorboard import EventLog

# on_batch(epoch, batch index, sample ids (B,), lambda): observes what the loop trained on.
BatchHook = Callable[[int, int, np.ndarray, float], None]


@dataclass(kw_only=True)
class TrainData:
    """What the loop needs from a store (or from a bare dataset, for a teacher)."""

    train_beton: Path
    val_beton: Path
    num_classes: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    teacher_logits: np.ndarray | None = None  # (N, C) by .beton position; None without a teacher
    val_teacher_logits: np.ndarray | None = None  # (N_val, C) the teacher on the validation split
    scores: Scores | None = None  # the teacher's confidence and curriculum; None without a teacher
    views: Views | None = None  # the store's augmented views with their teacher logits, if any
    meta: dict[str, Any] = field(default_factory=dict)  # provenance saved with the run
    store: Store | None = None  # the open store these come from: its held files live as long as the data


def data_from_store(store: Store) -> TrainData:
    t = store.train
    return TrainData(
        train_beton=store.beton("train"),
        val_beton=store.beton("val"),
        num_classes=store.num_classes,
        image_size=int(store.attrs["image_size"]),
        mean=tuple(store.attrs["normalize_mean"]),
        std=tuple(store.attrs["normalize_std"]),
        teacher_logits=t.logits,
        val_teacher_logits=store.val.logits,
        scores=Scores(t.confidence, t.curriculum_positions()),
        views=t.views,
        meta={
            "store": str(store.path.resolve()),
            "dataset": store.attrs["dataset"],
            "dataset_fingerprint": store.attrs["dataset_fingerprint"],
            "teacher": store.attrs["teacher"],
            "class_names": store.attrs["class_names"],
            "identity": store.identity(),
        },
        store=store,
    )


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
    schedule: Schedule
    sample_id: np.ndarray  # (N,) id of each .beton position
    labels: np.ndarray  # (N,)
    train_loader: Any
    val_loader: Any
    aug: torch.Generator | None  # the random augmentation's generator (checkpointed)
    agreement: Callable[[nn.Module], dict[str, float]] | None  # the epoch's agreement with the teacher (a store's runs)
    config: dict[str, Any]  # config.json
    views_used: dict[str, Any]
    hook: BatchHook | None = None
    val_rows: Rows | None = None  # the teacher's validation logits (agreement on val, measured in `evaluate`)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def label(self) -> str:
        """What its log lines call the run: the arm of a student, `teacher` for a teacher."""
        return self.kind if self.kind in NAMED_KINDS else self.cfg.arm

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def val_positions(self) -> np.ndarray | None:
        """This rank's validation positions, in the order its val loader reads them."""
        n_val = None if self.data.val_teacher_logits is None else len(self.data.val_teacher_logits)
        return None if n_val is None else np.arange(self.ctx.rank, n_val, self.ctx.world)

    def rank_order(self, epoch: int) -> np.ndarray:
        return _rank_order(self.schedule, self.cfg.batch_size, self.ctx, epoch)


def _rank_order(schedule: Schedule, batch_size: int, ctx: Context, epoch: int) -> np.ndarray:
    """This rank's positions of the epoch's global order (what its FFCV loader visits)."""
    return distributed.rank_positions(schedule.order(epoch), batch_size, ctx.rank, ctx.world)


def _batch_sizes(order_fn: Callable[[int], np.ndarray], batch_size: int, drop_last: bool, epoch: int) -> list[int]:
    """The sizes of this rank's batches in `epoch`, in order (what its loader yields)."""
    return batch_sizes(len(order_fn(epoch)), batch_size, drop_last)


def _check_run(cfg: TrainConfig, data: TrainData, variant: Variant, teacher: TeacherFn | None) -> bool:
    """The checks that need no model or process group; returns whether views are replayed."""
    out = Path(cfg.out)
    if (out / "summary.json").exists() and not cfg.overwrite:
        raise KdstoreError(f"{out} already holds a finished run; pass --overwrite to replace it")
    if cfg.resume and not (out / "checkpoint.pt").is_file():
        raise KdstoreError(f"--resume: {out} has no checkpoint.pt to continue from")
    if variant.needs_teacher and data.teacher_logits is None and teacher is None:
        raise KdstoreError(f"variant {variant.name} needs teacher logits from a store")
    mode = VIEW_MODES[cfg.views]
    replay = mode.replay(data.views is not None, cfg.augment)
    if mode.needs_views and data.views is None:
        raise KdstoreError("--views replay: the store has no views (make one with `kdstore cache --views K`)")
    views = data.views
    if replay and views is not None and views.sample and cfg.tau != views.sample_tau:
        raise KdstoreError(
            f"--tau {cfg.tau} differs from the temperature the store's views were sampled at "
            f"({views.sample_tau}); "
            f"pass --tau {views.sample_tau} (or --views clean)"
        )
    return replay


def _check_batches(cfg: TrainConfig, n: int, ctx: Context) -> None:
    if cfg.batch_size % ctx.world:
        raise KdstoreError(f"--batch-size {cfg.batch_size} is not divisible by the {ctx.world} torchrun processes")
    if cfg.batch_size > n:
        raise KdstoreError(f"--batch-size {cfg.batch_size} is larger than the {n} training samples")
    if cfg.batch_size // ctx.world < 2:
        raise KdstoreError(f"--batch-size {cfg.batch_size} leaves fewer than 2 samples per process (BatchNorm needs 2)")
    if ctx.active and cfg.freeze_epochs:
        raise KdstoreError(
            "--freeze-epochs is not supported under torchrun (DDP fixes the trained parameters when it starts)"
        )


def _prepare(
    cfg: TrainConfig,
    data: TrainData,
    replay: bool,
    device: torch.device,
    aug: torch.Generator | None,
    train_loader: Any,
    order_fn: Callable[[int], np.ndarray],
) -> tuple[Prepare, LabelMix | None]:
    """How a batch is prepared and (mixed views) the partner labels of its CE term (prepare.py)."""
    if not replay:
        sizes = functools.partial(_batch_sizes, order_fn, train_loader.batch_size, train_loader.drop_last)
        return (
            random_augment(augmentation_for(data.image_size), data.image_size, aug, device, sizes)
            if aug is not None
            else no_augment()
        ), None
    assert data.views is not None
    if not data.views.mix:
        return replay_views(data.views, cfg.seed, device, cfg.teacher_rows), None
    split = getattr(
        train_loader, "split", None
    )  # the partner images: the resident training split (held for this when the loader streams)
    if split is None:
        if not fits(decoded_bytes(data.train_beton, data.image_size), device):
            raise KdstoreError(
                "the store's views are mixed: their partner images must be held in memory, and this training split "
                "does not fit (train with --views clean)"
            )
        split = resident_split(data.train_beton, device, cfg.workers)
    partners = resident_partners(
        split.images, torch.tensor(data.mean, device=device), torch.tensor(data.std, device=device)
    )
    label_mix = view_label_mix(data.views, split.labels, device, cfg.teacher_rows)
    return replay_views(data.views, cfg.seed, device, cfg.teacher_rows, partners), label_mix


def _teacher_fn(
    cfg: TrainConfig,
    data: TrainData,
    replay: bool,
    device: torch.device,
    needs_teacher: bool,
    teacher: TeacherFn | None,
) -> TeacherFn | None:
    """Where a batch's teacher targets come from (teacher_targets.py): `teacher` when given (online
    KD), else the store's views or clean logits; None when the variant needs no teacher."""
    if not needs_teacher:
        return None
    if teacher is not None:
        return teacher
    if replay:
        assert data.views is not None
        return view_teacher(data.views, data.num_classes, device, cfg.teacher_rows)
    assert data.teacher_logits is not None
    return cached_teacher(data.teacher_logits, device, cfg.teacher_rows)


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


def _schedule(cfg: TrainConfig, data: TrainData, variant: Variant, labels: np.ndarray, ctx: Context) -> Schedule:
    n = len(labels)
    scores = data.scores or Scores(np.ones(n, dtype=np.float32), Positions(np.arange(n)), "none")
    return Schedule(
        ordering=variant.ordering,
        pacing=cfg.pacing,
        params=cfg.pacing_params,
        labels=labels,
        batch_size=cfg.batch_size,
        length=distributed.usable_length(n, cfg.batch_size, ctx.world),
        epochs=cfg.epochs,
        seed=cfg.seed,
        scores=scores,
    )


def _views_used(views: Views | None) -> dict[str, Any]:
    """What the run replays: the store's views (count and storage), or none (clean logits)."""
    if views is None:
        return {"mode": "clean"}
    return {"mode": "replay", "count": views.count, "topk": views.topk, "sample": views.sample, "mix": views.mix}


def _record(run: Run, loader_used: str) -> dict[str, Any]:
    """config.json: the options as resolved, and what the run ran with (RUN_RECORD)."""
    return {
        **to_dict(run.cfg),
        "store": run.data.meta.get("store"),
        "amp": run.step.amp_on,
        "loader_used": loader_used,
        "variant": run.variant.name,
        "kind": run.kind,
        "model": run.meta,
        "data": run.data.meta,
        "views_used": run.views_used,
        **provenance(),
    }


def _step(
    cfg: TrainConfig,
    data: TrainData,
    models: tuple[nn.Module, Any],
    device: torch.device,
    batches: int,
    targets: tuple[Prepare, TeacherFn | None, LabelMix | None],
) -> tuple[Step, list[nn.Parameter]]:
    """The run's optimiser (SGD; the head at --head-lr), schedule (cosine over `batches` per epoch)
    and step; also the parameters outside the head (--freeze-epochs). models: (bare, as run)."""
    model, net = models
    head, body = _split_head(model)
    optimizer = sgd(
        [{"params": body, "lr": cfg.lr}, {"params": head, "lr": cfg.head_lr or cfg.lr}], cfg.momentum, cfg.weight_decay
    )
    prepare, teacher, label_mix = targets
    step = Step(
        model=net,
        optimizer=optimizer,
        scheduler=cosine(optimizer, cfg.epochs * batches),
        prepare=prepare,
        teacher=teacher,
        mean=torch.tensor(data.mean, device=device),
        std=torch.tensor(data.std, device=device),
        device=device,
        tau=cfg.tau,
        label_smoothing=cfg.label_smoothing,
        input_size=cfg.input_size,
        amp=cfg.amp,
        label_mix=label_mix,
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
    """Model, loaders, schedule, optimiser and step of a run; nothing is written yet."""
    cfg.validate()
    variant = get_variant(cfg.variant)
    replay = _check_run(cfg, data, variant, teacher)
    ctx, device = distributed.init(resolve_device(cfg.device))
    fields = read_int_fields(data.train_beton)
    n = len(fields["sample_id"])
    _check_batches(cfg, n, ctx)
    distributed.agree(ctx, "the data", data.meta.get("identity", str(data.train_beton)))
    model, net, meta = _model(cfg, data, model_name, device, ctx)
    drop_last = ctx.world == 1 and n % cfg.batch_size == 1 and n > 1  # a lone last sample would break BatchNorm
    schedule = _schedule(cfg, data, variant, fields["label"], ctx)
    order_fn = functools.partial(_rank_order, schedule, cfg.batch_size, ctx)
    train_loader, val_loader, loader_used = _loaders(cfg, data, device, order_fn, drop_last, ctx)
    aug = torch.Generator().manual_seed(cfg.seed + 1_000_003 * ctx.rank) if cfg.augment else None
    prepare, label_mix = _prepare(cfg, data, replay, device, aug, train_loader, order_fn)
    targets = (prepare, _teacher_fn(cfg, data, replay, device, variant.needs_teacher, teacher), label_mix)
    step, body = _step(cfg, data, (model, net), device, len(train_loader), targets)
    val_rows = Rows(data.val_teacher_logits, device, cfg.teacher_rows) if data.val_teacher_logits is not None else None
    run = Run(
        cfg=cfg,
        data=data,
        kind=kind,
        variant=variant,
        ctx=ctx,
        device=device,
        model=model,
        meta=meta,
        body=body,
        step=step,
        schedule=schedule,
        sample_id=fields["sample_id"],
        labels=fields["label"],
        train_loader=train_loader,
        val_loader=val_loader,
        aug=aug,
        agreement=_agreement(cfg, data, device, ctx, n, train_loader),
        config={},
        views_used=_views_used(data.views if replay else None),
        hook=hook,
        val_rows=val_rows,
    )
    run.config = _record(run, loader_used)
    return run


def _loaders(
    cfg: TrainConfig,
    data: TrainData,
    device: torch.device,
    order_fn: Callable[[int], np.ndarray],
    drop_last: bool,
    ctx: Context,
) -> tuple[Any, Any, str]:
    """The train and val loaders: both splits resident on the device (resident.py) when
    --loader device, or auto and they fit; else FFCV's Loader. Returns which was used."""
    n_val = len(read_int_fields(data.val_beton)["sample_id"])
    val_positions = np.arange(ctx.rank, n_val, ctx.world)
    local = cfg.batch_size // ctx.world
    if holds(cfg.loader, (data.train_beton, data.val_beton), data.image_size, device):
        train, val = (
            resident_split(data.train_beton, device, cfg.workers),
            resident_split(data.val_beton, device, cfg.workers),
        )
        return (
            ResidentLoader(train, local, order_fn, drop_last),
            ResidentLoader(val, 512, indices=val_positions),
            "device",
        )
    return (
        make_loader(data.train_beton, local, cfg.workers, order_fn, drop_last),
        make_loader(data.val_beton, 512, cfg.workers, indices=val_positions),
        "ffcv",
    )


def _agreement(
    cfg: TrainConfig, data: TrainData, device: torch.device, ctx: Context, n: int, train_loader: Any
) -> Callable[[nn.Module], dict[str, float]] | None:
    """Agreement and KL with the teacher on the clean training subset (agreement.py; the
    validation split's are measured by `evaluate`), for runs whose data carry the teacher's logits."""
    positions = agreement.fixed_subset(n, cfg.agreement_samples, 0)
    if data.teacher_logits is None or not len(positions):
        return None
    inp = ModelInput(
        model=nn.Identity(),
        mean=torch.tensor(data.mean, device=device),
        std=torch.tensor(data.std, device=device),
        input_size=cfg.input_size or data.image_size,
        device=device,
        amp=cfg.amp,
    )
    rows = Rows(data.teacher_logits, device, cfg.teacher_rows)
    resident = getattr(train_loader, "split", None)
    batches = (
        agreement.resident_batches(resident.images)
        if resident is not None
        else agreement.beton_batches(data.train_beton, cfg.workers)
    )

    def measure(model: nn.Module) -> dict[str, float]:
        m = agreement.measure(replace(inp, model=model), batches, positions, rows, ctx)
        return {"agree_train": m["agree"], "kl_train": m["kl"]}

    return measure


def train_epoch(run: Run, epoch: int, lambdas: np.ndarray, bar, task) -> dict[str, float]:
    """One pass over the train loader, which visits this rank's positions of the epoch's order;
    lambdas[b] is the lambda of (global) batch b. Each batch's positions are checked against the
    sample ids FFCV returned, so a teacher row can never belong to another image."""
    order, local = run.rank_order(epoch), run.train_loader.batch_size
    sums = torch.zeros(4, dtype=torch.float64, device=run.device)  # loss, ce, kd, correct (sample-weighted)
    n_seen, wait = 0, 0.0
    run.step.model.train()
    t0 = t_wait = time.perf_counter()
    for b, (images, labels, ids) in enumerate(run.train_loader):
        wait += time.perf_counter() - t_wait
        pos = order[b * local : b * local + len(ids)]
        ids_np = ids.numpy()
        if not np.array_equal(run.sample_id[pos], ids_np):
            raise KdstoreError(
                f"internal error: batch {b} of epoch {epoch + 1} holds other samples than its teacher rows"
            )
        if run.hook is not None:
            run.hook(epoch, b, ids_np.copy(), float(lambdas[b]))
        terms = run.step(epoch, pos, images, labels, float(lambdas[b]))
        n = len(ids_np)
        n_seen += n
        sums += torch.stack([terms["loss"] * n, terms["ce"] * n, terms["kd"] * n, terms["correct"]]).double()
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
    used = lambdas[: len(run.train_loader)]
    return {
        "train_loss": loss,
        "train_ce": ce,
        "train_kd": kd,
        "train_acc": correct,
        "lam_mean": float(used.mean()),
        "lam_min": float(used.min()),
        "lam_max": float(used.max()),
        "seconds": seconds,
        "images_per_s": n_all / max(seconds, 1e-9),
        "data_wait_frac": wait / max(seconds, 1e-9),
    }


@torch.inference_mode()
def val_metrics(
    inp: ModelInput,
    loader: Any,
    ctx: Context = Context(),
    teacher_rows: Callable[[np.ndarray], torch.Tensor] | None = None,
    positions: np.ndarray | None = None,
) -> dict[str, float]:
    """Validation accuracy and loss (mean CE) of inp.model over the whole split (each rank reads its
    shard, `positions`, in order); with the teacher's rows, also the agreement with it
    (agreement.py). Sums stay on the device: the host waits once, at the end."""
    inp.model.eval()
    device = inp.device
    loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    sums = agreement.Sums(device)
    n = 0
    for images, labels, _ in loader:
        logits = inp(images)
        y = upload(labels, device)
        loss += nn.functional.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        if teacher_rows is not None:
            assert positions is not None
            sums.add(logits, teacher_rows(positions[n : n + len(y)]))
        n += len(y)
    totals = all_reduce_sum(
        torch.stack([loss, correct.double(), torch.tensor(float(n), dtype=torch.float64, device=device)]), ctx
    )
    n_all = max(totals[2].item(), 1.0)
    out = {"val_acc": totals[1].item() / n_all, "val_loss": totals[0].item() / n_all}
    if teacher_rows is not None:
        out["agree_val"], out["kl_val"] = sums.result(ctx)
    return out


def run_epoch(run: Run, epoch: int, bar) -> dict[str, Any]:
    """Rescore if due, the epoch's order and lambdas, one pass of training, then evaluation."""
    cfg, schedule = run.cfg, run.schedule
    if SCORERS[cfg.scorer](epoch, cfg.rescore_every):
        schedule.set_scores(
            score_train_set(run.model, run.data, run.labels, cfg, run.device, run.ctx, f"student@{epoch + 1}")
        )
    order = schedule.order(epoch)  # global: lambda per global batch is the same on every rank
    confidence = schedule.scores.confidence
    lambdas = POLICIES[run.variant.policy](confidence[order], cfg.batch_size, cfg.lam, float(confidence.max()))
    local = cfg.batch_size // run.ctx.world
    total = len(run.train_loader) * local if run.train_loader.drop_last else len(run.rank_order(epoch))
    task = bar.add_task(f"{run.variant.name} epoch {epoch + 1}/{cfg.epochs}", total=total, info="")
    row: dict[str, Any] = {
        "epoch": epoch + 1,
        "lr": run.step.scheduler.get_last_lr()[0],
        "scores": schedule.scores.source,
    }
    pace = schedule.fractions(epoch)
    if pace is not None:  # g(t) for every batch of the epoch, for `kdstore report`
        row["pace"] = np.round(pace, 5).tolist()
    row["lam"] = np.round(
        lambdas[: len(run.train_loader)], 5
    ).tolist()  # lambda of every batch, for `kdstore report`'s figure
    for p in run.body:  # --freeze-epochs: only the head learns at first (frozen params get no grad)
        p.requires_grad_(epoch >= cfg.freeze_epochs)
    row.update(train_epoch(run, epoch, lambdas, bar, task))
    t_eval = time.perf_counter()
    inp = ModelInput(
        model=run.model,
        mean=run.step.mean,
        std=run.step.std,
        input_size=cfg.input_size or run.data.image_size,
        device=run.device,
        amp=cfg.amp,
    )
    row.update(val_metrics(inp, run.val_loader, run.ctx, run.val_rows, run.val_positions))
    if run.agreement is not None:
        row.update(run.agreement(run.model))
    row["eval_seconds"] = (
        time.perf_counter() - t_eval
    )  # validation and agreement (`seconds` is the training pass alone)
    bar.remove_task(task)  # the epoch's line (epoch_line) takes its place
    run.history.append(row)
    return row


def epoch_line(run: Run, row: dict[str, Any], elapsed: float, epochs_timed: int) -> str:
    """The log line of a finished epoch, with the run's ETA from the epochs timed so far."""
    left = run.cfg.epochs - row["epoch"]
    eta = clock(elapsed / max(epochs_timed, 1) * left)
    return (
        f"{run.label} seed {run.cfg.seed} epoch {row['epoch']}/{run.cfg.epochs}: loss {row['train_loss']:.4f} "
        f"(ce {row['train_ce']:.4f}, kd {row['train_kd']:.4f}), train acc {row['train_acc']:.2%}, val acc "
        f"{row['val_acc']:.2%}, "
        f"val loss {row['val_loss']:.4f}, "
        + (f"agreement {row['agree_val']:.2%} (KL {row['kl_val']:.3f}), " if "agree_val" in row else "")
        + f"lambda {row['lam_mean']:.3f}, lr {row['lr']:.4g}, {row['images_per_s']:,.0f} img/s, "
        f"{row['seconds']:.1f} s, ETA {eta}"
    )


def save_epoch(run: Run, row: dict[str, Any]) -> None:
    """After an epoch (main rank): its metrics line, a student scorer's curriculum, the checkpoint."""
    out = run.out
    with writing(out / "metrics.jsonl"), open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    if run.schedule.scores.computed:  # the store holds the teacher's scores; save the run's own
        _save_scores(out, row["epoch"], run.schedule.scores, run.sample_id)
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
            "rng": {
                "torch": torch.get_rng_state(),
                **({"augment": run.aug.get_state()} if run.aug is not None else {}),
            },
        },
    )


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
        "views": run.views_used,
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
    start = 0
    if cfg.resume:
        start, run.history = _restore(
            run.out / "checkpoint.pt", run.config, run.model, run.step.optimizer, run.step.scheduler, run.aug
        )
        run.train_loader.next_epoch = start  # FFCV asks the order for this epoch next
        saved = _load_scores(run.out, start, run.sample_id)  # a student scorer's last curriculum
        if saved is not None:
            run.schedule.set_scores(saved)
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
                    events.epoch(row)
                say(epoch_line(run, row, time.perf_counter() - t0, epoch + 1 - start))
    if events is not None:
        events.close()
    summary = summarize(run, model_name, time.perf_counter() - t0)
    del run  # its FFCV loaders and their threads end here, not at interpreter exit
    gc.collect()
    return summary


def score_train_set(
    model: nn.Module,
    data: TrainData,
    labels: np.ndarray,
    cfg: TrainConfig,
    device: torch.device,
    ctx: Context,
    source: str,
) -> Scores:
    """One inference pass of `model` over the clean training images (each rank scores a shard of
    whole batches; the shards are summed into the full table), then the curriculum rules."""
    n = len(labels)
    lo, hi = distributed.shard(n, 512, ctx.rank, ctx.world)
    inp = ModelInput(
        model=model,
        mean=torch.tensor(data.mean, device=device),
        std=torch.tensor(data.std, device=device),
        input_size=cfg.input_size or data.image_size,
        device=device,
        amp=cfg.amp,
    )
    job = ScorePass(
        beton=data.train_beton,
        batch_size=512,
        workers=cfg.workers,
        label=f"scoring ({source})",
        progress=cfg.progress and ctx.main,
        positions=np.arange(lo, hi),
    )
    scored = score_beton(clean_forward(inp), job)
    table = torch.zeros(
        2, n, dtype=torch.float64, device=device
    )  # confidence, correct: (N,) each, not the (N, C) logits
    if hi > lo:
        table[0, lo:hi] = torch.from_numpy(scored["confidence"].astype(np.float64)).to(device)
        table[1, lo:hi] = torch.from_numpy(scored["correct"].astype(np.float64)).to(device)
    confidence, correct = all_reduce_sum(table, ctx).cpu().numpy()
    return Scores.from_predictions(confidence.astype(np.float32), correct > 0.5, labels, source)


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


def _load_scores(out: Path, epoch: int, sample_id: np.ndarray) -> Scores | None:
    path = _scores_path(out, epoch)
    if not path.is_file():
        return None
    with np.load(path) as z:
        by_id = np.argsort(sample_id)
        rows = by_id[np.searchsorted(sample_id, z["curriculum"], sorter=by_id)]
        return Scores(z["confidence"], Positions(rows.astype(np.int64)), str(z["source"]), True)


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


def _restore(
    path: Path, config: dict[str, Any], model: nn.Module, optimizer, scheduler, aug: torch.Generator | None
) -> tuple[int, list[dict[str, Any]]]:
    """Load a per-epoch checkpoint into the run's state; refuses one from a different run."""
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or not {"config", "state_dict", "optimizer", "scheduler", "epoch", "rng"} <= set(
        ckpt
    ):
        raise KdstoreError(f"--resume: {path} is not a per-epoch checkpoint of `kdstore train` (a bare state dict?)")
    saved = ckpt.get("config", {})
    changed = differing(saved, config, ignore=RESUMABLE_CHANGES)
    if changed:
        raise KdstoreError(f"--resume: {path} was saved by a run with different {', '.join(changed)}")
    try:
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise KdstoreError(
            f"--resume: {path} holds other weights than this run's model ({str(e).splitlines()[0][:120]})"
        ) from None
    torch.set_rng_state(ckpt["rng"]["torch"])
    if aug is not None:
        aug.set_state(ckpt["rng"]["augment"])
    return int(ckpt["epoch"]), list(ckpt.get("history", []))


def run(cfg: TrainConfig, hook: BatchHook | None = None) -> dict[str, Any]:
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
