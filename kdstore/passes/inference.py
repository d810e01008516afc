"""The inference pass: a model over the images of a .beton, batch by batch, in file order.

`cache` runs it with the teacher (clean images, then stored views), the student scorer with the
student, and `bench` times it. Forward functions make what a model is given exactly as `train`
makes it (normalise, augment with given parameters, resize); outputs are flushed in chunks of
whole batches (each chunk file whole or absent), so a killed pass resumes where it stopped and
no pass ever holds an (N, C) table."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from kdstore.data.augment import AUGMENTATIONS, normalize, resize
from kdstore.data.beton import epoch_of, make_loader, read_int_fields
from kdstore.method.curriculum import confidence_and_correct
from kdstore.method.int8 import quantize
from kdstore.method.sparse_targets import draw_uniforms, sample_classes, topk_compress
from kdstore.models.build import normalization
from kdstore.models.teachers import Teacher
from kdstore.runtime import interrupts
from kdstore.runtime.blocks import Blocks, LargeArray
from kdstore.runtime.console import images_progress, say
from kdstore.runtime.files import writing
from kdstore.runtime.hashing import sha256_file
from kdstore.runtime.precision import autocast, device_layout, for_device
from kdstore.runtime.transfer import download, upload
from kdstore.store.mixes import Mixing
from kdstore.store.quantized import SUFFIXES, Quantized


@dataclass(frozen=True, kw_only=True)
class ModelInput:
    """A model and how it is given a batch of (B, H, W, 3) uint8 images: normalised with mean and
    std (each (3,) on `device`), resized to `input_size`, in the device layout (channels_last,
    as precision.for_device put the model), under bf16 autocast when `amp` (CUDA only)."""

    model: torch.nn.Module
    mean: torch.Tensor
    std: torch.Tensor
    input_size: int
    device: torch.device
    amp: bool = False

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) float32 of a batch of (B, H, W, 3) uint8 images."""
        return self.logits(normalize(upload(images, self.device), self.mean, self.std))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) float32 of normalised images (B, 3, H, W) already on the device."""
        with autocast(self.device, self.amp):
            return self.model(device_layout(resize(x, self.input_size))).float()


def teacher_input(teacher: Teacher, device: torch.device, amp: bool) -> ModelInput:
    """The teacher on `device` (in its layout), given images as its passes give them."""
    model = for_device(teacher.model, device)
    mean, std = normalization(model)
    return ModelInput(
        model=model,
        mean=torch.tensor(mean, device=device),
        std=torch.tensor(std, device=device),
        input_size=int(teacher.meta["input_size"]),
        device=device,
        amp=amp,
    )


# forward(images (B, H, W, 3) uint8, their .beton positions (B,)) -> named outputs, each (B, ...)
Forward = Callable[[torch.Tensor, np.ndarray], dict[str, torch.Tensor]]


def clean_forward(inp: ModelInput) -> Forward:
    """Logits of the un-augmented images (the model is put in eval mode)."""
    inp.model.eval()
    return lambda images, pos: {"logits": inp(images)}


# keep(logits of a batch's views (B, K, C), their positions (B,)) -> what a store keeps of them
Keep = Callable[[torch.Tensor, np.ndarray], dict[str, torch.Tensor]]


def keep_views(topk: int = 0, sample: int = 0, tau: float = 1.0, seed: int = 0, first_view: int = 0) -> Keep:
    """What a store keeps of each view: the full logits, their top-k form, or `sample` class ids
    drawn from softmax(z / tau) (views.py); `first_view` numbers the views (a store extended with
    --extend draws its new views as a fresh cache with more views would)."""
    if sample:
        return lambda logits, pos: {
            "sample_ids": sample_classes(
                logits, draw_uniforms(seed, pos, np.arange(logits.shape[1]) + first_view, sample), tau
            )
        }
    if topk:
        return lambda logits, pos: topk_compress(logits, topk)
    return lambda logits, pos: {"logits": logits}


# Views of a batch the teacher scores in one forward, by device type (at most batch size x this
# many images). A GPU wants large forwards; on the CPU a forward of 2,048 images ran 1.75x slower
# per image than one of 256 (cifar_resnet20, 2 cores: 600 against 1,055 img/s), so a CPU scores
# one view per forward (benchmarks/RESULTS.md, "The views cache at the speed of its forwards").
VIEWS_PER_FORWARD = {"cuda": 8, "cpu": 1}


def views_per_forward(device: torch.device) -> int:
    return VIEWS_PER_FORWARD.get(device.type, 1)


def views_forward(
    inp: ModelInput, params: np.ndarray, augmentation: str, keep: Keep, mixing: Mixing | None = None
) -> Forward:
    """Logits of every stored view of each image: (B, K, C), kept as `keep` says. The views are
    made exactly as `train` replays them: normalise, then augment with the stored parameters,
    (mixed views) mix with the partner augmented alike, then resize to the teacher's input.

    Views 0-7, 8-15, ... of `params` (on CUDA; one by one on the CPU: views_per_forward) go
    through the teacher together, one forward each; a store extended with --extend starts
    `params` at such a boundary, so that every forward holds the images a fresh cache's would."""
    inp.model.eval()
    aug = AUGMENTATIONS[augmentation]
    table = upload(torch.from_numpy(params).long(), inp.device)  # (N, K, P)
    count, group = params.shape[1], views_per_forward(inp.device)

    def view(x: torch.Tensor, pos: np.ndarray, p: torch.Tensor, k: int) -> torch.Tensor:
        def augment(images: torch.Tensor) -> torch.Tensor:
            return aug.apply(images, p[:, k])

        xk = augment(x)
        return xk if mixing is None else mixing(xk, pos, np.full(len(pos), k), augment)

    def forward(images: torch.Tensor, pos: np.ndarray) -> dict[str, torch.Tensor]:
        x = normalize(upload(images, inp.device), inp.mean, inp.std)
        p = table[upload(torch.from_numpy(pos), inp.device)]
        groups = []
        for lo in range(0, count, group):
            views = [view(x, pos, p, k) for k in range(lo, min(lo + group, count))]
            out = inp.logits(torch.cat(views))
            groups.append(out.reshape(len(views), len(pos), -1).transpose(0, 1))  # view-major -> (B, views, C)
        return keep(torch.cat(groups, 1), pos)

    return forward


# post(outputs of a batch as numpy arrays, its labels) -> what is kept of them
Post = Callable[[dict[str, np.ndarray], np.ndarray], dict[str, np.ndarray]]


def stored_outputs(logits_dtype: str, scores: bool = True) -> Post:
    """What a store keeps of a batch: logits in the stored dtype (int8: codes, NAME_scale and
    NAME_offset, quantized.py) and, for clean images (with `scores`), each sample's confidence
    and correctness computed from the float32 logits first."""

    def post(out: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, np.ndarray]:
        kept = dict(out)
        if scores and "logits" in out and out["logits"].ndim == 2:
            kept["confidence"], kept["correct"] = confidence_and_correct(out["logits"], labels)
        for key in ("logits", "topk_values"):
            if key in kept and logits_dtype == "int8":
                kept.update(zip((key + s for s in SUFFIXES), quantize(kept[key])))
            elif key in kept:
                kept[key] = kept[key].astype(logits_dtype)
        return kept

    return post


def scores_only(out: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, np.ndarray]:
    """A scorer keeps confidence and correctness, not the (N, C) logits."""
    confidence, correct = confidence_and_correct(out["logits"], labels)
    return {"confidence": confidence, "correct": correct}


def chunk_paths(chunk_dir: Path) -> list[Path]:
    """The contiguous chunks 000000.npz, 000001.npz, ... flushed so far (each is whole or absent)."""
    paths: list[Path] = []
    while (path := chunk_dir / f"{len(paths):06d}.npz").is_file():
        paths.append(path)
    return paths


def reusable_chunks(chunk_dir: Path) -> list[Path]:
    """`chunk_paths`, each checked against the sha256 recorded beside it when it was flushed: from
    the first that differs (a damaged file), the chunks are removed, saying so, and scored again."""
    paths = chunk_paths(chunk_dir)
    for i, path in enumerate(paths):
        seal = path.with_suffix(".sha256")
        if seal.is_file() and seal.read_text().strip() == sha256_file(path):
            continue
        say(
            f"--resume: chunk {path.name} of {chunk_dir.name} differs from the sha256 recorded when it was flushed "
            "(damaged?); scoring again from it"
        )
        for later in paths[i:]:
            later.unlink()
        return paths[:i]
    return paths


def _save_chunk(chunk_dir: Path, index: int, chunk: dict[str, np.ndarray]) -> None:
    """A chunk file, whole or absent, with its sha256 beside it (NNNNNN.sha256, written first)."""
    tmp, final = chunk_dir / f".{index:06d}.tmp.npz", chunk_dir / f"{index:06d}.npz"
    with writing(final):
        np.savez(tmp, **chunk)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
        final.with_suffix(".sha256").write_text(sha256_file(tmp) + "\n")
        os.replace(tmp, final)  # atomic: a chunk file is whole or absent


def column(paths: list[Path], key: str) -> np.ndarray:
    """One output over all chunks, concatenated (for the small per-sample arrays)."""
    parts = []
    for path in paths:
        with np.load(path) as z:
            parts.append(z[key])
    return np.concatenate(parts)


def column_blocks(paths: list[Path], key: str) -> Blocks:
    """One large output over all chunks, as blocks read one chunk at a time (never all at once)."""
    n, shape, dtype = 0, (), np.dtype(np.float32)
    for path in paths:
        with np.load(path) as z:
            n += len(z["labels"])
            if n == len(z["labels"]):  # the first chunk
                first = z[key]
                shape, dtype = first.shape[1:], first.dtype

    def read():
        for path in paths:
            with np.load(path) as z:
                yield z[key]

    return Blocks((n, *shape), dtype, read)


def stored_column(paths: list[Path], key: str) -> LargeArray:
    """A stored output over all chunks as blocks: int8 logits (KEY_scale beside KEY in the
    chunks) as a Quantized of their three columns."""
    with np.load(paths[0]) as z:
        quantized = key + SUFFIXES[1] in z.files
    if not quantized:
        return column_blocks(paths, key)
    return Quantized(*(column_blocks(paths, key + s) for s in SUFFIXES))


def _cat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@dataclass(frozen=True, kw_only=True)
class ScorePass:
    """One inference pass over a .beton: which file (and which of its `positions`, in file order),
    the batch size and FFCV threads, its progress bar, and what becomes of the outputs: `post` on
    each chunk, flushed to numbered files in `chunk_dir` every ~`chunk_samples` images (or, without
    `chunk_dir`, returned whole: small outputs only)."""

    beton: Path
    batch_size: int
    workers: int
    label: str = ""
    progress: bool = True
    chunk_dir: Path | None = None
    positions: np.ndarray | None = None
    post: Post = scores_only
    chunk_samples: int = 2048


class _Chunks:
    """A pass's outputs on their way to the host: the coming chunk's on the device, the one before
    being copied. A landed chunk is saved to its numbered file (or kept in memory)."""

    def __init__(self, job: ScorePass, index: int) -> None:
        self.job, self.index = job, index
        self.kept: list[dict[str, np.ndarray]] = []  # without chunk_dir: every chunk
        self.outputs: list[dict[str, torch.Tensor]] = []  # the coming chunk's, on the device
        self.ids: list[tuple[np.ndarray, np.ndarray]] = []  # its labels and sample ids
        self.copying: list[tuple[Callable[[], dict[str, np.ndarray]], np.ndarray, np.ndarray]] = []

    def add(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor, sample_id: torch.Tensor) -> None:
        self.ids.append(
            (labels.numpy().astype(np.int64), sample_id.numpy().astype(np.int64))
        )  # copies: FFCV reuses its buffers
        self.outputs.append(outputs)

    def _land(self) -> None:
        """The oldest chunk being copied, once copied: post, then saved or kept."""
        wait, labels, sid = self.copying.pop(0)
        chunk = {**self.job.post(wait(), labels), "labels": labels, "sample_id": sid}
        if self.job.chunk_dir is not None:
            _save_chunk(self.job.chunk_dir, self.index, chunk)
            self.index += 1
        else:
            self.kept.append(chunk)

    def flush(self, last: bool) -> None:
        """Start copying the coming chunk; land the one before (all of them, at the end)."""
        if self.outputs:
            on_device = {k: torch.cat([o[k] for o in self.outputs]) for k in self.outputs[0]}
            labels, sid = (np.concatenate(a) for a in zip(*self.ids))
            self.copying.append((download(on_device), labels, sid))
            self.outputs.clear()
            self.ids.clear()
        while len(self.copying) > (0 if last else 1):
            self._land()


def score_beton(forward: Forward, job: ScorePass) -> dict[str, Any]:
    """One inference pass over job.beton (or its job.positions) in file order.

    Outputs stay on the device for a chunk of whole batches (about `chunk_samples` images), which
    is then copied to the host in one go, without waiting: the host waits for it (one sync per
    chunk) only once the next chunk's work is queued. A chunk's outputs (forward's, then `post`
    on them) go, with labels and sample ids, to a numbered chunk file in `chunk_dir`; a pass
    killed earlier continues after its last flushed chunk, with the same batches as one pass.
    Without `chunk_dir` they are returned, concatenated (for small outputs only). Also returns
    the images/s and seconds of the pass.
    """
    positions = job.positions if job.positions is not None else np.arange(len(read_int_fields(job.beton)["sample_id"]))
    done: list[Path] = []
    if job.chunk_dir is not None:
        job.chunk_dir.mkdir(exist_ok=True)
        done = reusable_chunks(job.chunk_dir)
    start = len(column(done, "labels")) if done else 0
    batches_per_chunk = max(1, job.chunk_samples // job.batch_size)
    chunks = _Chunks(job, len(done))
    t0, n = time.perf_counter(), 0
    with images_progress(job.progress) as bar, torch.inference_mode():
        task = bar.add_task(job.label, total=len(positions), completed=start, info="resumed" if start else "")
        if start < len(positions):
            loader = make_loader(job.beton, job.batch_size, job.workers, indices=positions[start:])
            with epoch_of(loader) as batches:
                for b, (images, y, sid) in enumerate(batches, 1):  # images: (B, H, W, 3) uint8
                    interrupts.check()
                    chunks.add(forward(images, positions[start + n : start + n + len(y)]), y, sid)
                    n += len(y)
                    bar.update(task, advance=len(y))
                    if b % batches_per_chunk == 0:
                        chunks.flush(last=False)
        chunks.flush(last=True)
    seconds = time.perf_counter() - t0
    result: dict[str, Any] = _cat(chunks.kept) if chunks.kept else {}
    result.update(images_per_s=n / max(seconds, 1e-9), seconds=seconds)
    return result
