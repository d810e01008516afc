"""A training run put together (build_run): its loaders, model, optimiser, learning-rate schedule
and step, and what its config.json records. Nothing is written here; `loop.fit` runs it."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from kdstore.errors import KdstoreError
from kdstore.loader.source import TrainData
from kdstore.loader.store_loader import StoreLoader
from kdstore.loader.teacher_targets import LogitSource
from kdstore.method.variants import Variant
from kdstore.models.build import build_model
from kdstore.options import PROVENANCE_KEYS, provenance, to_dict
from kdstore.passes.inference import ModelInput
from kdstore.runtime import distributed
from kdstore.runtime.devices import resolve_device
from kdstore.runtime.distributed import Context
from kdstore.runtime.precision import for_device
from kdstore.store.rows import Rows
from kdstore.train import agreement
from kdstore.train.config import TrainConfig
from kdstore.train.graph_step import with_graph
from kdstore.train.step import Step, cosine, sgd

# on_batch(epoch, batch index, sample ids (B,), lambda): observes what the loop trained on.
BatchHook = Callable[[int, int, np.ndarray, float], None]


NAMED_KINDS = ("teacher",)  # runs whose log lines carry their kind rather than their arm


# What config.json records beside train's options (build_run): how the run went and what it ran with.
RUN_RECORD = ("loader_used", "kind", "model", "data", "views_used", *PROVENANCE_KEYS)


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


def build_run(
    cfg: TrainConfig,
    data: TrainData,
    model_name: str,
    kind: str,
    hook: BatchHook | None = None,
    teacher: LogitSource | None = None,
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


def _split_head(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(classifier head parameters, the rest), the head as timm's get_classifier() names it."""
    get = getattr(model, "get_classifier", None)
    head_module = get() if callable(get) else None
    head = list(head_module.parameters()) if isinstance(head_module, nn.Module) else []
    ids = {id(p) for p in head}
    return head, [p for p in model.parameters() if id(p) not in ids]


def _step(cfg: TrainConfig, models: tuple[nn.Module, Any], device: torch.device, batches: int) -> tuple[Step, list]:
    """The run's optimiser (SGD; the head at --head-lr), learning-rate schedule (cosine over `batches` per epoch)
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
    step = with_graph(
        Step(
            model=net,
            optimizer=optimizer,
            scheduler=cosine(optimizer, cfg.epochs * batches),
            device=device,
            tau=cfg.tau,
            loss=term,
            label_smoothing=cfg.label_smoothing,
            input_size=cfg.input_size,
            amp=cfg.amp,
        ),
        cfg.cuda_graph,
    )
    return step, body


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
