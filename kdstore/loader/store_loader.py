"""StoreLoader: a store's split as batches for any training loop (`kdstore train` runs on it too).

    loader = kdstore.StoreLoader("stores/c100", variant="kd-cl-sr", batch_size=128, seed=0)
    for epoch in range(loader.config.epochs):
        for batch in loader:            # one epoch; the next iteration is the next epoch
            out = kdstore.kd_loss(model(batch.images), batch, tau=loader.config.tau)
            ...

Each epoch visits the positions the variant's ordering and pacing give (method/orderings.py),
through FFCV's Loader or from the split held whole in memory (data/in_memory.py: identical
batches); each batch is normalised, augmented (with the stored view's own parameters when views
are replayed), and carries its teacher target and lambda (loader/batch.py). Under torchrun each
rank reads its share of every global batch. state_dict() resumes exactly, mid-epoch included."""

from __future__ import annotations

import dataclasses
import difflib
import functools
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from kdstore.data.augment import augmentation_for, normalize
from kdstore.data.beton import epoch_of, make_loader, read_int_fields
from kdstore.data.in_memory import (
    ResidentLoader,
    ResidentSplit,
    batch_sizes,
    decoded_bytes,
    fits,
    holds,
    resident_split,
)
from kdstore.errors import KdstoreError
from kdstore.indices import Positions
from kdstore.loader.batch import Batch, DistillLoss, Pair, Target, loss_of
from kdstore.loader.config import LoaderConfig
from kdstore.loader.prepare import VIEW_MODES, Prepare, RandomAugment, no_augment, replay_views
from kdstore.loader.scoring import score_train_set
from kdstore.loader.source import TrainData, as_data
from kdstore.loader.teacher_targets import LogitSource, cached_teacher, view_teacher
from kdstore.method.kd_weight import POLICIES
from kdstore.method.orderings import SCORERS, EpochPlan, Scores
from kdstore.method.variants import get_variant
from kdstore.options import to_dict, with_new_names
from kdstore.passes.inference import ModelInput
from kdstore.runtime import distributed
from kdstore.runtime.devices import resolve_device
from kdstore.runtime.precision import device_layout
from kdstore.runtime.transfer import upload
from kdstore.store.format import Store
from kdstore.store.mixes import LabelMix, resident_partners, view_label_mix

SPLITS = ("train", "val")
EVAL_BATCH = 512  # per process, on a validation split (no BatchNorm statistics are learnt there)
# options that say only how data are read, not which: a saved state may be loaded under others
HOW_READ = ("workers", "device", "loader", "teacher_rows")


def _config(config: LoaderConfig | None, options: dict[str, Any]) -> LoaderConfig:
    """`config` with `options` (keyword arguments of StoreLoader) applied; an unknown one is a
    one-line error with the closest name; a renamed option's old name works, with a DeprecationWarning."""
    options = with_new_names(LoaderConfig, options, warn=4)
    names = [f.name for f in dataclasses.fields(LoaderConfig)]
    for key in options:
        if key not in names:
            close = difflib.get_close_matches(key, names, 1)
            raise KdstoreError(
                f"unknown StoreLoader option {key!r}" + (f" (did you mean {close[0]}?)" if close else "")
            )
    cfg = dataclasses.replace(config or LoaderConfig(), **options)
    cfg.validate()
    return cfg


class StoreLoader:
    """One split of a store (or a path to one) as an iterable of Batch, one epoch per iteration.

    Options are LoaderConfig's fields, given as `config` and/or keywords (keywords win), with
    `kdstore train`'s defaults: variant, batch_size (global), epochs (for pacing), seed, lam, tau,
    pacing (+ pacing_a/b/growth/step_length), scorer, rescore_every, augment, view_mode (auto, replay,
    clean), loader (auto, device, ffcv), workers, device, teacher_rows. `teacher` replaces the
    store's targets by a live teacher, LogitSource(positions, images, view) -> logits (the online-KD
    baseline). The validation split is not augmented, has lambda 0, and its target is the teacher's
    validation logits (when the store has them)."""

    def __init__(
        self,
        store: Store | TrainData | str | Path,
        split: str = "train",
        config: LoaderConfig | None = None,
        *,
        teacher: LogitSource | None = None,
        **options: Any,
    ) -> None:
        if split not in SPLITS:
            raise KdstoreError(f"unknown split {split!r}; a store has {' and '.join(SPLITS)}")
        self.config = cfg = _config(config, options)
        self.split, self.data = split, as_data(store)
        self.variant = get_variant(cfg.variant)
        self.ctx, self.device = distributed.init(resolve_device(cfg.device))
        self.mean = torch.tensor(self.data.mean, device=self.device)
        self.std = torch.tensor(self.data.std, device=self.device)
        beton = self.data.train_beton if split == "train" else self.data.val_beton
        fields = read_int_fields(beton)
        self.sample_id, self.labels = fields["sample_id"], fields["label"]
        self.epoch = 0  # the epoch the next iteration reads (each iteration then moves it on)
        self._resume_batch = 0  # batches of that epoch a loaded state had done (load_state_dict)
        self._reading: list[int] | None = None  # [epoch, batches yielded] of the iteration under way
        self._skip: tuple[int, int] | None = None  # (epoch, batches) the loader underneath starts after
        self.aug: torch.Generator | None = None
        self.plan: EpochPlan | None = None  # the training split's order of each epoch
        self._aug_at_epoch: torch.Tensor | None = None
        if split == "train":
            self._set_up_train(teacher)
        else:
            self._set_up_val()

    # ---- set-up -------------------------------------------------------------------------------

    def _check_train(self, teacher: LogitSource | None) -> bool:
        """The checks of a training split; returns whether the store's views are replayed."""
        cfg, data, n = self.config, self.data, len(self.sample_id)
        if self.variant.needs_teacher and data.teacher_logits is None and teacher is None:
            raise KdstoreError(f"variant {self.variant.name} needs teacher logits from a store")
        mode = VIEW_MODES[cfg.view_mode]
        if mode.needs_views and data.views is None:
            raise KdstoreError("--view-mode replay: the store has no views (make one with `kdstore cache --views K`)")
        replay = mode.replay(data.views is not None, cfg.augment)
        views = data.views
        if replay and views is not None and views.sample and cfg.tau != views.sample_tau:
            raise KdstoreError(
                f"--tau {cfg.tau} differs from the temperature the store's views were sampled at ({views.sample_tau}); "
                f"pass --tau {views.sample_tau} (or --view-mode clean)"
            )
        kind = views.storage if replay and views is not None and teacher is None else "logits"
        if self.variant.needs_teacher and cfg.distill_term().spec.full_logits and kind != "logits":
            kept = {"topk": "only their top-k logits", "sample": "sampled class ids, not logits"}[kind]
            raise KdstoreError(
                f"--loss {cfg.loss} needs the teacher's full logits, and the store's views keep {kept} "
                "(train with --view-mode clean, or cache views without --topk/--sample)"
            )
        if self.variant.needs_teacher and cfg.distill_term().spec.pairs:
            count = views.count if replay and views is not None else 0
            if count < 2:
                raise KdstoreError(
                    f"--loss {cfg.loss} reads two stored views of every image: "
                    + (f"the store has {count} per image" if views is not None else "the store has no views")
                    + (
                        ""
                        if replay or views is None
                        else " and they are not replayed (--view-mode clean or --no-augment)"
                    )
                    + " (cache with --views K, K >= 2, and train with --view-mode auto or replay)"
                )
        world = self.ctx.world
        if cfg.batch_size % world:
            raise KdstoreError(f"--batch-size {cfg.batch_size} is not divisible by the {world} torchrun processes")
        if cfg.batch_size > n:
            raise KdstoreError(f"--batch-size {cfg.batch_size} is larger than the {n} training samples")
        if cfg.batch_size // world < 2:
            raise KdstoreError(
                f"--batch-size {cfg.batch_size} leaves fewer than 2 samples per process (BatchNorm needs 2)"
            )
        return replay

    def _set_up_train(self, teacher: LogitSource | None) -> None:
        cfg, data, ctx = self.config, self.data, self.ctx
        replay = self._check_train(teacher)
        distributed.agree(ctx, "the data", data.identity)
        n = len(self.sample_id)
        self.local = cfg.batch_size // ctx.world
        self.drop_last = ctx.world == 1 and n % cfg.batch_size == 1 and n > 1  # a lone last sample breaks BatchNorm
        scores = data.scores or Scores(np.ones(n, dtype=np.float32), Positions(np.arange(n)), "none")
        self.plan = EpochPlan(
            ordering=self.variant.ordering,
            pacing=cfg.pacing,
            params=cfg.pacing_params,
            labels=self.labels,
            batch_size=cfg.batch_size,
            length=distributed.usable_length(n, cfg.batch_size, ctx.world),
            epochs=cfg.epochs,
            seed=cfg.seed,
            scores=scores,
        )
        self._batches = len(batch_sizes(len(self.rank_order(0)), self.local, self.drop_last))
        self.inner, self.resident, self.loader_used = self._inner(self.data.train_beton, self._inner_order)
        self.aug = torch.Generator().manual_seed(cfg.seed + 1_000_003 * ctx.rank) if cfg.augment else None
        self.prepare, self.label_mix = self._prepare(replay)
        self.pair_prepare = self._prepare(replay, second=True)[0] if self._pairs() else None
        self.teacher = self._teacher_fn(replay, teacher)
        self.views_used = _views_used(data.views if replay else None)
        self.target_kind = _target_kind(self.teacher, teacher, data.views if replay else None)
        self.target_tau = cfg.tau  # sampled ids: the temperature they were drawn at (checked equal above)

    def _set_up_val(self) -> None:
        cfg, ctx, data = self.config, self.ctx, self.data
        self.local, self.drop_last, self.plan = cfg.batch_size, False, None
        self.positions = np.arange(ctx.rank, len(self.sample_id), ctx.world)
        self._batches = len(batch_sizes(len(self.positions), self.local, self.drop_last))
        self.inner, self.resident, self.loader_used = self._inner(data.val_beton, lambda epoch: self.positions)
        self.prepare, self.label_mix, self.views_used = no_augment(), None, {"mode": "clean"}
        self.pair_prepare = None
        logits = data.val_teacher_logits
        self.teacher = None if logits is None else cached_teacher(logits, self.device, cfg.teacher_rows)
        self.target_kind, self.target_tau = ("none" if logits is None else "logits"), cfg.tau

    def _inner(self, beton: Path, order_fn) -> tuple[Any, ResidentSplit | None, str]:
        """The loader under this one: the split held whole on the device (when --loader device, or
        auto and both splits fit), else FFCV's Loader. Returns it, the held split, and which."""
        cfg, data = self.config, self.data
        if holds(cfg.loader, (data.train_beton, data.val_beton), data.image_size, self.device):
            split = resident_split(beton, self.device, cfg.workers)
            return ResidentLoader(split, self.local, order_fn, self.drop_last), split, "device"
        return make_loader(beton, self.local, cfg.workers, order_fn, self.drop_last), None, "ffcv"

    def _pairs(self) -> bool:
        """Whether each batch carries a second view (the loss reads two, and there is a teacher)."""
        return self.variant.needs_teacher and self.config.distill_term().spec.pairs

    def _prepare(self, replay: bool, second: bool = False) -> tuple[Prepare, LabelMix | None]:
        """How a batch's images are prepared (loader/prepare.py) and, for mixed views, the partner
        labels of its CE term; `second`: its second view's (a two-view loss)."""
        cfg, data = self.config, self.data
        if not replay:
            if self.aug is None:
                return no_augment(), None
            sizes = functools.partial(_epoch_batch_sizes, self, self.local, self.drop_last)
            return RandomAugment(augmentation_for(data.image_size), data.image_size, self.aug, self.device, sizes), None
        assert data.views is not None
        if not data.views.mix:
            return replay_views(data.views, cfg.seed, self.device, cfg.teacher_rows, second=second), None
        split = self.resident  # the partner images: the resident training split (held for this when streaming)
        if split is None:
            if not fits(decoded_bytes(data.train_beton, data.image_size), self.device):
                raise KdstoreError(
                    "the store's views are mixed: their partner images must be held in memory, and this training "
                    "split does not fit (train with --view-mode clean)"
                )
            split = resident_split(data.train_beton, self.device, cfg.workers)
        partners = resident_partners(split.images, self.mean, self.std)
        label_mix = view_label_mix(data.views, split.labels, self.device, cfg.teacher_rows)
        return replay_views(data.views, cfg.seed, self.device, cfg.teacher_rows, partners, second), label_mix

    def _teacher_fn(self, replay: bool, teacher: LogitSource | None) -> LogitSource | None:
        """Where a batch's teacher targets come from (loader/teacher_targets.py): `teacher` when
        given (online KD), else the store's views or clean logits; None for a variant without one."""
        data, placement = self.data, self.config.teacher_rows
        if not self.variant.needs_teacher:
            return None
        if teacher is not None:
            return teacher
        if replay:
            assert data.views is not None
            return view_teacher(data.views, data.num_classes, self.device, placement)
        assert data.teacher_logits is not None
        return cached_teacher(data.teacher_logits, self.device, placement)

    # ---- what an epoch visits ---------------------------------------------------------------

    def rank_order(self, epoch: int) -> np.ndarray:
        """This rank's positions in `epoch`, in the order its batches hold them."""
        if self.plan is None:
            return self.positions
        return distributed.rank_positions(self.plan.order(epoch), self.config.batch_size, self.ctx.rank, self.ctx.world)

    def _inner_order(self, epoch: int) -> np.ndarray:
        """What the loader underneath visits: the rank's order, less the batches a resumed epoch has done."""
        order = self.rank_order(epoch)
        if self._skip is not None and self._skip[0] == epoch:
            return order[self._skip[1] * self.local :]
        return order

    def lambdas(self, epoch: int) -> np.ndarray:
        """lambda of each batch of `epoch` (docs/method.md; 0 on a validation split)."""
        if self.plan is None:
            return np.zeros(len(self))
        order = self.plan.order(epoch)  # global: a batch's lambda is the same on every rank
        confidence = self.plan.scores.confidence
        lams = POLICIES[self.variant.policy](
            confidence[order], self.config.batch_size, self.config.lam, float(confidence.max())
        )
        return lams[: len(self)]

    def loss(self) -> DistillLoss:
        """The distillation loss these batches are for (the `loss`, `loss_options`,
        `logit_standardize` and `tau` options), as kdstore.distill_loss gives it, on this
        loader's device: `loader.loss()(model(batch.images), batch)` is `kdstore train`'s loss,
        bit for bit (a two-view loss also takes pair_logits=model(batch.pair.images)). Hand its
        parameters() (ctkd's temperature) to the optimiser with the student's."""
        cfg = self.config
        return loss_of(cfg.distill_term(), cfg.tau).to(self.device)

    def __len__(self) -> int:
        """Batches per epoch on this rank (the same every epoch: counted once, at set-up)."""
        return self._batches

    @property
    def batch_size(self) -> int:
        """This rank's batch size (the global one over the torchrun processes)."""
        return self.local

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    def set_epoch(self, epoch: int) -> None:
        """Read `epoch` next, from its first batch (iteration otherwise goes on to the next epoch).
        Its order, views and lambdas are those of `epoch`; random augmentation goes on drawing from
        its generator (load_state_dict, not set_epoch, restores its draws exactly)."""
        if not _is_int(epoch) or epoch < 0:
            raise KdstoreError(f"set_epoch: the epoch must be an integer >= 0, got {epoch!r}")
        self.epoch, self._resume_batch, self._reading = int(epoch), 0, None

    # ---- the student scorer ------------------------------------------------------------------

    def rescore_due(self, epoch: int) -> bool:
        """Whether `scorer student` rebuilds the curriculum before `epoch` (call rescore then)."""
        return self.plan is not None and SCORERS[self.config.scorer](epoch, self.config.rescore_every)

    def rescore(
        self, model: torch.nn.Module, *, input_size: int | None = None, amp: bool = True, progress: bool = False
    ) -> Scores:
        """Score the clean training images with `model` (one inference pass; eval mode) and order
        the following epochs by its confidences (the curriculum rules of docs/method.md)."""
        assert self.plan is not None, "only a training split has an order to rescore"
        inp = ModelInput(
            model=model,
            mean=self.mean,
            std=self.std,
            input_size=input_size or self.data.image_size,
            device=self.device,
            amp=amp,
        )
        scores = score_train_set(
            inp, self.data, self.labels, self.config.workers, self.ctx, f"student@{self.epoch + 1}", progress
        )
        self.plan.set_scores(scores)
        return scores

    # ---- batches -----------------------------------------------------------------------------

    def assemble(
        self, epoch: int, index: int, pos: np.ndarray, images: torch.Tensor, labels: torch.Tensor, lam: float
    ) -> Batch:
        """A Batch from raw (B, H, W, 3) uint8 images at positions `pos` of this split: normalised,
        prepared (augmented, or the stored views replayed), with their teacher target, on the device."""
        clean = normalize(upload(images, self.device), self.mean, self.std)
        x, view = self.prepare(epoch, pos, clean)
        y = upload(labels, self.device)
        target, pair = self._target(pos, x, view), None
        if self.pair_prepare is not None:
            x2, view2 = self.pair_prepare(epoch, pos, clean)
            assert view2 is not None
            pair = Pair(images=device_layout(x2), target=self._target(pos, x2, view2), views=view2)
        return Batch(
            images=device_layout(x),
            labels=y,
            ids=self.sample_id[pos],
            positions=pos,
            lam=float(lam),
            target=target,
            epoch=epoch,
            index=index,
            pair=pair,
        )

    def _target(self, pos: np.ndarray, x: torch.Tensor, view: np.ndarray | None) -> Target:
        """The teacher's target for images x (positions pos, stored views `view`)."""
        logits = None if self.teacher is None else self.teacher(pos, x, view)
        mix = None if self.label_mix is None or view is None else self.label_mix(pos, view)
        return Target(
            kind=self.target_kind,
            logits=logits,
            partner_labels=None if mix is None else mix[0],
            label_weight=None if mix is None else mix[1],
            tau=self.target_tau,
        )

    def __iter__(self) -> Iterator[Batch]:
        epoch, skip = self.epoch, self._resume_batch
        reading = [epoch, skip]
        self.epoch, self._resume_batch, self._reading = epoch + 1, 0, reading
        self._skip = (epoch, skip) if skip else None
        if not skip and self.aug is not None:
            self._aug_at_epoch = self.aug.get_state()  # a state saved mid-epoch resumes from here
        if isinstance(self.prepare, RandomAugment):
            self.prepare.begin(skip * self.local)
        order, lams = self.rank_order(epoch), self.lambdas(epoch)
        self.inner.next_epoch = epoch
        with epoch_of(self.inner) as batches:
            for b, (images, labels, ids) in enumerate(batches, start=skip):
                pos = order[b * self.local : b * self.local + len(ids)]
                if not np.array_equal(self.sample_id[pos], ids.numpy()):
                    raise KdstoreError(
                        f"internal error: batch {b} of epoch {epoch + 1} holds other samples than its teacher rows"
                    )
                batch = self.assemble(epoch, b, pos, images, labels, float(lams[b]))
                reading[1] = b + 1
                yield batch
        self._reading = None

    # ---- resuming ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Where the loader stands (the epoch and batch it reads next, the augmentation's random
        state, a student scorer's scores) and what it was opened with, for an exact resume."""
        reading = self._reading
        mid_epoch = reading is not None and 0 < reading[1] < len(self)
        epoch, batch = (reading[0], reading[1]) if mid_epoch and reading is not None else (self.epoch, 0)
        aug = None if self.aug is None else (self._aug_at_epoch if mid_epoch else self.aug.get_state())
        scores = self.plan.scores if self.plan is not None and self.plan.scores.computed else None
        return {
            "epoch": epoch,
            "batch": batch,
            "augment": aug,
            "scores": None if scores is None else _scores_state(scores),
            "split": self.split,
            "data": self.data.identity,
            "options": {k: v for k, v in to_dict(self.config).items() if k not in HOW_READ},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where `state` (state_dict() of a loader over the same data, split and options)
        stood: the next iteration reads its epoch from its next batch."""
        problem = self._state_problem(state)
        if problem:
            raise KdstoreError(f"this loader state {problem}")
        mine = self.state_dict()
        changed = sorted(k for k in mine["options"] if state["options"].get(k) != mine["options"][k])
        if state.get("split") != self.split or state.get("data") != self.data.identity:
            raise KdstoreError("this loader state was saved over other data (another store or split)")
        if changed:
            raise KdstoreError(f"this loader state was saved with different {', '.join(changed)}")
        self.set_epoch(int(state["epoch"]))
        self._resume_batch = int(state["batch"])
        if self.aug is not None and state.get("augment") is not None:
            self.aug.set_state(state["augment"])
            self._aug_at_epoch = state["augment"]
        if state.get("scores") is not None and self.plan is not None:
            saved = state["scores"]
            self.plan.set_scores(
                Scores(
                    saved["confidence"].numpy(),
                    Positions(saved["curriculum_positions"].numpy().astype(np.int64)),
                    str(saved["source"]),
                    True,
                )
            )

    def _state_problem(self, state: Any) -> str | None:
        """What makes `state` unloadable here, said after "this loader state" (None when nothing)."""
        if not isinstance(state, dict):
            return f"is a {type(state).__name__}, not the dict StoreLoader.state_dict() returns"
        missing = [k for k in ("epoch", "batch", "split", "data", "options") if k not in state]
        if missing:
            return f"lacks {', '.join(missing)} (it is not a StoreLoader.state_dict())"
        epoch, batch = state["epoch"], state["batch"]
        if not _is_int(epoch) or not 0 <= epoch <= self.config.epochs:
            return f"has epoch {epoch!r}, outside 0..{self.config.epochs}"
        if not _is_int(batch) or not 0 <= batch < max(1, len(self)):
            return f"has batch {batch!r}, outside 0..{len(self) - 1} (an epoch has {len(self)} batches)"
        if not isinstance(state["options"], dict):
            return "has no options (it is not a StoreLoader.state_dict())"
        return None

    def val(self) -> "StoreLoader":
        """The validation split of the same store, with these options (batches of EVAL_BATCH per process)."""
        return StoreLoader(self.data, "val", dataclasses.replace(self.config, batch_size=EVAL_BATCH))


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _epoch_batch_sizes(loader: StoreLoader, local: int, drop_last: bool, epoch: int) -> list[int]:
    """The sizes of this rank's batches in `epoch`, in order (what its loader yields)."""
    return batch_sizes(len(loader.rank_order(epoch)), local, drop_last)


def _views_used(views) -> dict[str, Any]:
    """What a run replays: the store's views (count and storage), or none (clean logits)."""
    if views is None:
        return {"mode": "clean"}
    return {"mode": "replay", "count": views.count, "topk": views.topk, "sample": views.sample, "mix": views.mix}


def _target_kind(fn: LogitSource | None, given: LogitSource | None, views) -> str:
    """Target.kind of a training split's batches (batch.TARGET_KINDS)."""
    if fn is None:
        return "none"
    if given is not None:
        return "online"
    if views is None or views.logits is not None:
        return "logits"
    return "sampled" if views.sample_ids is not None else "topk"


def _scores_state(scores: Scores) -> dict[str, Any]:
    """A student scorer's scores as tensors (a checkpoint loads with weights_only)."""
    return {
        "confidence": torch.from_numpy(np.asarray(scores.confidence, dtype=np.float32)),
        "curriculum_positions": torch.from_numpy(np.asarray(scores.curriculum_positions, dtype=np.int64)),
        "source": scores.source,
    }
