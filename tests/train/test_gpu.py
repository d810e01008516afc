"""CUDA only (skipped elsewhere): the steady-state training step never makes the host wait for
the device, for offline KD from clean logits and from replayed views, with the data resident."""

import numpy as np
import pytest
import torch

from kdstore.store.format import Store
from kdstore.train import loop as train
from kdstore.train.config import TrainConfig
from kdstore.train.graph_step import WARMUP

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; this machine has none")


@pytest.mark.parametrize("variant", ["kd", "kd-cl-sr", "unguided"])
def test_steady_state_step_makes_no_host_sync(variant, digits_store, tmp_path):
    cfg = TrainConfig(
        out=str(tmp_path / "run"),
        store=str(digits_store),
        variant=variant,
        device="cuda",
        loader="device",
        teacher_rows="device",
        batch_size=128,
        epochs=2,
        progress=False,
        tensorboard=False,
    )
    run = train.build_run(cfg, train.data_from_store(Store.open(digits_store)), cfg.student, "student")
    order, local = run.rank_order(0), run.train_loader.batch_size
    batches = list(run.loader.inner)  # the epoch's raw gathers are queued here, outside the checked steps
    run.step.model.train()
    try:
        for b, (images, labels, _) in enumerate(batches):
            pos = order[b * local : b * local + len(images)]
            if b == WARMUP + 2:  # warm-up and the graph's capture done: from here on no step may wait for the device
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("error")
            terms = run.raw_step(0, pos, images, labels, 0.5)  # the loader's assembly, then the step
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert b >= WARMUP + 4 and np.isfinite(terms["loss"].item())


def _losses(store, out, steps: int, **kw):
    """The training loss of the first `steps` steps of a kd run on the digits store, and its step."""
    cfg = TrainConfig(
        out=str(out), store=str(store), device="cuda", loader="device", batch_size=128, epochs=12, progress=False, **kw
    )
    run = train.build_run(cfg, train.data_from_store(Store.open(store)), cfg.student, "student")
    losses, epoch = [], 0
    run.step.model.train()
    while len(losses) < steps:
        run.loader.set_epoch(epoch)
        losses += [run.step(batch)["loss"] for batch in run.loader]
        epoch += 1
    return [x.item() for x in losses[:steps]], run.step


@pytest.mark.parametrize("amp", [True, False])
def test_the_graph_step_follows_the_eager_step(amp, digits_store, tmp_path):
    graph, step = _losses(digits_store, tmp_path / "graph", 100, amp=amp, cuda_graph=True)
    assert step.captured and step.off is None  # the graph really ran (digits' last batch of 29 is eager)
    eager, plain = _losses(digits_store, tmp_path / "eager", 100, amp=amp, cuda_graph=False)
    assert not hasattr(plain, "captured")
    tolerance = 1e-3 if amp else 1e-5
    assert np.allclose(graph, eager, rtol=tolerance, atol=0), max(abs(a - b) / abs(b) for a, b in zip(graph, eager))
