"""CUDA only (skipped elsewhere): the steady-state training step never makes the host wait for
the device, for offline KD from clean logits and from replayed views, with the data resident."""

import numpy as np
import pytest
import torch

from kdstore.store.format import Store
from kdstore.train import loop as train
from kdstore.train.config import TrainConfig

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
            if b == 2:  # warm-up done (allocator, cuDNN autotuning): from here on no step may wait for the device
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("error")
            terms = run.raw_step(0, pos, images, labels, 0.5)  # the loader's assembly, then the step
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert b >= 4 and np.isfinite(terms["loss"].item())
