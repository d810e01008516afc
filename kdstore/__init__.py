"""kdstore: offline knowledge distillation from a cached teacher (FFCV images + HDF5 logits)."""
__version__ = "0.1.0"

from . import cifar_models  # noqa: E402,F401 - registers the CIFAR networks in timm
