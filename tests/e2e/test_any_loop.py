"""A store in a plain loop: examples/plain_loop.py logs bit-identical per-epoch metrics to
`kdstore train` with the same options and seed (the adapters: tests/integrations/)."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

from kdstore import TrainConfig
from kdstore.train import loop as train

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


ARMS = [
    {"variant": "kd", "epochs": 2},
    {"variant": "kd-cl", "pacing": "exp", "epochs": 1, "loss": "ctkd"},  # a loss with a learnt temperature
    {"variant": "kd-cl-sr", "epochs": 1, "loss": "dkd", "loss_options": "beta=4"},  # SR's lambda, another loss
    pytest.param(  # replayed views, two of each image (heavy: make test stays under its 10 minutes)
        {"variant": "kd", "epochs": 1, "views": True, "loss": "mlkd"}, marks=pytest.mark.heavy
    ),
]


@pytest.mark.parametrize(
    "arm", ARMS, ids=lambda a: "+".join(str(v) for k, v in a.items() if k != "epochs") if isinstance(a, dict) else None
)
def test_plain_loop_example_logs_what_train_logs(arm, digits_store, digits_views_store, tmp_path, monkeypatch):
    arm = dict(arm)
    store = digits_views_store if arm.pop("views", False) else digits_store
    seed = 7
    train.run(TrainConfig(out=str(tmp_path / "train"), store=str(store), seed=seed, progress=False, **arm))
    argv = ["plain_loop.py", "--store", str(store), "--out", str(tmp_path / "plain"), "--seed", str(seed)]
    argv += [x for k, v in arm.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(EXAMPLES / "plain_loop.py"), run_name="__main__")
    ours, theirs = _rows(tmp_path / "train" / "metrics.jsonl"), _rows(tmp_path / "plain" / "metrics.jsonl")
    assert len(ours) == len(theirs) == arm["epochs"]
    for a, b in zip(ours, theirs):
        assert (a["epoch"], a["train_loss"], a["val_acc"]) == (b["epoch"], b["train_loss"], b["val_acc"])
    if store is digits_views_store:
        assert json.loads((tmp_path / "train" / "config.json").read_text())["views_used"]["mode"] == "replay"
