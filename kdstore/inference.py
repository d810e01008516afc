"""The inference pass: a model over the images of a .beton, batch by batch, in file order.

`cache` runs it with the teacher (clean images, then stored views), the student scorer with the
student, and `bench` times it. Forward functions make what a model is given exactly as `train`
makes it (normalise, augment with given parameters, resize); outputs are flushed in chunks of
whole batches (each chunk file whole or absent), so a killed pass resumes where it stopped and
no pass ever holds an (N, C) table.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .arrays import download, upload
from .augment import AUGMENTATIONS, normalize, resize
from .curriculum import confidence_and_correct
from .ffcv_files import make_loader, read_int_fields
from .progress import images_progress
from .precision import autocast, device_layout
from .store import Blocks
from .targets import Mixing
from .views import draw_uniforms, sample_classes, topk_compress


def teacher_forward(model: torch.nn.Module, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                    input_size: int, device: torch.device, amp: bool = False) -> torch.Tensor:
    """Teacher logits (B, C) float32 for a batch of (B, H, W, 3) uint8 images, on `device`
    (with `amp`, in bf16 on CUDA; the model's layout, channels_last there, is `step.for_device`'s)."""
    x = resize(normalize(upload(images, device), mean, std), input_size)
    with autocast(device, amp):
        return model(device_layout(x)).float()


# forward(images (B, H, W, 3) uint8, their .beton positions (B,)) -> named outputs, each (B, ...)
Forward = Callable[[torch.Tensor, np.ndarray], dict[str, torch.Tensor]]


def clean_forward(model: torch.nn.Module, mean: torch.Tensor, std: torch.Tensor, input_size: int, device: torch.device,
                  amp: bool = False) -> Forward:
    """Logits of the un-augmented images."""
    model.eval()
    return lambda images, pos: {"logits": teacher_forward(model, images, mean, std, input_size, device, amp)}


# keep(logits of a batch's views (B, K, C), their positions (B,)) -> what a store keeps of them
Keep = Callable[[torch.Tensor, np.ndarray], dict[str, torch.Tensor]]


def keep_views(topk: int = 0, sample: int = 0, tau: float = 1.0, seed: int = 0, first_view: int = 0) -> Keep:
    """What a store keeps of each view: the full logits, their top-k form, or `sample` class ids
    drawn from softmax(z / tau) (views.py); `first_view` numbers the views (a store extended with
    --add-views draws its new views as a fresh cache with more views would)."""
    if sample:
        return lambda logits, pos: {"sample_ids": sample_classes(logits, draw_uniforms(seed, pos, np.arange(logits.shape[1]) + first_view, sample), tau)}
    if topk:
        return lambda logits, pos: topk_compress(logits, topk)
    return lambda logits, pos: {"logits": logits}


VIEWS_PER_FORWARD = 8  # views of a batch the teacher scores in one forward (at most batch size x this many images)


def views_forward(model: torch.nn.Module, mean: torch.Tensor, std: torch.Tensor, input_size: int, device: torch.device,
                  params: np.ndarray, augmentation: str, keep: Keep, mixing: Mixing | None = None, amp: bool = False,
                  skip: int = 0) -> Forward:
    """Logits of every stored view of each image: (B, K, C), kept as `keep` says. The views are
    made exactly as `train` replays them: normalise, then augment with the stored parameters,
    (mixed views) mix with the partner augmented alike, then resize to the teacher's input.

    Views 0-7, 8-15, ... of `params` go through the teacher together, one forward each; a store
    extended with --add-views starts `params` at such a boundary and scores, but does not keep,
    its first `skip` views, so that every forward holds the images a fresh cache's would."""
    model.eval()
    aug = AUGMENTATIONS[augmentation]
    table = upload(torch.from_numpy(params).long(), device)  # (N, K, P)
    count = params.shape[1]

    def forward(images: torch.Tensor, pos: np.ndarray) -> dict[str, torch.Tensor]:
        x = normalize(upload(images, device), mean, std)
        p = table[upload(torch.from_numpy(pos), device)]
        groups = []
        for lo in range(0, count, VIEWS_PER_FORWARD):
            views = []
            for k in range(lo, min(lo + VIEWS_PER_FORWARD, count)):
                xk = aug.apply(x, p[:, k])
                if mixing is not None:
                    xk = mixing(xk, pos, np.full(len(pos), k), lambda px, pk=p[:, k]: aug.apply(px, pk))
                views.append(resize(xk, input_size))
            with autocast(device, amp):
                out = model(device_layout(torch.cat(views))).float()
            groups.append(out.reshape(len(views), len(pos), -1).transpose(0, 1))  # view-major -> (B, views, C)
        return keep(torch.cat(groups, 1)[:, skip:], pos)

    return forward


# post(outputs of a batch as numpy arrays, its labels) -> what is kept of them
Post = Callable[[dict[str, np.ndarray], np.ndarray], dict[str, np.ndarray]]


def stored_outputs(logits_dtype: str) -> Post:
    """What a store keeps of a batch: logits in the stored dtype and, for clean images, each
    sample's confidence and correctness computed from the float32 logits first."""
    def post(out: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, np.ndarray]:
        kept = dict(out)
        if "logits" in out and out["logits"].ndim == 2:
            kept["confidence"], kept["correct"] = confidence_and_correct(out["logits"], labels)
        for key in ("logits", "topk_values"):
            if key in kept:
                kept[key] = kept[key].astype(logits_dtype)
        return kept

    return post


def scores_only(out: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, np.ndarray]:
    """A scorer keeps confidence and correctness, not the (N, C) logits."""
    confidence, correct = confidence_and_correct(out["logits"], labels)
    return {"confidence": confidence, "correct": correct}


def chunk_paths(chunk_dir: Path) -> list[Path]:
    """The contiguous chunks 000000.npz, 000001.npz, ... flushed so far (each is whole or absent)."""
    paths = []
    while (path := chunk_dir / f"{len(paths):06d}.npz").is_file():
        paths.append(path)
    return paths


def _save_chunk(chunk_dir: Path, index: int, chunk: dict[str, np.ndarray]) -> None:
    tmp = chunk_dir / f".{index:06d}.tmp.npz"
    np.savez(tmp, **chunk)
    os.replace(tmp, chunk_dir / f"{index:06d}.npz")  # atomic: a chunk file is whole or absent


def column(paths: list[Path], key: str) -> np.ndarray:
    """One output over all chunks, concatenated (for the small per-sample arrays)."""
    parts = []
    for path in paths:
        with np.load(path) as z:
            parts.append(z[key])
    return np.concatenate(parts)


def column_blocks(paths: list[Path], key: str) -> Blocks:
    """One large output over all chunks, as blocks read one chunk at a time (never all at once)."""
    n, shape, dtype = 0, None, None
    for path in paths:
        with np.load(path) as z:
            n += len(z["labels"])
            if shape is None:
                first = z[key]
                shape, dtype = first.shape[1:], first.dtype

    def read():
        for path in paths:
            with np.load(path) as z:
                yield z[key]

    return Blocks((n, *shape), dtype, read)


def _cat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def score_beton(
    forward: Forward, beton: Path, batch_size: int, workers: int, label: str = "", progress: bool = True,
    chunk_dir: Path | None = None, positions: np.ndarray | None = None, post: Post = scores_only, chunk_samples: int = 2048,
) -> dict[str, Any]:
    """One inference pass over a .beton (or its `positions`) in file order.

    Outputs stay on the device for a chunk of whole batches (about `chunk_samples` images), which
    is then copied to the host in one go, without waiting: the host waits for it (one sync per
    chunk) only once the next chunk's work is queued. A chunk's outputs (forward's, then `post`
    on them) go, with labels and sample ids, to a numbered chunk file in `chunk_dir`; a pass
    killed earlier continues after its last flushed chunk, with the same batches as one pass.
    Without `chunk_dir` they are returned, concatenated (for small outputs only). Also returns
    the images/s and seconds of the pass.
    """
    if positions is None:
        positions = np.arange(len(read_int_fields(beton)["sample_id"]))
    n_total = len(positions)
    done: list[Path] = []
    if chunk_dir is not None:
        chunk_dir.mkdir(exist_ok=True)
        done = chunk_paths(chunk_dir)
    start = len(column(done, "labels")) if done else 0
    batches_per_chunk = max(1, chunk_samples // batch_size)
    kept: list[dict[str, np.ndarray]] = []  # without chunk_dir: every chunk
    index = len(done)
    outputs: list[dict[str, torch.Tensor]] = []  # the coming chunk's, on the device
    ids: list[tuple[np.ndarray, np.ndarray]] = []  # its labels and sample ids
    copying: list[tuple[Callable[[], dict[str, np.ndarray]], np.ndarray, np.ndarray]] = []  # the chunk being copied

    def land() -> None:  # the oldest chunk being copied, once copied: post, then saved or kept
        nonlocal index
        wait, labels, sid = copying.pop(0)
        chunk = {**post(wait(), labels), "labels": labels, "sample_id": sid}
        if chunk_dir is not None:
            _save_chunk(chunk_dir, index, chunk)
            index += 1
        else:
            kept.append(chunk)

    def flush(last: bool) -> None:  # start copying the coming chunk; land the one before (all, at the end)
        if outputs:
            on_device = {k: torch.cat([o[k] for o in outputs]) for k in outputs[0]}
            labels, sid = (np.concatenate(a) for a in zip(*ids))
            copying.append((download(on_device), labels, sid))
            outputs.clear()
            ids.clear()
        while len(copying) > (0 if last else 1):
            land()

    t0, n = time.perf_counter(), 0
    with images_progress(progress) as bar, torch.inference_mode():
        task = bar.add_task(label, total=n_total, completed=start, info="resumed" if start else "")
        if start < n_total:
            loader = make_loader(beton, batch_size, workers, indices=positions[start:])
            for b, (images, y, sid) in enumerate(loader, 1):  # images: (B, H, W, 3) uint8
                ids.append((y.numpy().astype(np.int64), sid.numpy().astype(np.int64)))  # copies: FFCV reuses its buffers
                outputs.append(forward(images, positions[start + n:start + n + len(y)]))
                n += len(y)
                bar.update(task, advance=len(y))
                if b % batches_per_chunk == 0:
                    flush(last=False)
        flush(last=True)
    seconds = time.perf_counter() - t0
    result: dict[str, Any] = _cat(kept) if kept else {}
    result.update(images_per_s=n / max(seconds, 1e-9), seconds=seconds)
    return result
