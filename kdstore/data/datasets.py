"""Datasets by name: a registry of loaders that give uint8 images, labels and sample ids.

`--dataset` takes a registry name (`digits`, `cifar10`, `cifar100`) or `imagefolder:PATH`.
Every split is held as an `ImageSplit`: images are decoded lazily by index so that a large
ImageFolder never sits in memory; the FFCV writer reads them in parallel."""

from __future__ import annotations

import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from kdstore.errors import KdstoreError

DEFAULT_DATA_ROOT = Path.home() / ".cache" / "kdstore" / "data"


@dataclass
class ImageSplit:
    """One split: `get(i)` -> (H, W, 3) uint8 image; labels (N,) int64; sample ids (N,) int64."""

    get: Callable[[int], np.ndarray]
    labels: np.ndarray
    sample_ids: np.ndarray
    name_of: Callable[[int], str] | None = None  # what to call sample i in a message (its file, for an imagefolder)

    def describe(self, i: int) -> str:
        return self.name_of(i) if self.name_of is not None else f"sample {int(self.sample_ids[i])}"

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class ImageDataset:
    name: str
    class_names: list[str]
    train: ImageSplit
    val: ImageSplit

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _array_split(images: np.ndarray, labels: Sequence[int]) -> ImageSplit:
    ys = np.asarray(labels, dtype=np.int64)
    return ImageSplit(get=lambda i: images[i], labels=ys, sample_ids=np.arange(len(ys), dtype=np.int64))


def _fit_square(img: Image.Image, size: int) -> np.ndarray:
    """RGB, shorter side resized to `size`, centre-cropped to size x size. -> (size, size, 3) uint8."""
    img = img.convert("RGB")
    if img.size != (size, size):
        w, h = img.size
        scale = size / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BILINEAR)
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8)


def load_digits(data_root: Path, image_size: int | None = None) -> ImageDataset:
    """scikit-learn's bundled 8x8 digits as 32x32 RGB; a fixed stratified 80/20 split. Offline."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    size = image_size or 32
    d = sk_digits()
    gray = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)  # (N, 8, 8), 0..16 -> 0..255
    imgs = np.stack([_fit_square(Image.fromarray(g, mode="L"), size) for g in gray])  # (N, S, S, 3)
    idx = np.arange(len(gray))
    tr, va = train_test_split(idx, test_size=0.2, random_state=0, stratify=d.target)
    tr, va = np.sort(tr), np.sort(va)
    return ImageDataset(
        "digits",
        [str(c) for c in range(10)],
        _array_split(imgs[tr], d.target[tr]),
        _array_split(imgs[va], d.target[va]),
    )


def _torchvision_cifar(cls_name: str, name: str) -> Callable[[Path, int | None], ImageDataset]:
    def load(data_root: Path, image_size: int | None = None) -> ImageDataset:
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)
        root = Path(data_root)
        try:
            tr = cls(str(root), train=True, download=True)
            va = cls(str(root), train=False, download=True)
        except (urllib.error.URLError, OSError, RuntimeError) as e:
            reason = getattr(e, "reason", None) or str(e).splitlines()[0]
            raise KdstoreError(
                f"{name} is not in {root} and could not be downloaded ({reason}); "
                f"connect to the internet once or pass --data-root where it is"
            ) from None
        if image_size not in (None, 32):
            raise KdstoreError(f"{name} images are 32x32; resize for the teacher with --input-size instead")
        return ImageDataset(
            name, list(tr.classes), _array_split(tr.data, tr.targets), _array_split(va.data, va.targets)
        )

    return load


def _folder_split(root: Path, class_names: list[str], size: int) -> ImageSplit:
    from torchvision.datasets import ImageFolder

    folder = ImageFolder(str(root))
    if folder.classes != class_names:
        raise KdstoreError(f"classes in {root} differ from the train split's: {folder.classes} vs {class_names}")
    paths = [p for p, _ in folder.samples]
    labels = np.asarray([y for _, y in folder.samples], dtype=np.int64)

    def get(i: int) -> np.ndarray:
        with Image.open(paths[i]) as im:
            return _fit_square(im, size)

    return ImageSplit(
        get=get, labels=labels, sample_ids=np.arange(len(labels), dtype=np.int64), name_of=lambda i: paths[i]
    )


def load_imagefolder(path: Path, image_size: int | None = None) -> ImageDataset:
    """PATH/train/<class>/* and PATH/test/<class>/* (or PATH/val/<class>/*), as square images.

    `image_size` defaults to the size of the first training image (all images are fitted to it).
    """
    path = Path(path)
    train_dir = path / "train"
    val_dir = next((path / d for d in ("test", "val") if (path / d).is_dir()), None)
    if not train_dir.is_dir() or val_dir is None:
        raise KdstoreError(f"imagefolder {path} needs train/<class>/ and test/<class>/ (or val/<class>/) subfolders")
    from torchvision.datasets import ImageFolder

    try:
        classes = ImageFolder(str(train_dir)).classes
    except FileNotFoundError as e:
        raise KdstoreError(f"imagefolder {train_dir}: {e}") from None
    if image_size is None:
        first = next(p for p in sorted((train_dir / classes[0]).iterdir()) if p.is_file())
        try:
            with Image.open(first) as im:
                image_size = min(im.size)
        except (OSError, ValueError) as e:
            raise KdstoreError(
                f"{first}: not a readable image ({type(e).__name__}); remove or fix it, or pass --image-size"
            ) from None
    try:
        train = _folder_split(train_dir, classes, image_size)
        val = _folder_split(val_dir, classes, image_size)
    except FileNotFoundError as e:
        raise KdstoreError(f"imagefolder {path}: {e}") from None
    return ImageDataset(f"imagefolder:{path.resolve()}", classes, train, val)


def unpack_imagefolder_subset(archive: Path, dest: Path, per_class: dict[str, int]) -> Path:
    """Unpack the first n images of every class of each split (e.g. {"train": 100, "test": 20})
    from a tar archive in ImageFolder layout (SPLIT/CLASS/FILE), streaming; returns `dest`."""
    import tarfile

    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 3 or parts[-3] not in per_class:
                continue
            key = (parts[-3], parts[-2])
            if taken.get(key, 0) >= per_class[parts[-3]]:
                continue
            taken[key] = taken.get(key, 0) + 1
            target = Path(dest) / parts[-3] / parts[-2] / parts[-1]
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            if source is not None:
                target.write_bytes(source.read())
    return Path(dest)


DATASETS: dict[str, Callable[[Path, int | None], ImageDataset]] = {
    "digits": load_digits,
    "cifar10": _torchvision_cifar("CIFAR10", "cifar10"),
    "cifar100": _torchvision_cifar("CIFAR100", "cifar100"),
}


def load_dataset(spec: str, data_root: Path | None = None, image_size: int | None = None) -> ImageDataset:
    """`spec` is a registry name or `imagefolder:PATH`; unknown names fail with the known ones."""
    if image_size is not None and image_size < 8:
        raise KdstoreError(f"--image-size must be >= 8 pixels, got {image_size}")
    if spec.startswith("imagefolder:"):
        ds = load_imagefolder(Path(spec.split(":", 1)[1]).expanduser(), image_size)
    elif spec not in DATASETS:
        raise KdstoreError(f"unknown dataset {spec!r}; known: {', '.join(DATASETS)}, imagefolder:PATH")
    else:
        ds = DATASETS[spec](Path(data_root or DEFAULT_DATA_ROOT), image_size)
    if ds.num_classes < 2:
        raise KdstoreError(f"dataset {spec} has {ds.num_classes} class; classification needs at least 2 classes")
    if not len(ds.train) or not len(ds.val):
        raise KdstoreError(
            f"dataset {spec} has {len(ds.train)} training and {len(ds.val)} validation images; both splits need images"
        )
    return ds
