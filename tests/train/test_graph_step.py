"""The graph step's parts that run without CUDA: the static buffers a batch is copied into (the
step computed on them equals the step on the batch, bit for bit), what keeps a step from being
captured, and that the CPU keeps the eager step. The capture itself is checked on CUDA
(tests/train/test_gpu.py)."""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from kdstore.loader.batch import Batch, Pair, Target
from kdstore.train.graph_step import GraphStep, StaticBatch, blocker, with_graph
from kdstore.train.step import Step, cosine, sgd


def _batch(n: int = 8, lam: float = 0.3, seed: int = 0, logits: bool = True) -> Batch:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 8, 8, generator=g).contiguous(memory_format=torch.channels_last)
    return Batch(
        images=images,
        labels=torch.randint(0, 5, (n,), generator=g),
        ids=np.arange(n),
        positions=np.arange(n),
        lam=lam,
        target=Target(kind="logits", logits=torch.randn(n, 5, generator=g) if logits else None, tau=4.0),
        epoch=0,
        index=0,
    )


def _step(seed: int = 0) -> Step:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 5))
    optimizer = sgd([{"params": list(model.parameters()), "lr": 0.1}], 0.9, 5e-4)
    return Step(model=model, optimizer=optimizer, scheduler=cosine(optimizer, 10), device=torch.device("cpu"), tau=4.0)


def test_a_step_on_the_static_buffers_equals_the_step_on_the_batch():
    batches = [_batch(seed=s, lam=lam) for s, lam in ((0, 0.3), (1, 0.9), (2, 0.0))]
    static = StaticBatch.like(batches[0])
    assert static.images.stride() == batches[0].images.stride()  # channels_last kept
    direct, buffered = _step(), _step()
    for b in batches:
        static.fill(b)
        fed = static.batch()
        assert fed.images is static.images and fed.lam.tolist() == [np.float32(1 - b.lam), np.float32(b.lam)]
        a, c = direct(b), buffered(fed)  # lambda as a device tensor, as the graph reads it
        assert all(torch.equal(a[k], c[k]) for k in a)
    for p, q in zip(direct.model.state_dict().values(), buffered.model.state_dict().values()):
        assert torch.equal(p, q)  # weights, BatchNorm statistics and counter


def test_a_batch_of_another_shape_does_not_fit_and_lambda_is_checked_as_it_is_filled():
    static = StaticBatch.like(_batch(8))
    assert static.fits(_batch(8, seed=3)) and not static.fits(_batch(5))  # the partial last batch: eager
    assert not static.fits(_batch(8, logits=False))
    with pytest.raises(ValueError, match="lambda must be in"):
        static.fill(_batch(8, lam=1.5))
    unguided = StaticBatch.like(_batch(8, logits=False))
    unguided.fill(_batch(8, logits=False, lam=0.0))
    assert unguided.batch().lam == 0.0  # no teacher term: lambda stays a number


def test_what_keeps_a_step_from_being_captured():
    step = _step()
    assert blocker(step, _batch()) == "the device is not CUDA"
    cuda_like = copy.copy(step)
    cuda_like.device = torch.device("cuda")
    assert blocker(cuda_like, _batch()) == "the optimiser is not fused"
    cuda_like.optimizer = torch.optim.SGD(step.model.parameters(), lr=0.1, momentum=0.9, fused=True)  # sgd() on CUDA
    assert blocker(cuda_like, _batch()) is None
    two = _batch()
    two.pair = Pair(images=two.images, target=two.target, views=np.zeros(8))
    assert blocker(cuda_like, two) == "the loss reads two views (two forward passes)"
    mixed = _batch()
    mixed.target = Target(
        kind="logits", logits=mixed.target.logits, partner_labels=mixed.labels, label_weight=torch.ones(8)
    )
    assert blocker(cuda_like, mixed) == "mixed views"
    next(cuda_like.model.parameters()).requires_grad_(False)
    assert blocker(cuda_like, _batch()) == "some parameters are frozen (--freeze-epochs)"


def test_the_cpu_keeps_the_eager_step_and_cuda_gets_the_graph_step():
    step = _step()
    assert with_graph(step, True) is step and with_graph(step, False) is step
    on_cuda = copy.copy(step)
    on_cuda.device = torch.device("cuda")
    graph = with_graph(on_cuda, True)
    assert isinstance(graph, GraphStep) and graph.model is step.model and graph.optimizer is step.optimizer
    assert with_graph(on_cuda, False) is on_cuda
