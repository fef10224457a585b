"""The teacher's outputs for each view, computed once and read by every run that sees the same views.

A view is a function of (data seed, epoch, image) (:class:`l2d.engine.ViewSampler`), and the teacher is a fixed
model in eval mode, so its outputs for a view are too: every trial of a sweep with the same teacher and data seed
needs the same numbers in the same epoch. The first run to need an image's output in an epoch computes it (the
teacher's forward pass over its batch, as without the cache) and writes it; every later one reads it.

Per epoch, each part the method reads is one memory-mapped array under ``$L2D_SWEEP_CACHE/teacher_outputs/<key>/``:
``logits`` ``[N, C]``, ``label_embeddings`` ``[N, C, D]``, ``features`` ``[N, F]``, in float32 (the default, exact:
the same numbers as the teacher's forward pass on CPU) or float16 (half the bytes, about three digits: measured in
the tests; ``benchmarks/teacher_cache.py`` finds that this moves each trial's result as another seed would), each
with a byte per image saying it is there, set after the numbers (a method that reads the logits alone shares them
with one that reads both). The key is the teacher (its store digest: its data, backbone, recipe, weights), the view
seed, the image size, the train split's fingerprint and the stored type, so nothing stale is read; a file of the
wrong size is not trusted and is filled again. Writers take the epoch's lock (``epoch-<n>.lock``, an advisory
``flock``): two runs of one node that miss the same batch never both compute and write it; the second waits for the
first, then reads what it wrote. The cache lives on each node's local disk (``$L2D_SWEEP_CACHE``): each node
computes its own, once. Methods that read the teacher's intermediate feature maps (``hint``, ``reviewkd``) run the
teacher online, and so does a run whose cache would exceed its budget (``teacher_cache_gb``)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from l2d.losses.registry import METHODS, TERMS
from l2d.models import ModelOutput
from l2d.storage import cache_dir

#: Which part of the teacher's output each loss family reads (the families of :data:`l2d.losses.registry.TERMS`).
PARTS_BY_FAMILY = {
    "l2d.losses.logits": "logits",
    "l2d.losses.embedding": "label_embeddings",
    "l2d.losses.relational": "features",
}
DTYPES = {"float16": np.float16, "float32": np.float32}


def parts_of(method: str) -> tuple[str, ...] | None:
    """The parts of the teacher's output ``method`` reads, or None when it reads its intermediate feature maps (the
    teacher then runs online)."""
    parts = []
    for term in METHODS[method].terms:
        family = TERMS[term].fn.split(":")[0]
        if family not in PARTS_BY_FAMILY or TERMS[term].stages is not None:
            return None
        parts.append(PARTS_BY_FAMILY[family])
    return tuple(dict.fromkeys(parts))


class TeacherCache:
    """The teacher's outputs of one run's views (see the module docstring)."""

    def __init__(self, folder: Path, count: int, shapes: dict[str, tuple[int, ...]], dtype: str):
        self.folder, self.count, self.shapes, self.dtype = folder, count, shapes, dtype
        self._epoch: int | None = None
        self._maps: dict[str, np.memmap] = {}
        self._lock_fd: int | None = None  # the open epoch's lock file
        self.hits = self.misses = 0  # images read from the cache, and computed here, since the last take_counts()

    @staticmethod
    def plan(
        teacher_digest: str,
        view_seed: int,
        image_size: int,
        train_fingerprint: str,
        count: int,
        shapes: dict[str, tuple[int, ...]],
        dtype: str,
        epochs: int,
        budget_gb: float,
    ) -> tuple[TeacherCache | None, str]:
        """The cache of a run (None when it would exceed ``budget_gb`` over ``epochs``) and a line saying what it
        takes and does."""
        total, sizes = TeacherCache.size(count, shapes, dtype, epochs)
        what = f"{epochs} epoch(s) x {count:,} images x ({sizes})"
        if total > budget_gb * 1e9:
            return None, (
                f"teacher outputs: {what}: {megabytes(total)} in {dtype}, over the budget of {budget_gb:g} GB "
                f"(teacher_cache_gb): the teacher runs online"
            )
        # The parts are not in the key: a method that reads the logits alone shares them with one that reads both.
        key = hashlib.sha256(
            json.dumps([teacher_digest, view_seed, image_size, train_fingerprint, dtype]).encode()
        ).hexdigest()[:32]
        folder = cache_dir() / "teacher_outputs" / key
        return TeacherCache(folder, count, shapes, dtype), (
            f"teacher outputs: {what}: up to {megabytes(total)} in {dtype} under {folder}, computed once per view "
            f"and read by every run with this teacher and data seed"
        )

    @staticmethod
    def size(count: int, shapes: dict[str, tuple[int, ...]], dtype: str, epochs: int) -> tuple[int, str]:
        """The bytes the parts ``shapes`` of ``count`` images take over ``epochs`` in ``dtype``, and a phrase that
        gives each part's size an epoch in ``dtype`` (``logits 26.3 MB, label_embeddings 20.2 GB an epoch in
        float32``)."""
        itemsize = np.dtype(DTYPES[dtype]).itemsize
        per_image = sum(int(np.prod(shape)) for shape in shapes.values()) * itemsize
        sizes = ", ".join(
            f"{part} {megabytes(int(np.prod(shape)) * count * itemsize)}" for part, shape in shapes.items()
        )
        return per_image * count * epochs, f"{sizes} an epoch in {dtype}"

    def _open(self, epoch: int) -> None:
        if self._epoch == epoch:
            return
        self.close()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.folder / f"epoch-{epoch:04d}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        maps = {}
        with self._locked():  # sizes checked and flags reset by one run at a time: never over another's rows
            for part, shape in self.shapes.items():
                name = f"epoch-{epoch:04d}.{part}"
                maps[part], resized = _map(self.folder / name, (self.count, *shape), DTYPES[self.dtype])
                maps[f"{part}.filled"], _ = _map(self.folder / f"{name}.filled", (self.count,), np.uint8)
                if resized:  # a part of another size (new, damaged, cut short): none of its rows is trusted
                    maps[f"{part}.filled"][:] = 0
        self._maps, self._epoch = maps, epoch

    @contextlib.contextmanager
    def _locked(self):
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Let go of the open epoch's files (the next :meth:`outputs` opens its epoch's again)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
        self._lock_fd, self._maps, self._epoch = None, {}, None

    def __del__(self):  # a run's cache goes with its run (an in-process trial's process outlives many runs)
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit os may already be gone
            pass

    def _filled(self, rows: np.ndarray) -> bool:
        return all(self._maps[f"{part}.filled"][rows].all() for part in self.shapes)

    def outputs(self, epoch: int, indices: torch.Tensor, compute) -> ModelOutput:
        """The teacher's outputs for the views ``indices`` of ``epoch``: read when every one is there, else
        ``compute()`` (the teacher's forward pass over the batch) written first. Either way the numbers are the
        stored ones (in float16, rounded), so that a run gets the same numbers whether it wrote them or read them.
        A run that misses takes the epoch's lock and looks again: another run may have written the batch meanwhile."""
        self._open(epoch)
        rows = indices.cpu().numpy()
        if self._filled(rows):
            self.hits += len(rows)
        else:
            with self._locked():
                if self._filled(rows):  # written by another run while this one waited
                    self.hits += len(rows)
                else:
                    computed = compute()
                    for part in self.shapes:  # the numbers first, then the flags that say they are there
                        self._maps[part][rows] = getattr(computed, part).detach().float().cpu().numpy()
                    for part in self.shapes:
                        self._maps[f"{part}.filled"][rows] = 1
                    self.misses += len(rows)
        device = indices.device
        read = {
            part: torch.from_numpy(np.asarray(self._maps[part][rows], dtype=np.float32)).to(device)
            for part in self.shapes
        }
        return ModelOutput(read.get("logits"), read.get("label_embeddings"), read.get("features"))

    def take_counts(self) -> tuple[int, int]:
        """``(hits, misses)`` since the last call."""
        counts, self.hits, self.misses = (self.hits, self.misses), 0, 0
        return counts


def _map(path: Path, shape: tuple[int, ...], dtype) -> tuple[np.memmap, bool]:
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        resized = os.fstat(fd).st_size != size
        if resized:
            os.ftruncate(fd, size)
    finally:
        os.close(fd)
    return np.memmap(path, dtype=dtype, mode="r+", shape=shape), resized


def megabytes(size: float) -> str:
    """``13.2 MB``, ``10.4 GB`` or ``16.0 kB``."""
    if size >= 1e9:
        return f"{size / 1e9:.1f} GB"
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"
