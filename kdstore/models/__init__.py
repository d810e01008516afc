"""Models through timm: kdstore's CIFAR networks (registered in timm's registry on import),
building a model by name, checkpoints, and loading a teacher."""

from kdstore.models import cifar as _cifar  # noqa: F401 - registers the CIFAR networks in timm
