"""A plain PyTorch loop on a kdstore store: the model, optimiser and loop are the reader's own.
Every default is `kdstore train`'s, so its metrics.jsonl matches train's line by line (tested)."""

import argparse
import json
import time
from pathlib import Path

import timm
import torch

import kdstore

kdstore.one_line_errors()  # a KdstoreError (a bad --store, say) in one line, as kdstore's commands print it

d = kdstore.TrainConfig(out="")  # kdstore train's defaults
p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--store", required=True)
p.add_argument("--out", required=True)
for name in ("variant", "pacing", "epochs", "seed", "loss", "loss_options"):  # train's own defaults
    p.add_argument(f"--{name.replace('_', '-')}", type=type(getattr(d, name)), default=getattr(d, name))
a = p.parse_args()

names = ("variant", "pacing", "epochs", "seed", "loss", "loss_options")
loader = kdstore.StoreLoader(a.store, **{name: getattr(a, name) for name in names})
loss_fn = loader.loss()  # kd_loss, or --loss's (dkd, dist, ctkd, mlkd, ...), with the loader's tau
val = loader.val()
torch.manual_seed(a.seed)
model = timm.create_model(d.student, num_classes=loader.num_classes).to(loader.device)
params = [*model.parameters(), *loss_fn.parameters()]  # ctkd learns its temperature with the student
opt = torch.optim.SGD(params, lr=d.lr, momentum=d.momentum, weight_decay=d.weight_decay, nesterov=True)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=a.epochs * len(loader))
Path(a.out).mkdir(parents=True, exist_ok=True)
with open(Path(a.out) / "metrics.jsonl", "w") as log:
    for epoch in range(a.epochs):
        if loader.rescore_due(epoch):  # --scorer student: reorder by the student's own confidence
            loader.rescore(model)
        model.train()
        total, seen, t0 = 0.0, 0, time.perf_counter()
        for batch in loader:
            logits = model(batch.images)
            pair = None if batch.pair is None else model(batch.pair.images)  # mlkd's second view
            loss = loss_fn(logits, batch, pair_logits=pair).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total, seen = total + loss.item() * len(batch), seen + len(batch)
        seconds = time.perf_counter() - t0
        model.eval()
        with torch.no_grad():
            right = sum((model(b.images).argmax(1) == b.labels).sum().item() for b in val)
        row = {"epoch": epoch + 1, "train_loss": total / seen, "val_acc": right / len(val.labels), "seconds": seconds}
        log.write(json.dumps(row) + "\n")
        print(row, flush=True)
