"""A store in PyTorch Lightning: StoreDataModule feeds StoreLoader batches (on the trainer's
device), DistillationModule's step is kdstore.kd_loss. Needs `pip install 'kdstore[lightning]'`.

    python examples/lightning_module.py --store stores/c10 --epochs 2
"""

import argparse

import lightning.pytorch as pl
import timm

from kdstore import one_line_errors
from kdstore.integrations.lightning import DistillationModule, StoreDataModule

one_line_errors()  # a KdstoreError (a bad --store, say) in one line, as kdstore's commands print it

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--store", required=True)
p.add_argument("--student", default="cifar_resnet8")
p.add_argument("--variant", default="kd-cl-sr")
p.add_argument("--epochs", type=int, default=2)
a = p.parse_args()

data = StoreDataModule(a.store, variant=a.variant, epochs=a.epochs)
data.setup()
model = timm.create_model(a.student, num_classes=data.train_dataloader().num_classes)
trainer = pl.Trainer(max_epochs=a.epochs, logger=False, enable_checkpointing=False)
trainer.fit(DistillationModule(model), datamodule=data)
print({k: round(float(v), 4) for k, v in trainer.callback_metrics.items()})
