"""The standard CIFAR KD networks (as in CRD / RepDistiller), registered in timm's registry.

After ``import kdstore`` they are created like any timm model: ``timm.create_model("cifar_resnet20",
num_classes=100)``. Each registered function is a dict of arguments handed to one builder."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from timm.models import register_model


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def _stages(block: type[nn.Module], c_in: int, widths: list[int], n: int) -> nn.Sequential:
    """Stages of n blocks each; every stage but the first halves the resolution in its first block."""
    stages = []
    for i, c_out in enumerate(widths):
        stages.append(
            nn.Sequential(*[block(c_in if j == 0 else c_out, c_out, 2 if (i > 0 and j == 0) else 1) for j in range(n)])
        )
        c_in = c_out
    return nn.Sequential(*stages)


class _CifarNet(nn.Module):
    """stem -> stages -> head activation -> global average pool -> linear classifier."""

    def __init__(
        self, stem: nn.Module, stages: nn.Sequential, head_act: nn.Module, width: int, num_classes: int
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.stem, self.stages, self.head_act = stem, stages, head_act
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)
        _init(self)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.head_act(self.stages(self.stem(x)))), 1))


class CifarResNet(_CifarNet):
    """ResNet-(6n+2) for 32x32 inputs: a 3x3 stem and three stages of n basic blocks."""

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int = 10, in_chans: int = 3) -> None:
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        stem = nn.Sequential(
            nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
        )
        super().__init__(
            stem,
            _stages(_BasicBlock, widths[0], list(widths[1:]), (depth - 2) // 6),
            nn.Identity(),
            widths[-1],
            num_classes,
        )


class _PreActBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = None if (stride == 1 and c_in == c_out) else nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(o)
        out = self.conv2(self.relu(self.bn2(self.conv1(o))))
        return out + skip


class CifarWideResNet(_CifarNet):
    """WRN-depth-k (Zagoruyko & Komodakis 2016): pre-activation blocks, widths 16k, 32k, 64k."""

    def __init__(self, depth: int, widen: int, num_classes: int = 10, in_chans: int = 3) -> None:
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        widths = [16 * widen, 32 * widen, 64 * widen]
        stages = _stages(_PreActBlock, 16, widths, (depth - 4) // 6)
        head_act = nn.Sequential(nn.BatchNorm2d(widths[-1]), nn.ReLU(inplace=True))
        super().__init__(nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False), stages, head_act, widths[-1], num_classes)


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _create(
    cls: type[nn.Module], name: str, pretrained: bool, arch: dict[str, Any], kwargs: dict[str, Any]
) -> nn.Module:
    if pretrained:
        raise RuntimeError(f"{name} has no pretrained weights; train it with `kdstore teacher` and pass --checkpoint")
    # timm's create_model passes its own bookkeeping; a CIFAR net has no pretrained config to use.
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    model = cls(**arch, **kwargs)
    model.pretrained_cfg = {  # type: ignore[assignment]  # timm's attribute on its models
        "architecture": name,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "input_size": (3, 32, 32),
    }
    return model


# Architectures as data: name -> (builder, its arguments). The registered functions below read it.
CIFAR_ARCHS: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "cifar_resnet8": (CifarResNet, {"depth": 8, "widths": (16, 16, 32, 64)}),
    "cifar_resnet20": (CifarResNet, {"depth": 20, "widths": (16, 16, 32, 64)}),
    "cifar_resnet32": (CifarResNet, {"depth": 32, "widths": (16, 16, 32, 64)}),
    "cifar_resnet56": (CifarResNet, {"depth": 56, "widths": (16, 16, 32, 64)}),
    "cifar_resnet110": (CifarResNet, {"depth": 110, "widths": (16, 16, 32, 64)}),
    "cifar_resnet8x4": (CifarResNet, {"depth": 8, "widths": (32, 64, 128, 256)}),
    "cifar_resnet32x4": (CifarResNet, {"depth": 32, "widths": (32, 64, 128, 256)}),
    "cifar_wrn_16_2": (CifarWideResNet, {"depth": 16, "widen": 2}),
    "cifar_wrn_40_2": (CifarWideResNet, {"depth": 40, "widen": 2}),
}


def _entry(name: str):
    cls, arch = CIFAR_ARCHS[name]

    def create(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return _create(cls, name, pretrained, arch, kwargs)

    create.__name__ = name
    create.__qualname__ = name
    create.__doc__ = f"{name}: {cls.__name__}({arch})"
    return register_model(create)


for _name in CIFAR_ARCHS:
    globals()[_name] = _entry(_name)
