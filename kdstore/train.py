"""`kdstore train` (students from a store) and `kdstore teacher`: one training loop for both.

The loop never asks which variant, pacing or scorer it runs: a `schedule.Schedule` gives each
epoch's positions (handed to FFCV's Loader), reliance.POLICIES a lambda per batch; teacher
logits are looked up by the .beton position of each image. No teacher model is ever built here.
"""
from __future__ import annotations

import functools
import gc
import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from .arrays import upload
from .augment import augmentation_for, normalize, resize
from .precision import autocast, device_layout, for_device
from .step import Step, cosine, sgd
from .targets import (PLACEMENTS, LabelMix, Prepare, Rows, TeacherFn, cached_teacher, no_augment, online_teacher, random_augment, replay_views,
                      resident_partners, view_label_mix, view_teacher)
from .config import differing, opt, provenance, to_dict, write_json
from . import agreement, distributed
from .distributed import Context, all_reduce_sum
from .errors import KdstoreError
from .events import EventLog
from .ffcv_files import make_loader, read_int_fields
from .inference import clean_forward, score_beton
from .models import DEVICES, STEMS, TeacherSpec, build_model, load_checkpoint, load_teacher, resolve_device, save_checkpoint
from .pacing import PACINGS, PacingParams
from .progress import clock, images_progress, say
from .reliance import POLICIES
from .resident import LOADERS, ResidentLoader, batch_sizes, decoded_bytes, fits, holds, resident_split
from .schedule import SCORERS, Schedule, Scores, conflict
from .views import VIEW_MODES, Views
from .store import Store, default_store, enclosing_store, verify
from .variants import ALIASES, VARIANTS, Variant, get_variant

# on_batch(epoch, batch index, sample ids (B,), lambda): observes what the loop trained on.
BatchHook = Callable[[int, int, np.ndarray, float], None]



@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on; saved as config.json and inside checkpoint.pt."""

    out: str = opt(help="Run directory (config.json, metrics.jsonl, summary.json, checkpoint.pt).", required=True, path=True)
    store: str | None = opt(help="Store written by `kdstore cache` (default: the one store under stores/).", path=True)
    variant: str = opt("kd", "The variant (METHOD.md); random-cl is the control.", choices=lambda: list(VARIANTS) + list(ALIASES))
    student: str = opt("cifar_resnet8", "Any timm model name (kdstore registers the CIFAR networks).")
    stem: str = opt("auto", "Stem of timm ResNets on small images; auto = cifar at 64 px and below.", choices=STEMS)
    pretrained: bool = opt(False, "Start from timm's pretrained weights.")
    pretrained_file: str | None = opt(help="A local timm/torchvision weights file (implies --pretrained).", path=True)
    input_size: int | None = opt(help="Train at this size (images resized after augmentation); default: the stored size.")
    epochs: int = opt(30, "Epochs.")
    batch_size: int = opt(128, "Global batch size (split across torchrun processes).")
    lr: float = opt(0.05, "Peak SGD learning rate, cosine-annealed per step to 0.")
    head_lr: float | None = opt(help="Learning rate of the classifier head (fine-tuning); default: --lr.")
    freeze_epochs: int = opt(0, "Train only the classifier head for this many first epochs.")
    momentum: float = opt(0.9, "SGD Nesterov momentum.")
    weight_decay: float = opt(5e-4, "SGD weight decay.")
    label_smoothing: float = opt(0.0, "Label smoothing of the CE term.")
    tau: float = opt(4.0, "KD temperature.")
    lam: float = opt(0.9, "KD weight of the fixed-lambda variants.")
    pacing: str = opt("none", "Draw each batch from the easiest g(t) of the order.", choices=lambda: list(PACINGS))
    pacing_a: float = opt(PacingParams.a, "Fraction of training after which all data is used.")
    pacing_b: float = opt(PacingParams.b, "Fraction of the order used at the start.")
    pacing_growth: float = opt(PacingParams.growth, "fixed-exp: growth factor per stair.")
    pacing_step_length: int | None = opt(help="fixed-exp: steps per stair (default: reach all data at a).")
    scorer: str = opt("teacher", "Who scores the curriculum (student: its own snapshots).", choices=lambda: list(SCORERS))
    rescore_every: int = opt(1, "With --scorer student: rebuild the curriculum every E epochs.")
    seed: int = opt(0, "Model init, shuffling, augmentation.")
    workers: int = opt(0, "FFCV decoding threads; 0: one per core (shared among torchrun's processes).")
    device: str = opt("auto", "auto: cuda when available, else cpu.", choices=DEVICES)
    augment: bool = opt(True, "Random crop + flip.")
    views: str = opt("auto", "replay: augment with the store's views and distil from their logits; clean: the clean-image logits; "
                             "auto: replay when the store has views.", choices=lambda: list(VIEW_MODES))
    amp: bool = opt(True, "Mixed precision on CUDA (bf16 where supported); ignored on the CPU.")
    compile: bool = opt(False, "torch.compile the student (opt-in: the first steps compile; worth it for long runs on a GPU).")
    agreement_samples: int = opt(10_000, "Clean training images (a fixed subset, the same for every run) on which each epoch measures the "
                                         "student's agreement and KL with the teacher; 0: validation only.")
    loader: str = opt("auto", "device: decode the images once into device memory (host memory on the CPU) and gather batches there; "
                              "ffcv: stream them through FFCV's Loader; auto: device when they fit half the free memory. Batches are "
                              "identical either way.", choices=LOADERS)
    teacher_rows: str = opt("auto", "Where teacher rows are gathered: device (the table uploaded once), mapped (read from the store file); "
                                    "auto: device on CUDA when the table fits a quarter of free memory, else mapped. Results are identical.",
                            choices=PLACEMENTS)
    verify: bool = opt(False, "First hash every store file against its manifest, as `kdstore verify` does (an open always checks "
                              "teacher.h5's sha256; this also finds damaged .beton pixels).")
    overwrite: bool = opt(False, "Replace a finished run in --out.")
    resume: bool = opt(False, "Continue from --out/checkpoint.pt (saved after every epoch).")
    progress: bool = opt(True, "Progress bars.")
    tensorboard: bool = opt(True, "TensorBoard event files in --out (`tensorboard --logdir runs`).")

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 2, f"--batch-size must be >= 2 (BatchNorm cannot train on one sample), got {self.batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"--lr must be > 0, got {self.lr}"),
            (self.weight_decay >= 0 and math.isfinite(self.weight_decay), f"--weight-decay must be a finite number >= 0, got {self.weight_decay}"),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}"),
            (self.seed >= 0, f"--seed must be >= 0, got {self.seed}"),
            (self.pretrained_file is None or Path(self.pretrained_file).is_file(), f"pretrained weights file {self.pretrained_file} does not exist"),
            (self.tau > 0 and math.isfinite(self.tau), f"--tau must be > 0, got {self.tau}"),
            (0.0 <= self.lam <= 1.0, f"--lam must be in [0, 1], got {self.lam}"),
            (0.0 <= self.label_smoothing < 1.0, f"--label-smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.workers >= 0, f"--workers must be >= 0, got {self.workers}"),
            (self.head_lr is None or (self.head_lr > 0 and math.isfinite(self.head_lr)), f"--head-lr must be > 0, got {self.head_lr}"),
            (0 <= self.freeze_epochs < self.epochs, f"--freeze-epochs must be in [0, epochs), got {self.freeze_epochs}"),
            (self.input_size is None or self.input_size >= 8, f"--input-size must be >= 8 pixels, got {self.input_size}"),
            (self.agreement_samples >= 0, f"--agreement-samples must be >= 0, got {self.agreement_samples}"),
        ]
        for ok, message in checks:
            if not ok:
                raise KdstoreError(message)
        inside = enclosing_store(Path(self.out))
        if inside is not None:
            raise KdstoreError(f"--out {self.out} lies inside the store {inside}; write runs beside stores, not into them")
        try:
            variant = get_variant(self.variant)
        except ValueError as e:
            raise KdstoreError(str(e)) from None
        if self.loader not in LOADERS:
            raise KdstoreError(f"--loader must be one of {', '.join(LOADERS)}, got {self.loader!r}")
        if self.teacher_rows not in PLACEMENTS:
            raise KdstoreError(f"--teacher-rows must be one of {', '.join(PLACEMENTS)}, got {self.teacher_rows!r}")
        if self.views not in VIEW_MODES:
            raise KdstoreError(f"--views must be one of {', '.join(VIEW_MODES)}, got {self.views!r}")
        if VIEW_MODES[self.views].needs_augment and not self.augment:
            raise KdstoreError("--views replay augments with the stored views; it contradicts --no-augment")
        if self.pacing not in PACINGS:
            raise KdstoreError(f"unknown --pacing {self.pacing!r}; known: {', '.join(PACINGS)}")
        if self.scorer not in SCORERS:
            raise KdstoreError(f"unknown --scorer {self.scorer!r}; known: {', '.join(SCORERS)}")
        problems = self.pacing_params.problems() + ([f"--rescore-every must be >= 1, got {self.rescore_every}"] if self.rescore_every < 1 else [])
        if problems:
            raise KdstoreError(problems[0])
        problem = conflict(variant.ordering, self.pacing, self.scorer, variant.name)
        if problem:
            raise KdstoreError(problem)

    @property
    def pacing_params(self) -> PacingParams:
        return PacingParams(self.pacing_a, self.pacing_b, self.pacing_growth, self.pacing_step_length)

    @property
    def arm(self) -> str:
        """What a report groups runs by: the variant, plus its pacing, scorer and views mode when not the defaults."""
        name = get_variant(self.variant).name
        defaults = TrainConfig(out="")
        return (name + (f"+{self.pacing}" if PACINGS[self.pacing] is not None else "") + (f"+{self.scorer}" if self.scorer != defaults.scorer else "")
                + (f"+{self.views}" if self.views != defaults.views else ""))


@dataclass
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
        train_beton=store.beton("train"), val_beton=store.beton("val"), num_classes=store.num_classes,
        image_size=int(store.attrs["image_size"]), mean=tuple(store.attrs["normalize_mean"]), std=tuple(store.attrs["normalize_std"]),
        teacher_logits=t.logits, val_teacher_logits=store.val.logits, scores=Scores(t.confidence, t.positions(t.curriculum)), views=t.views,
        meta={"store": str(store.path.resolve()), "dataset": store.attrs["dataset"], "dataset_fingerprint": store.attrs["dataset_fingerprint"],
              "teacher": store.attrs["teacher"], "class_names": store.attrs["class_names"], "identity": store.identity()},
        store=store,
    )


@dataclass
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
    if replay and data.views.sample and cfg.tau != data.views.sample_tau:
        raise KdstoreError(f"--tau {cfg.tau} differs from the temperature the store's views were sampled at ({data.views.sample_tau}); "
                           f"pass --tau {data.views.sample_tau} (or --views clean)")
    return replay


def _check_batches(cfg: TrainConfig, n: int, ctx: Context) -> None:
    if cfg.batch_size % ctx.world:
        raise KdstoreError(f"--batch-size {cfg.batch_size} is not divisible by the {ctx.world} torchrun processes")
    if cfg.batch_size > n:
        raise KdstoreError(f"--batch-size {cfg.batch_size} is larger than the {n} training samples")
    if cfg.batch_size // ctx.world < 2:
        raise KdstoreError(f"--batch-size {cfg.batch_size} leaves fewer than 2 samples per process (BatchNorm needs 2)")
    if ctx.active and cfg.freeze_epochs:
        raise KdstoreError("--freeze-epochs is not supported under torchrun (DDP fixes the trained parameters when it starts)")


def _targets(cfg: TrainConfig, data: TrainData, replay: bool, device: torch.device, aug: torch.Generator | None,
             teacher: TeacherFn | None, needs_teacher: bool, train_loader: Any,
             order_fn: Callable[[int], np.ndarray]) -> tuple[Prepare, TeacherFn | None, LabelMix | None]:
    """How a batch is prepared, where its teacher targets come from, and (mixed views) the
    partner labels of its CE term (targets.py)."""
    label_mix = None
    if replay:
        partners = None
        if data.views.mix:  # the partner images: the resident training split (held for this when the loader streams)
            split = getattr(train_loader, "split", None)
            if split is None:
                if not fits(decoded_bytes(data.train_beton, data.image_size), device):
                    raise KdstoreError("the store's views are mixed: their partner images must be held in memory, and this training split "
                                       "does not fit (train with --views clean)")
                split = resident_split(data.train_beton, device, cfg.workers)
            partners = resident_partners(split.images, torch.tensor(data.mean, device=device), torch.tensor(data.std, device=device))
            label_mix = view_label_mix(data.views, split.labels, device, cfg.teacher_rows)
        prepare = replay_views(data.views, cfg.seed, device, cfg.teacher_rows, partners)
    else:
        sizes = functools.partial(_batch_sizes, order_fn, train_loader.batch_size, train_loader.drop_last)
        prepare = random_augment(augmentation_for(data.image_size), data.image_size, aug, device, sizes) if aug is not None else no_augment()
    if not needs_teacher:
        return prepare, None, label_mix
    if teacher is None:
        teacher = (view_teacher(data.views, data.num_classes, device, cfg.teacher_rows) if replay
                   else cached_teacher(data.teacher_logits, device, cfg.teacher_rows))
    return prepare, teacher, label_mix


def build_run(cfg: TrainConfig, data: TrainData, model_name: str, kind: str, hook: BatchHook | None = None,
              teacher: TeacherFn | None = None) -> Run:
    """Model, loaders, schedule, optimiser and step of a run; nothing is written yet."""
    cfg.validate()
    variant = get_variant(cfg.variant)
    replay = _check_run(cfg, data, variant, teacher)
    ctx, device = distributed.init(resolve_device(cfg.device))
    fields = read_int_fields(data.train_beton)
    n = len(fields["sample_id"])
    _check_batches(cfg, n, ctx)
    distributed.agree(ctx, "the data", data.meta.get("identity", str(data.train_beton)))
    torch.manual_seed(cfg.seed)
    model, meta = build_model(model_name, data.num_classes, cfg.input_size or data.image_size, cfg.stem, cfg.pretrained, cfg.pretrained_file)
    for_device(model, device)
    net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if ctx.active else model
    if cfg.compile:
        net = torch.compile(net)
    drop_last = ctx.world == 1 and n % cfg.batch_size == 1 and n > 1  # a lone last sample would break BatchNorm
    scores = data.scores or Scores(np.ones(n, dtype=np.float32), np.arange(n), "none")
    schedule = Schedule(variant.ordering, cfg.pacing, cfg.pacing_params, fields["label"], cfg.batch_size,
                        distributed.usable_length(n, cfg.batch_size, ctx.world), cfg.epochs, cfg.seed, scores)
    order_fn = functools.partial(_rank_order, schedule, cfg.batch_size, ctx)
    train_loader, val_loader, loader_used = _loaders(cfg, data, device, order_fn, drop_last, ctx)
    head, body = _split_head(model)
    optimizer = sgd([{"params": body, "lr": cfg.lr}, {"params": head, "lr": cfg.head_lr or cfg.lr}], cfg.momentum, cfg.weight_decay)
    aug = torch.Generator().manual_seed(cfg.seed + 1_000_003 * ctx.rank) if cfg.augment else None
    prepare, teacher, label_mix = _targets(cfg, data, replay, device, aug, teacher, variant.needs_teacher, train_loader, order_fn)
    step = Step(net, optimizer, cosine(optimizer, cfg.epochs * len(train_loader)), prepare, teacher, torch.tensor(data.mean, device=device),
                torch.tensor(data.std, device=device), device, cfg.tau, cfg.label_smoothing, cfg.input_size, cfg.amp, label_mix=label_mix)
    views_used = ({"mode": "replay", "count": data.views.count, "topk": data.views.topk, "sample": data.views.sample, "mix": data.views.mix} if replay
                  else {"mode": "clean"})
    config = {**to_dict(cfg), "store": data.meta.get("store"), "amp": step.amp_on, "loader_used": loader_used, "variant": variant.name, "kind": kind, "model": meta,
              "data": data.meta, "views_used": views_used, **provenance()}
    return Run(cfg, data, kind, variant, ctx, device, model, meta, body, step, schedule, fields["sample_id"], fields["label"],
               train_loader, val_loader, aug, _agreement(cfg, data, device, ctx, n, train_loader), config, views_used, hook,
               val_rows=Rows(data.val_teacher_logits, device, cfg.teacher_rows) if data.val_teacher_logits is not None else None)


def _loaders(cfg: TrainConfig, data: TrainData, device: torch.device, order_fn: Callable[[int], np.ndarray], drop_last: bool,
             ctx: Context) -> tuple[Any, Any, str]:
    """The train and val loaders: both splits resident on the device (resident.py) when
    --loader device, or auto and they fit; else FFCV's Loader. Returns which was used."""
    n_val = len(read_int_fields(data.val_beton)["sample_id"])
    val_positions = np.arange(ctx.rank, n_val, ctx.world)
    local = cfg.batch_size // ctx.world
    if holds(cfg.loader, (data.train_beton, data.val_beton), data.image_size, device):
        train, val = resident_split(data.train_beton, device, cfg.workers), resident_split(data.val_beton, device, cfg.workers)
        return ResidentLoader(train, local, order_fn, drop_last), ResidentLoader(val, 512, indices=val_positions), "device"
    return (make_loader(data.train_beton, local, cfg.workers, order_fn, drop_last),
            make_loader(data.val_beton, 512, cfg.workers, indices=val_positions), "ffcv")


def _agreement(cfg: TrainConfig, data: TrainData, device: torch.device, ctx: Context, n: int,
               train_loader: Any) -> Callable[[nn.Module], dict[str, float]] | None:
    """Agreement and KL with the teacher on the clean training subset (agreement.py; the
    validation split's are measured by `evaluate`), for runs whose data carry the teacher's logits."""
    positions = agreement.subset(n, cfg.agreement_samples, 0)
    if data.teacher_logits is None or not len(positions):
        return None
    mean, std = torch.tensor(data.mean, device=device), torch.tensor(data.std, device=device)
    rows = Rows(data.teacher_logits, device, cfg.teacher_rows)
    resident = getattr(train_loader, "split", None)
    batches = agreement.resident_batches(resident.images) if resident is not None else agreement.beton_batches(data.train_beton, cfg.workers)

    def measure(model: nn.Module) -> dict[str, float]:
        m = agreement.measure(model, batches, positions, rows, mean, std, cfg.input_size or data.image_size, device, ctx)
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
        pos = order[b * local: b * local + len(ids)]
        ids_np = ids.numpy()
        if not np.array_equal(run.sample_id[pos], ids_np):
            raise KdstoreError(f"internal error: batch {b} of epoch {epoch + 1} holds other samples than its teacher rows")
        if run.hook is not None:
            run.hook(epoch, b, ids_np.copy(), float(lambdas[b]))
        terms = run.step(epoch, pos, images, labels, float(lambdas[b]))
        n = len(ids_np)
        n_seen += n
        sums += torch.stack([terms["loss"] * n, terms["ce"] * n, terms["kd"] * n, terms["correct"]]).double()
        bar.update(task, completed=n_seen)  # a number only: no sync with the device
        t_wait = time.perf_counter()
    seconds = time.perf_counter() - t0
    totals = all_reduce_sum(torch.cat([sums, torch.tensor([float(n_seen)], dtype=torch.float64, device=run.device)]), run.ctx)
    n_all = max(totals[4].item(), 1.0)
    loss, ce, kd, correct = (totals[:4] / n_all).tolist()
    used = lambdas[: len(run.train_loader)]
    return {
        "train_loss": loss, "train_ce": ce, "train_kd": kd, "train_acc": correct,
        "lam_mean": float(used.mean()), "lam_min": float(used.min()), "lam_max": float(used.max()),
        "seconds": seconds, "images_per_s": n_all / max(seconds, 1e-9), "data_wait_frac": wait / max(seconds, 1e-9),
    }


@torch.inference_mode()
def evaluate(model: nn.Module, loader, mean: torch.Tensor, std: torch.Tensor, device: torch.device,
             input_size: int | None = None, amp: bool = False, ctx: Context = Context(),
             teacher_rows: Callable[[np.ndarray], torch.Tensor] | None = None, positions: np.ndarray | None = None) -> dict[str, float]:
    """Validation accuracy and loss (mean CE) over the whole split (each rank reads its shard,
    `positions`, in order); with the teacher's rows, also the agreement with it (agreement.py)."""
    model.eval()
    loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    sums = agreement.Sums(device)
    n = 0
    for images, labels, _ in loader:
        x = normalize(upload(images, device), mean, std)
        with autocast(device, amp):
            logits = model(device_layout(resize(x, input_size) if input_size else x)).float()
        y = upload(labels, device)
        loss += nn.functional.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        if teacher_rows is not None:
            sums.add(logits, teacher_rows(positions[n:n + len(y)]))
        n += len(y)
    totals = all_reduce_sum(torch.stack([loss, correct.double(), torch.tensor(float(n), dtype=torch.float64, device=device)]), ctx)
    n_all = max(totals[2].item(), 1.0)
    out = {"val_acc": totals[1].item() / n_all, "val_loss": totals[0].item() / n_all}
    if teacher_rows is not None:
        out["agree_val"], out["kl_val"] = sums.result(ctx)
    return out


def run_epoch(run: Run, epoch: int, bar) -> dict[str, Any]:
    """Rescore if due, the epoch's order and lambdas, one pass of training, then evaluation."""
    cfg, schedule = run.cfg, run.schedule
    if SCORERS[cfg.scorer](epoch, cfg.rescore_every):
        schedule.set_scores(score_train_set(run.model, run.data, run.labels, cfg, run.device, run.ctx, f"student@{epoch + 1}"))
    order = schedule.order(epoch)  # global: lambda per global batch is the same on every rank
    confidence = schedule.scores.confidence
    lambdas = POLICIES[run.variant.policy](confidence[order], cfg.batch_size, cfg.lam, float(confidence.max()))
    local = cfg.batch_size // run.ctx.world
    total = len(run.train_loader) * local if run.train_loader.drop_last else len(run.rank_order(epoch))
    task = bar.add_task(f"{run.variant.name} epoch {epoch + 1}/{cfg.epochs}", total=total, info="")
    row: dict[str, Any] = {"epoch": epoch + 1, "lr": run.step.scheduler.get_last_lr()[0], "scores": schedule.scores.source}
    pace = schedule.fractions(epoch)
    if pace is not None:  # g(t) for every batch of the epoch, for `kdstore report`
        row["pace"] = np.round(pace, 5).tolist()
    row["lam"] = np.round(lambdas[: len(run.train_loader)], 5).tolist()  # lambda of every batch, for `kdstore report`'s figure
    for p in run.body:  # --freeze-epochs: only the head learns at first (frozen params get no grad)
        p.requires_grad_(epoch >= cfg.freeze_epochs)
    row.update(train_epoch(run, epoch, lambdas, bar, task))
    t_eval = time.perf_counter()
    row.update(evaluate(run.model, run.val_loader, run.step.mean, run.step.std, run.device, cfg.input_size, cfg.amp, run.ctx,
                        run.val_rows, run.val_positions))
    if run.agreement is not None:
        row.update(run.agreement(run.model))
    row["eval_seconds"] = time.perf_counter() - t_eval  # validation and agreement (`seconds` is the training pass alone)
    bar.remove_task(task)  # the epoch's line (epoch_line) takes its place
    run.history.append(row)
    return row


def epoch_line(run: Run, row: dict[str, Any], elapsed: float, epochs_timed: int) -> str:
    """The log line of a finished epoch, with the run's ETA from the epochs timed so far."""
    left = run.cfg.epochs - row["epoch"]
    eta = clock(elapsed / max(epochs_timed, 1) * left)
    return (f"{run.cfg.arm} seed {run.cfg.seed} epoch {row['epoch']}/{run.cfg.epochs}: loss {row['train_loss']:.4f} "
            f"(ce {row['train_ce']:.4f}, kd {row['train_kd']:.4f}), train acc {row['train_acc']:.2%}, val acc {row['val_acc']:.2%}, "
            f"val loss {row['val_loss']:.4f}, "
            + (f"agreement {row['agree_val']:.2%} (KL {row['kl_val']:.3f}), " if "agree_val" in row else "")
            + f"lambda {row['lam_mean']:.3f}, lr {row['lr']:.4g}, {row['images_per_s']:,.0f} img/s, "
            f"{row['seconds']:.1f} s, ETA {eta}")


def save_epoch(run: Run, row: dict[str, Any]) -> None:
    """After an epoch (main rank): its metrics line, a student scorer's curriculum, the checkpoint."""
    out = run.out
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    if run.schedule.scores.computed:  # the store holds the teacher's scores; save the run's own
        _save_scores(out, row["epoch"], run.schedule.scores, run.sample_id)
    meta = {**run.meta, "kind": run.kind, "class_names": run.data.meta.get("class_names", []), "dataset": run.data.meta.get("dataset", ""),
            "split": run.data.meta.get("split"), "normalize_mean": list(run.data.mean), "normalize_std": list(run.data.std)}
    save_checkpoint(out / "checkpoint.pt", {
        "state_dict": run.model.state_dict(), "optimizer": run.step.optimizer.state_dict(), "scheduler": run.step.scheduler.state_dict(),
        "epoch": row["epoch"], "meta": meta, "config": json.loads(json.dumps(run.config)), "history": json.loads(json.dumps(run.history)),
        "rng": {"torch": torch.get_rng_state(), **({"augment": run.aug.get_state()} if run.aug is not None else {})},
    })


def summarize(run: Run, model_name: str, seconds: float) -> dict[str, Any]:
    """summary.json (main rank) and the closing line."""
    history = run.history
    summary = {
        "variant": run.variant.name, "arm": run.cfg.arm, "kind": run.kind, "model": model_name, "epochs": run.cfg.epochs, "seed": run.cfg.seed,
        "final_val_acc": history[-1]["val_acc"], "best_val_acc": max(r["val_acc"] for r in history),
        "final_val_loss": history[-1]["val_loss"], "seconds": seconds, "images_per_s": float(np.median([r["images_per_s"] for r in history])),
        **{k: v for k, v in run.data.meta.items() if k not in ("class_names", "identity")}, "processes": run.ctx.world, "views": run.views_used,
    }
    if run.ctx.main:
        write_json(run.out / "summary.json", summary)
        say(f"{run.cfg.arm} {model_name}: val acc {summary['final_val_acc']:.2%} (best {summary['best_val_acc']:.2%}), "
            f"{seconds:.1f} s; wrote {run.out}")
    return summary


def fit(cfg: TrainConfig, data: TrainData, model_name: str, kind: str, hook: BatchHook | None = None,
        teacher: TeacherFn | None = None) -> dict[str, Any]:
    """Train `model_name` on `data` with cfg; writes config.json, metrics.jsonl, summary.json and
    checkpoint.pt under cfg.out. `kind` ("student" or "teacher") goes into the checkpoint.
    `teacher` replaces the cached logits as the KD target (the online-KD baseline)."""
    run = build_run(cfg, data, model_name, kind, hook, teacher)
    start = 0
    if cfg.resume:
        start, run.history = _restore(run.out / "checkpoint.pt", run.config, run.model, run.step.optimizer, run.step.scheduler, run.aug)
        run.train_loader.next_epoch = start  # FFCV asks the order for this epoch next
        saved = _load_scores(run.out, start, run.sample_id)  # a student scorer's last curriculum
        if saved is not None:
            run.schedule.set_scores(saved)
    if run.ctx.main:
        run.out.mkdir(parents=True, exist_ok=True)
        write_json(run.out / "config.json", run.config)
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


def score_train_set(model: nn.Module, data: TrainData, labels: np.ndarray, cfg: TrainConfig, device: torch.device,
                    ctx: Context, source: str) -> Scores:
    """One inference pass of `model` over the clean training images (each rank scores a shard of
    whole batches; the shards are summed into the full table), then the curriculum rules."""
    n = len(labels)
    lo, hi = distributed.shard(n, 512, ctx.rank, ctx.world)
    mean, std = torch.tensor(data.mean, device=device), torch.tensor(data.std, device=device)
    forward = clean_forward(model, mean, std, cfg.input_size or data.image_size, device, cfg.amp)
    scored = score_beton(forward, data.train_beton, 512, cfg.workers, f"scoring ({source})", cfg.progress and ctx.main, positions=np.arange(lo, hi))
    table = torch.zeros(2, n, dtype=torch.float64, device=device)  # confidence, correct: (N,) each, not the (N, C) logits
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
    path.parent.mkdir(exist_ok=True)
    np.savez(path, curriculum=sample_id[scores.curriculum], confidence=scores.confidence, source=np.array(scores.source))


def _load_scores(out: Path, epoch: int, sample_id: np.ndarray) -> Scores | None:
    path = _scores_path(out, epoch)
    if not path.is_file():
        return None
    with np.load(path) as z:
        by_id = np.argsort(sample_id)
        rows = by_id[np.searchsorted(sample_id, z["curriculum"], sorter=by_id)]
        return Scores(z["confidence"], rows.astype(np.int64), str(z["source"]), True)


def _split_head(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(classifier head parameters, the rest), the head as timm's get_classifier() names it."""
    get = getattr(model, "get_classifier", None)
    head_module = get() if callable(get) else None
    head = list(head_module.parameters()) if isinstance(head_module, nn.Module) else []
    ids = {id(p) for p in head}
    return head, [p for p in model.parameters() if id(p) not in ids]


# Options that may differ between a run and its resumption.
RESUMABLE_CHANGES = {"resume", "overwrite", "progress", "workers", "device", "teacher_rows", "verify", "versions", "command", "tensorboard", "loader", "loader_used", "compile"}


def _restore(path: Path, config: dict[str, Any], model: nn.Module, optimizer, scheduler, aug: torch.Generator | None) -> tuple[int, list[dict[str, Any]]]:
    """Load a per-epoch checkpoint into the run's state; refuses one from a different run."""
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or not {"config", "state_dict", "optimizer", "scheduler", "epoch", "rng"} <= set(ckpt):
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
        raise KdstoreError(f"--resume: {path} holds other weights than this run's model ({str(e).splitlines()[0][:120]})") from None
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
        problems = verify(Path(cfg.store))
        if problems:
            raise KdstoreError(f"--verify: {problems[0]}" + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""))
    store = Store.open(cfg.store)
    return fit(cfg, data_from_store(store), cfg.student, "student", hook)


def run_online(cfg: TrainConfig, store: Store, checkpoint: str | None = None, teacher_name: str | None = None) -> dict[str, Any]:
    """Train a student with online KD (the teacher runs on every batch) through the same loop and
    step as `run`; a baseline for benchmarks, not part of the offline workflow."""
    spec = TeacherSpec(teacher=teacher_name, checkpoint=checkpoint, input_size=int(store.attrs["input_size"]))
    loaded = load_teacher(spec, store.num_classes, int(store.attrs["image_size"]))
    device = resolve_device(cfg.device)
    for_device(loaded.model, device)
    data = data_from_store(store)
    data.meta["online_teacher"] = loaded.meta["model"]
    return fit(cfg, data, cfg.student, "student", teacher=online_teacher(loaded.model, int(loaded.meta["input_size"]), device, cfg.amp))
