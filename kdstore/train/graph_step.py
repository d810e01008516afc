"""A training step captured as one CUDA graph (`train --cuda-graph`, on by default on CUDA).

A small student's step is bound by kernel launches, not arithmetic (benchmarks/RESULTS.md, "GPU:
one H200": 417 launches a step, the GPU busy 4.0 ms of 6.0). GraphStep records the whole step
(forward, the distillation loss, backward and the optimiser's update) once, and replays it from
static buffers for every batch of the same shape:

- the batch (images, labels, the teacher's logits) is copied into the graph's input buffers, and
  lambda (as 1 - lambda and lambda, for the same products as the eager step's) and each
  parameter group's learning rate are device tensors filled before each replay
  (the cosine schedule still steps on the host, in float64, exactly as the eager step's);
- SGD is fused and has no step counter (nothing on the host to capture); BatchNorm's running
  statistics and counters are updated in place by the graph; bf16 autocast needs no GradScaler;
- the first WARMUP steps run eagerly on a side stream (cuDNN's autotuning, the optimiser's
  momentum buffers), then the next batch is captured and replayed; nothing in the step reads a
  value back to the host;
- a batch of another shape (the last, partial batch of an epoch) takes the eager step, which
  shares the model and the optimiser with the graph: it is neither dropped nor padded;
- a loss that reads the epoch (dkd's warm-up) is captured again when the epoch changes.

Where a step cannot be captured (not CUDA, DDP, --compile, two views, mixed views, an online
teacher, fp16 loss scaling, a loss with learnt parameters, frozen parameters, or a failed
capture), one line says why and every step runs eagerly. `GraphStep.blocker` is the rule; tests/train/test_graph_step.py
checks the buffers on the CPU and the graph against the eager step on CUDA."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from kdstore.loader.batch import Batch
from kdstore.method.losses import check_lam
from kdstore.runtime.console import say
from kdstore.train.step import Step

WARMUP = 3  # eager steps on a side stream before the capture
READS_EPOCH = ("dkd",)  # losses whose value depends on the epoch: captured again each epoch


@dataclass(kw_only=True)
class StaticBatch:
    """A graph's inputs: device buffers shaped like the captured batch, into which each batch is
    copied (`fill`); `batch()` is the Batch the graph was captured on (these very tensors)."""

    images: torch.Tensor
    labels: torch.Tensor
    logits: torch.Tensor | None  # the teacher's, when the batch has a KD term
    lam: torch.Tensor  # (1 - lambda, lambda), float32: what method.losses.weigh reads from a graph
    template: Batch  # the captured batch's other fields (epoch, target kind and temperature)

    @classmethod
    def like(cls, batch: Batch) -> "StaticBatch":
        logits = batch.target.logits
        return cls(
            images=torch.empty_like(batch.images),  # the same memory layout (channels_last)
            labels=torch.empty_like(batch.labels),
            logits=None if logits is None else torch.empty_like(logits),
            lam=torch.zeros(2, dtype=torch.float32, device=batch.images.device),
            template=batch,
        )

    def fits(self, batch: Batch) -> bool:
        """Whether `batch` can be copied in: the same shapes, layout, dtypes and target kind."""
        t = batch.target.logits

        def same(a: torch.Tensor, b: torch.Tensor) -> bool:
            return a.shape == b.shape and a.dtype == b.dtype and a.stride() == b.stride() and a.device == b.device

        logits_fit = t is None if self.logits is None else (t is not None and same(self.logits, t))
        return (
            same(self.images, batch.images)
            and same(self.labels, batch.labels)
            and logits_fit
            and batch.target.kind == self.template.target.kind
        )

    def fill(self, batch: Batch) -> None:
        """Copy `batch` into the buffers (queued on the current stream: the host does not wait)."""
        check_lam(batch.lam)
        self.images.copy_(batch.images, non_blocking=True)
        self.labels.copy_(batch.labels, non_blocking=True)
        if self.logits is not None and batch.target.logits is not None:
            self.logits.copy_(batch.target.logits, non_blocking=True)
        lam = float(batch.lam)
        self.lam[0].fill_(1.0 - lam)  # rounded from the double, as the eager step's (1 - lam) * ce
        self.lam[1].fill_(lam)

    def batch(self) -> Batch:
        """The batch the graph computes on: these buffers, lambda a device tensor (a batch
        without teacher logits keeps lambda 0, a number)."""
        b = self.template
        target = dataclasses.replace(b.target, logits=self.logits)
        lam: Any = self.lam if self.logits is not None else 0.0
        return dataclasses.replace(b, images=self.images, labels=self.labels, target=target, lam=lam)


def blocker(step: Step, batch: Batch) -> str | None:
    """Why the training step cannot be captured for batches like `batch` (None: it can)."""
    model = step.model
    checks = (
        (step.device.type != "cuda", "the device is not CUDA"),
        (isinstance(model, nn.parallel.DistributedDataParallel), "DDP synchronises gradients from the host"),
        (hasattr(model, "_orig_mod"), "--compile makes its own graphs"),
        (batch.pair is not None, "the loss reads two views (two forward passes)"),
        (batch.target.mix is not None, "mixed views"),
        (batch.target.kind == "online", "a live teacher runs on every batch"),
        (step.scaler.is_enabled(), "fp16 needs a GradScaler (this GPU has no bf16)"),
        (step.loss is not None and any(True for _ in step.loss.parameters()), "the loss learns parameters"),
        (not all(g.get("fused") for g in step.optimizer.param_groups), "the optimiser is not fused"),
        (not all(p.requires_grad for p in model.parameters()), "some parameters are frozen (--freeze-epochs)"),
    )
    return next((why for bad, why in checks if bad), None)


@dataclass(kw_only=True)
class GraphStep(Step):
    """Step, with the work on the device replayed from one CUDA graph (module docstring)."""

    warmup: int = WARMUP
    off: str | None = None  # why the graph is not used (then every step is eager)
    _checked: bool = field(default=False, init=False)
    _eager_done: int = field(default=0, init=False)
    _graph: Any = field(default=None, init=False)
    _static: StaticBatch | None = field(default=None, init=False)
    _out: dict[str, torch.Tensor] = field(default_factory=dict, init=False)
    _lrs: list[torch.Tensor] = field(default_factory=list, init=False)
    _epoch: int | None = field(default=None, init=False)

    @property
    def captured(self) -> bool:
        return self._graph is not None

    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]:
        if not self._checked:
            self._checked = True
            self.off = self.off or blocker(self, batch)
            if self.off is not None:
                say(f"note: the training step runs eagerly, without a CUDA graph: {self.off}")
        if self.off is not None or (self._static is not None and not self._static.fits(batch)):
            return super().__call__(batch)  # a partial last batch: eager, on the same model and optimiser
        if self._eager_done < self.warmup:
            self._eager_done += 1
            return self._side_stream(batch)
        if self._graph is None or (self._reads_epoch() and batch.epoch != self._epoch):
            if not self._capture(batch):
                return super().__call__(batch)
        assert self._static is not None
        self._static.fill(batch)
        for t, group in zip(self._lrs, self.optimizer.param_groups):
            t.fill_(group["lr"])
        self._graph.replay()
        self.scheduler.step()
        return {k: v.clone() for k, v in self._out.items()}  # the next replay overwrites the graph's own

    def _reads_epoch(self) -> bool:
        return self.loss is not None and self.loss.spec.name in READS_EPOCH

    def _side_stream(self, batch: Batch) -> dict[str, torch.Tensor]:
        """An eager step on a side stream (warm-up before the capture, as CUDA graphs want)."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            out = super().__call__(batch)
        torch.cuda.current_stream(self.device).wait_stream(side)
        return out

    def _capture(self, batch: Batch) -> bool:
        """Record the step on `batch`'s shapes; False (and eager from now on) if it cannot be."""
        self._graph = None
        static = StaticBatch.like(batch)
        static.fill(batch)
        groups = self.optimizer.param_groups
        rates = [g["lr"] for g in groups]
        self._lrs = [torch.tensor(float(r), dtype=torch.float32, device=self.device) for r in rates]
        graph = torch.cuda.CUDAGraph()
        try:
            for g, t in zip(groups, self._lrs):
                g["lr"] = t  # read by the captured update from the device
            self.optimizer.zero_grad(set_to_none=True)  # the graph allocates (and then owns) the gradients
            torch.set_autocast_cache_enabled(False)  # casts made inside the graph, as CUDA graphs with autocast want
            with torch.cuda.graph(graph):
                self._out = self.compute(static.batch())
        except RuntimeError as e:
            self.off = f"the capture failed ({str(e).splitlines()[0][:160]})"
            say(f"note: the training step runs eagerly, without a CUDA graph: {self.off}")
            return False
        finally:
            torch.set_autocast_cache_enabled(True)
            for g, r in zip(groups, rates):
                g["lr"] = r  # the schedule steps a number on the host; replay reads its copy
        self._graph, self._static, self._epoch = graph, static, batch.epoch
        return True


def with_graph(step: Step, enabled: bool) -> Step:
    """`step` as a GraphStep when asked for (`--cuda-graph`) and on CUDA; on the CPU it stays
    the eager Step (no line: there is nothing to capture there)."""
    if not enabled or step.device.type != "cuda":
        return step
    fields = {f.name: getattr(step, f.name) for f in dataclasses.fields(Step)}
    return GraphStep(**fields)
