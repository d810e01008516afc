"""Models: timm's registry (plus kdstore's CIFAR networks), the small-input stem, checkpoints.

A kdstore checkpoint is a plain dict {"state_dict": ..., "meta": {...}} of tensors and plain types,
so it loads with torch.load(weights_only=True); `meta` says how to rebuild the model.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
import os
import socket
import urllib.parse
from pathlib import Path
from typing import Any, BinaryIO

import huggingface_hub
import timm
import torch
import torch.nn as nn

from . import cifar_models  # noqa: F401 - registers the CIFAR networks in timm's registry
from .errors import KdstoreError

STEMS = ("auto", "cifar", "imagenet")
DEVICES = ("auto", "cpu", "cuda")
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
        raise KdstoreError(f"unknown model {name!r}; any timm model name works (timm.list_models()), or one of {', '.join(cifar_models.CIFAR_ARCHS)}")
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
    meta = {"model": name, "num_classes": num_classes, "input_size": input_size, "stem": "cifar" if is_cifar_net else stem}
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
    for filename in WEIGHT_FILES if repo else ():
        cached = huggingface_hub.try_to_load_from_cache(repo, filename)
        if isinstance(cached, str):
            return cached
    if url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urllib.parse.urlparse(url).path).name
        if cached.is_file():
            return str(cached)
    raise KdstoreError(f"no network to fetch pretrained weights for {name} ({repo or url}) and none are cached; "
                       "download them elsewhere and pass --pretrained-file PATH")


def _pretrained_message(name: str, err: Exception) -> str:
    try:
        cfg = timm.models.get_pretrained_cfg(name)
        where = getattr(cfg, "hf_hub_id", None) or getattr(cfg, "url", None) or name
    except Exception:  # noqa: BLE001 - only used to improve the message
        where = name
    first = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0][:160]
    return f"could not fetch pretrained weights for {name} ({where}): {first}; download them elsewhere and pass --pretrained-file PATH"


def build_from_meta(meta: dict[str, Any]) -> nn.Module:
    """Rebuild the architecture a checkpoint's metadata describes (weights not loaded)."""
    model, _ = build_model(meta["model"], int(meta["num_classes"]), int(meta["input_size"]), meta.get("stem", "auto"))
    return model


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return sha256_stream(f)


def sha256_stream(f: BinaryIO, chunk: int = 4 << 20) -> str:
    """sha256 of an open binary file, from its start."""
    h = hashlib.sha256()
    f.seek(0)
    while block := f.read(chunk):
        h.update(block)
    return h.hexdigest()


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Atomic torch.save: write a sibling temp file, then rename over `path`."""
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a killed save
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """torch.load(weights_only=True); a pickle payload or a foreign file is refused in one line."""
    path = Path(path)
    if not path.is_file():
        raise KdstoreError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise KdstoreError(f"checkpoint {path} cannot be loaded safely (weights_only=True): {first[:200]}") from None
    if isinstance(ckpt, dict) and "state_dict" in ckpt:
        return ckpt
    if isinstance(ckpt, dict) and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return {"state_dict": ckpt, "meta": {}}
    raise KdstoreError(f"checkpoint {path} is not a state dict or a kdstore checkpoint")


def load_weights(model: nn.Module, ckpt: dict[str, Any], path: Path) -> None:
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise KdstoreError(f"checkpoint {path} does not fit the model: {str(e).splitlines()[0]}") from None


def normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std the model expects its inputs normalised with (timm's data config)."""
    cfg = timm.data.resolve_model_data_config(model)
    return tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise KdstoreError("--device cuda was asked for but no CUDA device is available")
    try:
        return torch.device(device)
    except RuntimeError:
        raise KdstoreError(f"unknown device {device!r}; use auto, cpu or cuda") from None


def normalization_for(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std for `name` from timm's pretrained config without building the model."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    cfg = timm.models.get_pretrained_cfg(name) if name not in cifar_models.CIFAR_ARCHS else None
    mean = getattr(cfg, "mean", None) or IMAGENET_DEFAULT_MEAN
    std = getattr(cfg, "std", None) or IMAGENET_DEFAULT_STD
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


@dataclass(frozen=True)
class TeacherSpec:
    """Which teacher to load: a timm name and/or a checkpoint, and how to build it."""

    teacher: str | None = None  # timm name; taken from the checkpoint's metadata when omitted
    checkpoint: str | None = None  # a kdstore checkpoint or a plain state dict
    pretrained: bool = False
    pretrained_file: str | None = None
    stem: str | None = None  # auto | cifar | imagenet; from the checkpoint when omitted, else auto
    input_size: int | None = None  # teacher input in pixels; the checkpoint's, else the image size


@dataclass
class Teacher:
    model: torch.nn.Module
    meta: dict[str, Any]  # how to rebuild it: model name, classes, input size, stem
    checkpoint_sha256: str  # "" without a checkpoint
    split: dict[str, Any] | None  # the held-out split its checkpoint records, if any


def load_teacher(cfg: "TeacherSpec", num_classes: int, image_size: int) -> Teacher:
    """Build the teacher from timm (and a checkpoint); returns it, its metadata and the checkpoint
    sha256. `cfg` is a TeacherSpec or any config with its fields (CacheConfig has them)."""
    ckpt, meta = None, {}
    if cfg.checkpoint:
        ckpt = load_checkpoint(Path(cfg.checkpoint))
        meta = ckpt.get("meta", {})
    name = cfg.teacher or meta.get("model")
    if name is None:
        raise KdstoreError(f"checkpoint {cfg.checkpoint} does not name its model; pass --teacher")
    if meta.get("model") and cfg.teacher and meta["model"] != cfg.teacher:
        raise KdstoreError(f"checkpoint {cfg.checkpoint} holds a {meta['model']}, not a {cfg.teacher}")
    if meta.get("num_classes") and int(meta["num_classes"]) != num_classes:
        raise KdstoreError(f"checkpoint {cfg.checkpoint} has {meta['num_classes']} classes but the dataset has {num_classes}")
    input_size = cfg.input_size or meta.get("input_size") or image_size
    stem = cfg.stem or meta.get("stem") or "auto"
    torch.manual_seed(0)  # a teacher without weights (a random baseline) is the same in every run
    model, model_meta = build_model(name, num_classes, int(input_size), stem, cfg.pretrained and ckpt is None, cfg.pretrained_file if ckpt is None else None)
    digest = ""
    if ckpt is not None:
        load_weights(model, ckpt, Path(cfg.checkpoint))
        digest = sha256_file(Path(cfg.checkpoint))
    return Teacher(model, model_meta, digest, meta.get("split") or None)
