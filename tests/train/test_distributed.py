"""torchrun on the CPU (gloo, 2 processes): cache and train match a single process."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch.distributed

from kdstore.cache import write as cache
from kdstore.cache.config import CacheConfig
from kdstore.method.kd_weight import POLICIES
from kdstore.method.orderings import EpochPlan, Scores
from kdstore.method.pacing import PacingParams
from kdstore.method.variants import VARIANTS
from kdstore.store.format import Store
from tests.helpers import make_imagefolder

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
        reason="torch.distributed with gloo is not available",
    ),
]

BATCH = 8  # 30 train images -> global batches of 8, 8, 8, 6; 4 + 3 per rank in the last one


def torchrun(*args, timeout=600):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("ddp-data"), classes=3, train_per_class=10, val_per_class=4)


@pytest.fixture(scope="module")
def stores(folder, tmp_path_factory):
    """The same cache made by one process and by two torchrun processes."""
    root = tmp_path_factory.mktemp("ddp-stores")
    opts = [
        "--dataset",
        f"imagefolder:{folder}",
        "--teacher",
        "cifar_resnet8",
        "--batch-size",
        BATCH,
        "--workers",
        1,
        "--device",
        "cpu",
        "--no-progress",
    ]
    proc = torchrun("-m", "kdstore", "cache", "--allow-untrained", *opts, "--out", root / "two")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cache.run(
        CacheConfig(
            allow_untrained=True,
            dataset=f"imagefolder:{folder}",
            teacher="cifar_resnet8",
            batch_size=BATCH,
            workers=1,
            device="cpu",
            out=str(root / "one"),
            progress=False,
        )
    )
    return root / "one", root / "two"


def test_two_process_cache_equals_one_process_cache(stores):
    one, two = Store.open(stores[0]), Store.open(stores[1])
    for split in ("train", "val"):
        a, b = getattr(one, split), getattr(two, split)
        for field in ("logits", "labels", "sample_id", "confidence", "correct"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=f"{split}/{field}")
    np.testing.assert_array_equal(one.train.curriculum, two.train.curriculum)
    np.testing.assert_array_equal(one.train.inverse, two.train.inverse)
    assert one.attrs["dataset_fingerprint"] == two.attrs["dataset_fingerprint"]
    assert not any(p.name.startswith(".") for p in stores[1].parent.iterdir())  # no staging left


RECORDER = textwrap.dedent(
    """
    import json, os, sys
    from kdstore import train
    from kdstore.train import TrainConfig
    store, out = sys.argv[1], sys.argv[2]
    rank = int(os.environ["RANK"])
    records = {}
    for arm in sys.argv[3].split(","):
        seen = records.setdefault(arm, [])
        variant, _, pacing = arm.partition("+")
        path = store if rank == 0 or len(sys.argv) < 5 else sys.argv[4]
        train.run(TrainConfig(out=f"{out}/{arm}", store=path, variant=variant, pacing=pacing or "none", pacing_a=0.5,
                              epochs=2, batch_size=%d, workers=1, device="cpu", progress=False),
                  hook=lambda e, b, ids, lam: seen.append([e, b, ids.tolist(), lam]))
    with open(f"{out}/records-r{rank}.json", "w") as f:
        json.dump(records, f)
"""
    % BATCH
)


# every ordering (shuffle, inverse, curriculum, random) and lambda policy (zero, fixed, sr), and pacing
ARMS = ("unguided", "kd-icl", "kd-cl-sr+linear", "random-cl")


def single_process_batches(store: Store, arm: str, epochs: int) -> list[tuple[int, int, list[int], float]]:
    """What one process visits (test_train checks a 1-process run against exactly this): the
    arm's epoch order in consecutive batches, and its lambda policy per batch."""
    variant, _, pacing = arm.partition("+")
    v, t = VARIANTS[variant], store.train
    schedule = EpochPlan(
        ordering=v.ordering,
        pacing=pacing or "none",
        params=PacingParams(a=0.5),
        labels=t.labels,
        batch_size=BATCH,
        length=len(t),
        epochs=epochs,
        seed=0,
        scores=Scores(t.confidence, t.positions(t.curriculum)),
    )
    out = []
    for epoch in range(epochs):
        order = schedule.order(epoch)
        lams = POLICIES[v.policy](t.confidence[order], BATCH, 0.9, float(t.confidence.max()))
        for b, start in enumerate(range(0, len(order), BATCH)):
            out.append((epoch, b, t.sample_id[order[start : start + BATCH]].tolist(), float(lams[b])))
    return out


def test_two_process_train_visits_the_same_global_batches_with_the_same_lambda(stores, tmp_path):
    store = stores[0]
    script = tmp_path / "record.py"
    script.write_text(RECORDER)
    proc = torchrun(script, store, tmp_path, ",".join(ARMS))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"records-r{r}.json").read_text()) for r in (0, 1)]
    opened = Store.open(store)
    for variant in ARMS:
        single = single_process_batches(opened, variant, epochs=2)
        r0, r1 = ranks[0][variant], ranks[1][variant]
        assert len(r0) == len(r1) == len(single) == 8  # 4 global batches x 2 epochs
        for s, a, b in zip(single, r0, r1):
            assert s[0] == a[0] == b[0] and s[1] == a[1] == b[1]
            assert s[3] == a[3] == b[3], f"{variant}: lambda of global batch {s[1]}"
            assert s[2][0::2] == a[2] and s[2][1::2] == b[2], f"{variant}: samples of global batch {s[1]}"
        summary = json.loads((tmp_path / variant / "summary.json").read_text())
        assert summary["processes"] == 2
    metrics = [json.loads(line) for line in (tmp_path / "kd-icl" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2  # one writer: rank 0


def test_ranks_with_different_stores_fail_fast(stores, digits_store, tmp_path):
    script = tmp_path / "record.py"
    script.write_text(RECORDER)
    proc = torchrun(script, stores[0], tmp_path, "kd", digits_store, timeout=300)
    assert proc.returncode != 0
    assert "ranks disagree on the data" in proc.stderr
