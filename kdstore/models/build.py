"""Models by name through timm's registry (plus kdstore's CIFAR networks), the small-input stem,
pretrained weights (offline-aware), and each model's input normalisation."""

from __future__ import annotations

import socket
import urllib.parse
from pathlib import Path
from typing import Any

import huggingface_hub
import timm
import torch
import torch.nn as nn

from kdstore.errors import KdstoreError
from kdstore.models import cifar as cifar_models  # noqa: F401 - registers the CIFAR networks in timm's registry

STEMS = ("auto", "cifar", "imagenet")
CIFAR_STEM_MAX_SIZE = 64  # `--stem auto` uses the CIFAR stem at this input size and below


def resolve_stem(stem: str, input_size: int) -> str:
    if stem not in STEMS:
        raise KdstoreError(f"unknown stem {stem!r}; known: {', '.join(STEMS)}")
    if stem == "auto":
        return "cifar" if input_size <= CIFAR_STEM_MAX_SIZE else "imagenet"
    return stem


def _apply_cifar_stem(model: nn.Module, name: str) -> bool:
    """Swap a timm ResNet's 7x7/2 conv + max-pool for a 3x3/1 conv; False if the model has no such stem."""
    conv, pool = getattr(model, "conv1", None), getattr(model, "maxpool", None)
    if not isinstance(conv, nn.Conv2d) or pool is None:
        return False
    model.conv1 = nn.Conv2d(conv.in_channels, conv.out_channels, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return True


def build_model(
    name: str,
    num_classes: int,
    input_size: int,
    stem: str = "auto",
    pretrained: bool = False,
    pretrained_file: str | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Create `name` from timm's registry; returns the model and the metadata to rebuild it."""
    if not timm.is_model(name):
        raise KdstoreError(
            f"unknown model {name!r}; any timm model name works (timm.list_models()), or one of "
            f"{', '.join(cifar_models.CIFAR_ARCHS)}"
        )
    stem = resolve_stem(stem, input_size)
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if pretrained and not pretrained_file and name not in cifar_models.CIFAR_ARCHS:
        pretrained_file = offline_weights(name)
    if pretrained_file:
        if not Path(pretrained_file).is_file():
            raise KdstoreError(f"pretrained weights file {pretrained_file} does not exist")
        kwargs["pretrained_cfg_overlay"] = {"file": str(pretrained_file)}
    try:
        model = timm.create_model(name, pretrained=pretrained or bool(pretrained_file), **kwargs)
    except RuntimeError as e:
        if name in cifar_models.CIFAR_ARCHS:
            raise KdstoreError(str(e)) from None
        raise KdstoreError(_pretrained_message(name, e)) from None
    except (OSError, ValueError) as e:
        raise KdstoreError(_pretrained_message(name, e)) from None
    is_cifar_net = name in cifar_models.CIFAR_ARCHS
    if stem == "cifar" and not is_cifar_net and not _apply_cifar_stem(model, name):
        if resolve_stem("auto", input_size) == "cifar" and stem == "cifar":
            stem = "imagenet"  # auto on a model without a ResNet stem: keep the model as it is
        else:
            raise KdstoreError(f"--stem cifar needs a timm ResNet (conv1 + maxpool); {name} has none")
    meta = {
        "model": name,
        "num_classes": num_classes,
        "input_size": input_size,
        "stem": "cifar" if is_cifar_net else stem,
    }
    return model, meta


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def _online(host: str, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def offline_weights(name: str) -> str | None:
    """None when the Hub is reachable (timm downloads as usual). Offline: the weights from the
    local Hugging Face or torch.hub cache, else a one-line error at once, instead of the
    download's minute of retries."""
    cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=True)
    repo, url = getattr(cfg, "hf_hub_id", None), getattr(cfg, "url", None)
    host = "huggingface.co" if repo else urllib.parse.urlparse(url or "").hostname
    if not host or _online(host):
        return None
    if isinstance(repo, str):
        for filename in WEIGHT_FILES:
            cached = huggingface_hub.try_to_load_from_cache(repo, filename)
            if isinstance(cached, str):
                return cached
    if url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urllib.parse.urlparse(url).path).name
        if cached.is_file():
            return str(cached)
    raise KdstoreError(
        f"no network to fetch pretrained weights for {name} ({repo or url}) and none are cached; "
        "download them elsewhere and pass --pretrained-file PATH"
    )


def _pretrained_message(name: str, err: Exception) -> str:
    try:
        cfg = timm.models.get_pretrained_cfg(name)
        where = getattr(cfg, "hf_hub_id", None) or getattr(cfg, "url", None) or name
    except Exception:  # noqa: BLE001 - only used to improve the message
        where = name
    first = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0][:160]
    return (
        f"could not fetch pretrained weights for {name} ({where}): {first}; "
        "download them elsewhere and pass --pretrained-file PATH"
    )


def build_from_meta(meta: dict[str, Any]) -> nn.Module:
    """Rebuild the architecture a checkpoint's metadata describes (weights not loaded)."""
    model, _ = build_model(meta["model"], int(meta["num_classes"]), int(meta["input_size"]), meta.get("stem", "auto"))
    return model


def normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std the model expects its inputs normalised with (timm's data config)."""
    cfg = timm.data.resolve_model_data_config(model)
    return tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])


def normalization_for(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std for `name` from timm's pretrained config without building the model."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    cfg = timm.models.get_pretrained_cfg(name) if name not in cifar_models.CIFAR_ARCHS else None
    mean = getattr(cfg, "mean", None) or IMAGENET_DEFAULT_MEAN
    std = getattr(cfg, "std", None) or IMAGENET_DEFAULT_STD
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
