"""`kdstore train` (students from a store) and `kdstore teacher`: one training loop for both.

The loop never asks which variant, pacing or scorer it runs: a `schedule.Schedule` gives each
epoch's positions (handed to FFCV's Loader), reliance.POLICIES a lambda per batch; teacher
logits are looked up by the .beton position of each image. No teacher model is ever built here.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from .augment import augmentation_for, normalize, resize
from .batches import PLACEMENTS, Prepare, TeacherFn, cached_teacher, no_augment, random_augment, replay_views, view_teacher
from .config import to_dict, write_json
from . import distributed
from .distributed import Context, all_reduce_sum
from .errors import KdstoreError
from .loading import make_loader, read_int_fields
from .losses import student_loss
from .models import build_model, load_checkpoint, resolve_device, save_checkpoint
from .pacing import PACINGS, PacingParams
from .progress import console, images_progress
from .reliance import POLICIES
from .schedule import SCORERS, Schedule, Scores, conflict
from .views import Views
from .store import Store, enclosing_store, verify
from .variants import Variant, get_variant

# on_batch(epoch, batch index, sample ids (B,), lambda): observes what the loop trained on.
BatchHook = Callable[[int, int, np.ndarray, float], None]

VIEW_MODES = ("auto", "replay", "clean")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on; saved as config.json and inside checkpoint.pt."""

    out: str
    store: str | None = None  # student runs: the store to train from
    variant: str = "kd"  # see variants.VARIANTS
    student: str = "cifar_resnet8"  # any timm name (kdstore registers the CIFAR nets)
    stem: str = "auto"  # auto | cifar | imagenet, for timm ResNets on small images
    pretrained: bool = False
    pretrained_file: str | None = None  # local timm/torchvision weights for --pretrained
    input_size: int | None = None  # train at this size (images resized after augmentation); default native
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.05  # peak SGD learning rate, cosine-annealed per step to 0
    head_lr: float | None = None  # learning rate of the classifier head (fine-tuning); default lr
    freeze_epochs: int = 0  # train only the classifier head for this many first epochs
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    tau: float = 4.0  # KD temperature
    lam: float = 0.9  # KD weight for fixed-lambda variants
    pacing: str = "none"  # see pacing.PACINGS: batches drawn from a growing prefix of the order
    pacing_a: float = 0.8  # fraction of training after which the whole order is used
    pacing_b: float = 0.2  # fraction of the order used at the start
    pacing_growth: float = 2.0  # fixed-exp pacing: growth factor per stair
    pacing_step_length: int | None = None  # fixed-exp pacing: steps per stair (default: reach 1 at a)
    scorer: str = "teacher"  # see schedule.SCORERS: who scores the curriculum
    rescore_every: int = 1  # scorer student: rebuild the curriculum every this many epochs
    seed: int = 0
    workers: int = 2
    device: str = "auto"
    augment: bool = True  # random crop + flip (augment.augmentation_for the image size)
    views: str = "auto"  # replay | clean | auto (replay when the store has views): see views.py
    amp: bool = True  # mixed precision (autocast) on CUDA; ignored on the CPU
    teacher_rows: str = "auto"  # auto | device | mapped: where the teacher's rows are gathered (batches.Rows)
    verify: bool = False  # hash every store file against its manifest before training (as `kdstore verify`)
    overwrite: bool = False
    resume: bool = False  # continue from OUT/checkpoint.pt (saved after every epoch)
    progress: bool = True

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
            (self.workers >= 1, f"--workers must be >= 1, got {self.workers}"),
            (self.head_lr is None or (self.head_lr > 0 and math.isfinite(self.head_lr)), f"--head-lr must be > 0, got {self.head_lr}"),
            (0 <= self.freeze_epochs < self.epochs, f"--freeze-epochs must be in [0, epochs), got {self.freeze_epochs}"),
            (self.input_size is None or self.input_size >= 8, f"--input-size must be >= 8 pixels, got {self.input_size}"),
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
        if self.teacher_rows not in PLACEMENTS:
            raise KdstoreError(f"--teacher-rows must be one of {', '.join(PLACEMENTS)}, got {self.teacher_rows!r}")
        if self.views not in VIEW_MODES:
            raise KdstoreError(f"--views must be one of {', '.join(VIEW_MODES)}, got {self.views!r}")
        if self.views == "replay" and not self.augment:
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
        return (name + (f"+{self.pacing}" if PACINGS[self.pacing] is not None else "") + (f"+{self.scorer}" if self.scorer != "teacher" else "")
                + (f"+{self.views}" if self.views != "auto" else ""))


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
    scores: Scores | None = None  # the teacher's confidence and curriculum; None without a teacher
    views: Views | None = None  # the store's augmented views with their teacher logits, if any
    meta: dict[str, Any] = field(default_factory=dict)  # provenance saved with the run


def data_from_store(store: Store) -> TrainData:
    t = store.train
    return TrainData(
        train_beton=store.beton("train"), val_beton=store.beton("val"), num_classes=store.num_classes,
        image_size=int(store.attrs["image_size"]), mean=tuple(store.attrs["normalize_mean"]), std=tuple(store.attrs["normalize_std"]),
        teacher_logits=t.logits, scores=Scores(t.confidence, t.positions(t.curriculum)), views=t.views,
        meta={"store": str(store.path), "dataset": store.attrs["dataset"], "dataset_fingerprint": store.attrs["dataset_fingerprint"],
              "teacher": store.attrs["teacher"], "class_names": store.attrs["class_names"], "identity": store.identity()},
    )


def train_one_epoch(
    model: nn.Module, loader, order: np.ndarray, lambdas: np.ndarray, teacher: TeacherFn | None,
    optimizer: torch.optim.Optimizer, scheduler, prepare: Prepare, cfg: TrainConfig,
    mean: torch.Tensor, std: torch.Tensor, device: torch.device, epoch: int, bar, task,
    hook: BatchHook | None = None, label_smoothing: float = 0.0, scaler: torch.amp.GradScaler | None = None,
    ctx: Context = Context(),
) -> dict[str, float]:
    """One pass over `loader`, which visits `order` (this rank's positions) in its batches;
    lambdas[b] is the lambda of (global) batch b."""
    model.train()
    local_batch = loader.batch_size
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, ce, kd, correct (sample-weighted)
    n_seen, wait = 0, 0.0
    t0 = time.perf_counter()
    t_wait = t0
    for b, (images, labels, ids) in enumerate(loader):
        wait += time.perf_counter() - t_wait
        pos = order[b * local_batch: b * local_batch + len(ids)]
        ids_np = ids.numpy()
        if hook is not None:
            hook(epoch, b, ids_np.copy(), float(lambdas[b]))
        x, view = prepare(epoch, pos, normalize(images.to(device, non_blocking=True), mean, std))
        y = labels.to(device, non_blocking=True)
        target = None if teacher is None else teacher(pos, x, view)
        with _autocast(device, cfg.amp):
            logits = model(resize(x, cfg.input_size) if cfg.input_size else x)
        terms = student_loss(logits.float(), y, target, float(lambdas[b]), cfg.tau, label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(terms["loss"]).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        n = len(y)
        n_seen += n
        sums += torch.stack([terms["loss"].detach() * n, terms["ce"] * n, terms["kd"] * n, (logits.argmax(1) == y).sum()]).double()
        if bar is not None and (b % 10 == 0):
            bar.update(task, completed=n_seen, info=f"loss {sums[0].item() / n_seen:.3f}")
        t_wait = time.perf_counter()
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.update(task, completed=n_seen, info=f"loss {sums[0].item() / max(n_seen, 1):.3f}")
    totals = all_reduce_sum(torch.cat([sums, torch.tensor([float(n_seen)], dtype=torch.float64, device=device)]), ctx)
    n_all = max(totals[4].item(), 1.0)
    loss, ce, kd, correct = (totals[:4] / n_all).tolist()
    used = lambdas[: len(loader)]
    return {
        "train_loss": loss, "train_ce": ce, "train_kd": kd, "train_acc": correct,
        "lam_mean": float(used.mean()), "lam_min": float(used.min()), "lam_max": float(used.max()),
        "seconds": seconds, "images_per_s": n_all / max(seconds, 1e-9), "data_wait_frac": wait / max(seconds, 1e-9),
    }


def _autocast(device: torch.device, enabled: bool):
    """Mixed precision on CUDA (bf16 where supported, else fp16); a no-op elsewhere."""
    on = enabled and device.type == "cuda"
    dtype = torch.bfloat16 if on and torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=on)


@torch.inference_mode()
def evaluate(model: nn.Module, loader, mean: torch.Tensor, std: torch.Tensor, device: torch.device,
             input_size: int | None = None, amp: bool = False, ctx: Context = Context()) -> dict[str, float]:
    """Validation accuracy and loss (mean CE) over the whole split (each rank reads its shard)."""
    model.eval()
    loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    n = 0
    for images, labels, _ in loader:
        x = normalize(images.to(device), mean, std)
        with _autocast(device, amp):
            logits = model(resize(x, input_size) if input_size else x).float()
        y = labels.to(device)
        loss += nn.functional.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        n += len(y)
    totals = all_reduce_sum(torch.stack([loss, correct.double(), torch.tensor(float(n), dtype=torch.float64, device=device)]), ctx)
    n_all = max(totals[2].item(), 1.0)
    return {"val_acc": totals[1].item() / n_all, "val_loss": totals[0].item() / n_all}


def fit(cfg: TrainConfig, data: TrainData, model_name: str, kind: str, hook: BatchHook | None = None,
        teacher: TeacherFn | None = None) -> dict[str, Any]:
    """Train `model_name` on `data` with cfg; writes config.json, metrics.jsonl, summary.json and
    checkpoint.pt under cfg.out. `kind` ("student" or "teacher") goes into the checkpoint.
    `teacher` replaces the cached logits as the KD target (the online-KD baseline)."""
    cfg.validate()
    variant: Variant = get_variant(cfg.variant)
    out = Path(cfg.out)
    if (out / "summary.json").exists() and not cfg.overwrite:
        raise KdstoreError(f"{out} already holds a finished run; pass --overwrite to replace it")
    if cfg.resume and not (out / "checkpoint.pt").is_file():
        raise KdstoreError(f"--resume: {out} has no checkpoint.pt to continue from")
    if variant.needs_teacher and data.teacher_logits is None and teacher is None:
        raise KdstoreError(f"variant {variant.name} needs teacher logits from a store")
    replay = cfg.views == "replay" or (cfg.views == "auto" and data.views is not None and cfg.augment)
    if replay and data.views is None:
        raise KdstoreError("--views replay: the store has no views (make one with `kdstore cache --views K`)")
    ctx, device = distributed.init(resolve_device(cfg.device))
    if cfg.batch_size % ctx.world:
        raise KdstoreError(f"--batch-size {cfg.batch_size} is not divisible by the {ctx.world} torchrun processes")
    if ctx.active and cfg.freeze_epochs:
        raise KdstoreError("--freeze-epochs is not supported under torchrun (DDP fixes the trained parameters when it starts)")
    distributed.agree(ctx, "the data", data.meta.get("identity", str(data.train_beton)))
    torch.manual_seed(cfg.seed)
    model, meta = build_model(model_name, data.num_classes, cfg.input_size or data.image_size, cfg.stem, cfg.pretrained, cfg.pretrained_file)
    model.to(device)
    net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if ctx.active else model

    fields = read_int_fields(data.train_beton)
    n = len(fields["sample_id"])
    if cfg.batch_size > n:
        raise KdstoreError(f"--batch-size {cfg.batch_size} is larger than the {n} training samples")
    if cfg.batch_size // ctx.world < 2:
        raise KdstoreError(f"--batch-size {cfg.batch_size} leaves fewer than 2 samples per process (BatchNorm needs 2)")
    # One lone sample in a last batch would break BatchNorm in training mode: drop it then.
    drop_last = ctx.world == 1 and n % cfg.batch_size == 1 and n > 1
    usable = distributed.usable_length(n, cfg.batch_size, ctx.world)
    scores = data.scores or Scores(np.ones(n, dtype=np.float32), np.arange(n), "none")
    schedule = Schedule(variant.ordering, cfg.pacing, cfg.pacing_params, fields["label"], cfg.batch_size, usable, cfg.epochs, cfg.seed, scores)
    rank_order = lambda epoch: distributed.rank_positions(schedule.order(epoch), cfg.batch_size, ctx.rank, ctx.world)  # noqa: E731
    train_loader = make_loader(data.train_beton, cfg.batch_size // ctx.world, cfg.workers, rank_order, drop_last)
    n_val = len(read_int_fields(data.val_beton)["sample_id"])
    val_loader = make_loader(data.val_beton, 512, cfg.workers, indices=np.arange(ctx.rank, n_val, ctx.world))
    steps_per_epoch = len(train_loader)

    policy = POLICIES[variant.policy]
    rescore_due = SCORERS[cfg.scorer]
    if not variant.needs_teacher:
        teacher = None
    elif teacher is None:
        teacher = (view_teacher(data.views, data.num_classes, device, cfg.teacher_rows) if replay
                   else cached_teacher(data.teacher_logits, device, cfg.teacher_rows))
    mean = torch.tensor(data.mean, device=device)
    std = torch.tensor(data.std, device=device)
    head, body = _split_head(model)
    groups = [{"params": body, "lr": cfg.lr}, {"params": head, "lr": cfg.head_lr or cfg.lr}]
    optimizer = torch.optim.SGD([g for g in groups if g["params"]], lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp and device.type == "cuda" and not torch.cuda.is_bf16_supported())
    aug = torch.Generator().manual_seed(cfg.seed + 1_000_003 * ctx.rank) if cfg.augment else None
    if replay:
        prepare = replay_views(data.views, cfg.seed, device, cfg.teacher_rows)
    else:
        prepare = random_augment(augmentation_for(data.image_size), data.image_size, aug) if aug is not None else no_augment()

    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
    views_used = {"mode": "replay", "count": data.views.count, "topk": data.views.topk} if replay else {"mode": "clean"}
    config = {**to_dict(cfg), "variant": variant.name, "kind": kind, "model": meta, "data": data.meta, "views_used": views_used}
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if cfg.resume:
        start_epoch, history = _restore(out / "checkpoint.pt", config, model, optimizer, scheduler, aug)
        train_loader.next_epoch = start_epoch  # FFCV asks order_fn for this epoch next
        saved = _load_scores(out, start_epoch, fields["sample_id"])  # a student scorer's last curriculum
        if saved is not None:
            schedule.set_scores(saved)
    metrics_path = out / "metrics.jsonl"
    if ctx.main:
        write_json(out / "config.json", config)
        metrics_path.write_text("".join(json.dumps(row) + "\n" for row in history))
    t_run = time.perf_counter()
    with images_progress(cfg.progress and ctx.main) as bar:
        for epoch in range(start_epoch, cfg.epochs):
            if rescore_due(epoch, cfg.rescore_every):
                schedule.set_scores(score_train_set(model, data, fields["label"], cfg, device, ctx, f"student@{epoch + 1}"))
            order = schedule.order(epoch)  # global: lambda per global batch is the same on every rank
            confidence = schedule.scores.confidence
            lambdas = policy(confidence[order], cfg.batch_size, cfg.lam, float(confidence.max()))
            mine = rank_order(epoch)
            task = bar.add_task(f"{variant.name} epoch {epoch + 1}/{cfg.epochs}", total=steps_per_epoch * (cfg.batch_size // ctx.world) if drop_last else len(mine), info="")
            row = {"epoch": epoch + 1, "lr": scheduler.get_last_lr()[0], "scores": schedule.scores.source}
            pace = schedule.fractions(epoch)
            if pace is not None:  # g(t) for every batch of the epoch, for `kdstore report`
                row["pace"] = np.round(pace, 5).tolist()
            for p in body:  # --freeze-epochs: only the head learns at first (frozen params get no grad)
                p.requires_grad_(epoch >= cfg.freeze_epochs)
            row.update(train_one_epoch(net, train_loader, mine, lambdas, teacher, optimizer, scheduler, prepare, cfg, mean, std, device,
                                       epoch, bar, task, hook, cfg.label_smoothing, scaler, ctx))
            row.update(evaluate(model, val_loader, mean, std, device, cfg.input_size, cfg.amp, ctx))
            bar.update(task, info=f"loss {row['train_loss']:.3f} val acc {row['val_acc']:.2%}")
            history.append(row)
            if not ctx.main:
                continue
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            if schedule.scores.computed:  # the store holds the teacher's scores; save the run's own
                _save_scores(out, epoch + 1, schedule.scores, fields["sample_id"])
            save_checkpoint(out / "checkpoint.pt", {
                "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "epoch": epoch + 1, "meta": {**meta, "kind": kind, "class_names": data.meta.get("class_names", []),
                                             "dataset": data.meta.get("dataset", ""), "split": data.meta.get("split")},
                "config": json.loads(json.dumps(config)), "history": json.loads(json.dumps(history)),
                "rng": {"torch": torch.get_rng_state(), **({"augment": aug.get_state()} if aug is not None else {})},
            })
    summary = {
        "variant": variant.name, "arm": cfg.arm, "kind": kind, "model": model_name, "epochs": cfg.epochs, "seed": cfg.seed,
        "final_val_acc": history[-1]["val_acc"], "best_val_acc": max(r["val_acc"] for r in history),
        "final_val_loss": history[-1]["val_loss"], "seconds": time.perf_counter() - t_run,
        "images_per_s": float(np.median([r["images_per_s"] for r in history])),
        **{k: v for k, v in data.meta.items() if k not in ("class_names", "identity")}, "processes": ctx.world,
        "views": views_used,
    }
    if not ctx.main:
        return summary
    write_json(out / "summary.json", summary)
    console.print(f"[bold]{cfg.arm}[/] {model_name}: val acc {summary['final_val_acc']:.2%} (best {summary['best_val_acc']:.2%}), {summary['seconds']:.1f} s -> {out}")
    return summary


def score_train_set(model: nn.Module, data: TrainData, labels: np.ndarray, cfg: TrainConfig, device: torch.device,
                    ctx: Context, source: str) -> Scores:
    """One inference pass of `model` over the clean training images (each rank scores a shard of
    whole batches; the shards are summed into the full table), then the curriculum rules."""
    from .cache import clean_forward, score_beton

    n = len(labels)
    lo, hi = distributed.shard(n, 512, ctx.rank, ctx.world)
    mean, std = torch.tensor(data.mean, device=device), torch.tensor(data.std, device=device)
    forward = clean_forward(model, mean, std, cfg.input_size or data.image_size, device)
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
_RESUMABLE_CHANGES = {"resume", "overwrite", "progress", "workers", "device", "teacher_rows", "verify"}


def _restore(path: Path, config: dict[str, Any], model: nn.Module, optimizer, scheduler, aug: torch.Generator | None) -> tuple[int, list[dict[str, Any]]]:
    """Load a per-epoch checkpoint into the run's state; refuses one from a different run."""
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or not {"config", "state_dict", "optimizer", "scheduler", "epoch", "rng"} <= set(ckpt):
        raise KdstoreError(f"--resume: {path} is not a per-epoch checkpoint of `kdstore train` (a bare state dict?)")
    saved = ckpt.get("config", {})
    differing = sorted(k for k in set(saved) | set(config) if k not in _RESUMABLE_CHANGES and saved.get(k) != config.get(k))
    if differing:
        raise KdstoreError(f"--resume: {path} was saved by a run with different {', '.join(differing)}")
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
    """Train a student from cfg.store; returns the summary."""
    cfg.validate()
    if not cfg.store:
        raise KdstoreError("--store is required")
    if cfg.verify:
        problems = verify(Path(cfg.store))
        if problems:
            raise KdstoreError(f"--verify: {problems[0]}" + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""))
    store = Store.open(cfg.store)
    return fit(cfg, data_from_store(store), cfg.student, "student", hook)
