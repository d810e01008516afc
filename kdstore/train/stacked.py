"""Students stacked into one model: N CIFAR networks of one architecture trained as a single
network of grouped convolutions (`kdstore sweep --concurrent N --stack`; on by default on CUDA).

A small student's step is bound by kernel launches, not arithmetic (benchmarks/RESULTS.md, "GPU:
one H200"). Stacked, N students take one launch per layer between them:

- every convolution becomes one with N times the channels and N times the groups (student n's
  filters are block n), so each student's channels see only its own: the input is the students'
  own batches side by side along the channels (B, N*3, H, W), each from its own loader (order,
  pacing, augmentation draws);
- a BatchNorm over N*C channels is exactly per-student BatchNorm (statistics are per channel);
  ReLU, the residual sums and the average pool are per channel too; the classifier is a batched
  matrix product (GroupedLinear) of each student's features with its own weights;
- each student's loss is its own (variant, lambda, distillation loss, temperature) on its block of
  the logits; their sum is backpropagated, so each student's gradient is its own;
- SGD with momentum and weight decay is elementwise: one optimiser over the stacked tensors is
  each student's own (they share the learning rate and its schedule; checked).

The stack is built from the students' models and optimisers at the start of each epoch and written
back into them at its end (`write_back`), so validation, checkpoints, `--resume` and a student's
run directory are exactly those of a run trained alone. The arithmetic is the same but for the
order of some sums inside the grouped kernels: metrics agree with separate runs to floating-point
tolerance, not bit for bit (tests/train/test_stacked.py).

Which networks: kdstore's CIFAR networks (models/cifar.py), whose forward passes mix channels only
in their convolutions and classifier. Where a group cannot be stacked (another architecture,
--compile, a loss with learnt parameters or two views, --freeze-epochs, fp16 loss scaling,
students with different optimiser settings or schedule positions), `blocker` says why in one line
and the students take their steps in turn. On the CPU the grouped kernels were slower than the
separate ones (measured: 3 cifar_resnet8 steps at batch 128, 305 ms stacked against 208 ms in turn),
so there `auto` keeps the students' own steps."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from kdstore.loader.batch import Batch
from kdstore.models.cifar import CIFAR_ARCHS
from kdstore.runtime.precision import autocast, device_layout, for_device
from kdstore.train.build import Run
from kdstore.train.step import sgd

# The modules a stackable network may hold: those whose parameters are stacked (below), and
# those that act on each channel alone
STACKED_TYPES = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)
PER_CHANNEL = (nn.ReLU, nn.Identity, nn.AdaptiveAvgPool2d)
# What the students trained in one stack share beyond SHARED (concurrent.py): one optimiser over the stack
SAME_OPTIMISER = ("lr", "head_lr", "momentum", "weight_decay", "epochs")


class GroupedLinear(nn.Module):
    """N linear classifiers at once: (B, N*C) features, student n's in block n -> (B, N*K) logits."""

    def __init__(self, n: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.n = n
        self.weight = nn.Parameter(torch.empty(n, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(n, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        per_student = x.reshape(b, self.n, -1).transpose(0, 1)  # (N, B, C)
        out = torch.baddbmm(self.bias.unsqueeze(1), per_student, self.weight.transpose(1, 2))  # (N, B, K)
        return out.transpose(0, 1).reshape(b, -1)


def _stacked_module(mod: nn.Module, n: int) -> nn.Module | None:
    """The module standing for n copies of `mod` (its tensors filled later), or None if `mod` has none."""
    if isinstance(mod, nn.Conv2d):
        if mod.padding_mode != "zeros":
            return None
        return nn.Conv2d(
            mod.in_channels * n,
            mod.out_channels * n,
            mod.kernel_size,  # type: ignore[arg-type]
            mod.stride,  # type: ignore[arg-type]
            mod.padding,  # type: ignore[arg-type]
            mod.dilation,  # type: ignore[arg-type]
            mod.groups * n,
            bias=mod.bias is not None,
        )
    if isinstance(mod, nn.BatchNorm2d):
        return nn.BatchNorm2d(mod.num_features * n, mod.eps, mod.momentum, mod.affine, mod.track_running_stats)
    if isinstance(mod, nn.Linear):
        return GroupedLinear(n, mod.in_features, mod.out_features)
    return None


def unstackable(model: nn.Module) -> str | None:
    """Why `model` cannot be stacked (None: it can)."""
    kinds = tuple(cls for cls, _ in CIFAR_ARCHS.values())
    if type(model) not in kinds:
        return f"{type(model).__name__} is not one of kdstore's CIFAR networks (models/cifar.py)"
    for name, mod in model.named_modules():
        if isinstance(mod, STACKED_TYPES):
            if isinstance(mod, nn.Conv2d) and mod.padding_mode != "zeros":
                return f"{name} pads with {mod.padding_mode!r}"
        elif list(mod.parameters(recurse=False)) or list(mod.buffers(recurse=False)):
            return f"{name} ({type(mod).__name__}) holds tensors that cannot be stacked"
        elif not list(mod.children()) and not isinstance(mod, PER_CHANNEL):
            return f"{name} ({type(mod).__name__}) is not known to act on each channel alone"
    return None


def stack_models(models: list[nn.Module]) -> nn.Module:
    """One network computing all of `models` (module docstring); its tensors are not yet the
    students' (a Stack fills them, Slot.load)."""
    n = len(models)
    stacked = copy.deepcopy(models[0])
    for name, mod in list(stacked.named_modules()):
        new = _stacked_module(mod, n)
        if new is None:
            continue
        parent, _, attr = name.rpartition(".")
        setattr(stacked.get_submodule(parent) if parent else stacked, attr, new)
    return stacked.to(next(models[0].parameters()).dtype)


@dataclass
class Slot:
    """One tensor of the students (a parameter or buffer), stacked: student n's is `of(n)`."""

    name: str
    stacked: torch.Tensor
    own: list[torch.Tensor]  # each student's tensor of that name

    def of(self, n: int) -> torch.Tensor:
        return self.stacked.view(len(self.own), *self.own[0].shape)[n]

    def load(self) -> None:
        with torch.no_grad():
            self.stacked.copy_(torch.stack(self.own).view(self.stacked.shape))

    def write_back(self) -> None:
        with torch.no_grad():
            for n, t in enumerate(self.own):
                t.copy_(self.of(n))


def blocker(runs: list[Run]) -> str | None:
    """Why these students cannot take their steps as one stack (None: they can)."""
    first = runs[0]
    why = unstackable(first.model)
    if why:
        return why
    for run in runs:
        cfg, step = run.cfg, run.step
        if cfg.compile:
            return "--compile"
        if step.loss is not None and (list(step.loss.parameters()) or step.loss.spec.pairs):
            return f"--loss {cfg.loss} (learnt parameters or two views)"
        if cfg.freeze_epochs:
            return "--freeze-epochs"
        if step.scaler.is_enabled():
            return "fp16 loss scaling"
        if run.ctx.active:
            return "torchrun"
        for name in SAME_OPTIMISER:
            if getattr(cfg, name) != getattr(first.cfg, name):
                return f"the students differ in {name}"
        if step.scheduler.last_epoch != first.step.scheduler.last_epoch:
            return "the students stand at different points of their schedules"
    return None


class Stack:
    """The students of `runs` as one network and one optimiser, for an epoch (module docstring)."""

    def __init__(self, runs: list[Run]) -> None:
        self.runs = runs
        self.device = runs[0].device
        self.model = for_device(stack_models([r.model for r in runs]), self.device)
        own = [dict(r.model.named_parameters()) for r in runs]
        own_buffers = [dict(r.model.named_buffers()) for r in runs]
        self.params = [Slot(k, p, [o[k] for o in own]) for k, p in self.model.named_parameters()]
        # BatchNorm's counters are one number for all (the same steps); each student's moves by as much
        self.buffers = [
            Slot(k, b, [o[k] for o in own_buffers])
            for k, b in self.model.named_buffers()
            if not k.endswith("num_batches_tracked")
        ]
        self.counters = [
            (b, [o[k] for o in own_buffers]) for k, b in self.model.named_buffers() if k.endswith("num_batches_tracked")
        ]
        for slot in self.params + self.buffers:
            slot.load()
        for b, own_counters in self.counters:
            b.fill_(int(own_counters[0]))
        self._start = [int(b) for b, _ in self.counters]
        self.optimizer = self._optimizer()

    def _optimizer(self) -> torch.optim.Optimizer:
        """SGD over the stacked tensors, in the students' parameter groups (body, head), with their
        momentum buffers stacked."""
        first = self.runs[0].step.optimizer
        group_of = {id(p): g for g, group in enumerate(first.param_groups) for p in group["params"]}
        groups: list[dict[str, Any]] = [{"params": [], "lr": g["lr"]} for g in first.param_groups]
        for slot in self.params:
            groups[group_of[id(slot.own[0])]]["params"].append(slot.stacked)
        cfg = self.runs[0].cfg
        optimizer = sgd(groups, cfg.momentum, cfg.weight_decay)
        for slot in self.params:
            bufs = [self._momentum(r, p) for r, p in zip(self.runs, slot.own)]
            if any(b is not None for b in bufs):  # a student yet to step: zeros (its first step is then the same)
                full = [b if b is not None else torch.zeros_like(p) for b, p in zip(bufs, slot.own)]
                buf = torch.empty_like(slot.stacked)  # the parameter's memory layout (fused SGD's wish)
                optimizer.state[slot.stacked]["momentum_buffer"] = buf.copy_(torch.stack(full).view(buf.shape))
        return optimizer

    @staticmethod
    def _momentum(run: Run, p: torch.Tensor) -> torch.Tensor | None:
        return run.step.optimizer.state.get(p, {}).get("momentum_buffer")

    def step(self, batches: list[Batch]) -> list[dict[str, torch.Tensor]]:
        """One optimiser step of every student on its own batch; returns each one's terms (as Step's)."""
        runs, n = self.runs, len(self.runs)
        self.optimizer.zero_grad(set_to_none=True)
        first = runs[0].step
        with autocast(self.device, first.amp):
            images = torch.cat([r.step._input(b.images) for r, b in zip(runs, batches)], dim=1)
            logits = self.model(device_layout(images)).view(len(batches[0]), n, -1)
        losses, out = zip(*(run.step.terms(logits[:, i], batch) for i, (run, batch) in enumerate(zip(runs, batches))))
        torch.stack(losses).sum().backward()
        for group, own in zip(self.optimizer.param_groups, first.optimizer.param_groups):
            group["lr"] = own["lr"]  # the students' schedules (equal: blocker) set this step's rate
        self.optimizer.step()
        with warnings.catch_warnings():  # the students' own optimisers do not step: the stack's does
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
            for run in runs:
                run.step.scheduler.step()
        return list(out)

    def write_back(self) -> None:
        """The stack's parameters, buffers, BatchNorm counters and momentum into each student's own
        model and optimiser (module docstring)."""
        for slot in self.params + self.buffers:
            slot.write_back()
        with torch.no_grad():
            for (b, own), start in zip(self.counters, self._start):
                for t in own:
                    t.add_(int(b) - start)
        for slot in self.params:
            buf = self.optimizer.state.get(slot.stacked, {}).get("momentum_buffer")
            if buf is None:
                continue
            for n, (run, p) in enumerate(zip(self.runs, slot.own)):
                mine = buf.view(len(slot.own), *p.shape)[n]
                state = run.step.optimizer.state[p]
                if state.get("momentum_buffer") is None:
                    state["momentum_buffer"] = torch.empty_like(p).copy_(mine)
                else:  # in place: a captured graph of the student's own step reads this very tensor
                    state["momentum_buffer"].copy_(mine)
