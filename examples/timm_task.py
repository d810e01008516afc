"""A store in timm's task API: OfflineDistillationTask is timm.task.LogitDistillationTask with the
teacher's logits taken from each kdstore batch (no teacher in memory).

    python examples/timm_task.py --store stores/c10 --student resnet18 --epochs 2
"""

import argparse

import timm
import torch

import kdstore
from kdstore.integrations.timm import OfflineDistillationTask

kdstore.one_line_errors()  # a KdstoreError (a bad --store, say) in one line, as kdstore's commands print it

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--store", required=True)
p.add_argument("--student", default="cifar_resnet8")
p.add_argument("--variant", default="kd-cl-sr")
p.add_argument("--epochs", type=int, default=2)
a = p.parse_args()

loader = kdstore.StoreLoader(a.store, variant=a.variant, epochs=a.epochs)
model = timm.create_model(a.student, num_classes=loader.num_classes).to(loader.device)
task = OfflineDistillationTask(model, temperature=loader.config.tau, device=loader.device)
opt = torch.optim.SGD(task.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
for epoch in range(a.epochs):
    task.train()
    for batch in loader:
        result = task(batch.images, batch)  # loss, output, task_loss (CE), kd_loss
        opt.zero_grad()
        result["loss"].backward()
        opt.step()
    print(
        f"epoch {epoch + 1}: loss {result['loss'].item():.4f} (ce {result['task_loss'].item():.4f}, "
        f"kd {result['kd_loss'].item():.4f})"
    )
