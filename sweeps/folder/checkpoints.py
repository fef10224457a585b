"""A trial's epoch checkpoints: ``<sweep>/train/trial-<id>/epoch-NNNN/{state.pt, history.json}``.

Ray Train writes this layout for a TorchTrainer trial (its ``checkpoint_dir_name``); an in-process trial writes
the same one itself (:func:`write_checkpoint`), so the resume logic is shared. A folder counts as a checkpoint
only once its state file exists: the history is written first, the state last, each atomically. A checkpoint that
cannot be read anyway is set aside (``corrupt-epoch-NNNN-<time>``) and the previous one is used
(:func:`restore_newest`), with a warning naming it.

Beside them, ``best/`` holds the trial's best epoch by the spec's metric (:class:`BestCheckpoint`: the student's
weights, the history up to it, its metrics and what an export needs to rebuild the model); when a trial ends, the
driver prunes its folder by the spec's ``keep`` (:func:`prune`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import platform
import time
import uuid

import torch

from l2d.storage import Location, failpoint
from sweeps.core.vocab import better

logger = logging.getLogger(__name__)

STATE_FILE = "state.pt"
HISTORY_FILE = "history.json"
BEST = "best"
#: Result key under which a resumed trial replays its epochs before the resume (a JSON list of metric dicts).
HISTORY_KEY = "history_before_resume"


def checkpoint_folders(run_dir: Location) -> list[Location]:
    """A trial's ``epoch-NNNN`` folders holding a state file, newest first."""
    candidates = [entry for entry in run_dir.list() if entry.name.startswith("epoch-")]
    candidates.sort(key=lambda entry: entry.name, reverse=True)
    return [folder for folder in candidates if (folder / STATE_FILE).is_file()]


def latest_checkpoint(run_dir: Location) -> Location | None:
    """The newest complete ``epoch-NNNN`` checkpoint of a trial, or None."""
    folders = checkpoint_folders(run_dir)
    return folders[0] if folders else None


def write_checkpoint(run_dir: Location, epoch: int, state: dict, history: list[dict], keep: int = 2) -> Location:
    """Write ``epoch-NNNN`` (history first, the state last), then delete all but the newest ``keep``."""
    folder = run_dir / f"epoch-{epoch:04d}"
    (folder / HISTORY_FILE).write_text(json.dumps(history))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    (folder / STATE_FILE).write_bytes(buffer.getvalue())
    for old in checkpoint_folders(run_dir)[keep:]:
        old.delete()
    return folder


def read_checkpoint(folder: Location) -> tuple[dict, list[dict]]:
    """``(engine state, history)`` of a checkpoint folder (the state loaded with ``weights_only=True``)."""
    state = torch.load(io.BytesIO((folder / STATE_FILE).read_bytes()), map_location="cpu", weights_only=True)
    return state, json.loads((folder / HISTORY_FILE).read_text())


class UnreadableCheckpointError(RuntimeError):
    """A checkpoint's files cannot be read; the message names the folder."""


def _engine_state(state) -> bool:
    """An engine's state (:meth:`l2d.engine.Distiller.state_dict`), or a multi-seed trial's: one per student under
    ``replicas``."""
    if isinstance(state, dict) and isinstance(state.get("replicas"), list) and state["replicas"]:
        return all(isinstance(replica, dict) and "model" in replica for replica in state["replicas"])
    return isinstance(state, dict) and "model" in state


def load_checkpoint(folder: Location) -> tuple[dict, list[dict]]:
    """:func:`read_checkpoint`, with any failure to read it as :class:`UnreadableCheckpointError` naming the folder."""
    try:
        state, history = read_checkpoint(folder)
        if not _engine_state(state) or not isinstance(history, list):
            raise ValueError("not an engine state and a history")
        return state, history
    except UnreadableCheckpointError:
        raise
    except Exception as error:  # noqa: BLE001 - torch.load and json raise many kinds for a damaged file
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise UnreadableCheckpointError(f"{folder}: unreadable checkpoint ({reason})") from None


def set_aside(folder: Location, why: str = "corrupt") -> Location:
    """Move a checkpoint folder out of the way (kept for inspection, no longer found as a checkpoint)."""
    aside = folder.parent / f"{why}-{folder.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    for entry in folder.list():
        entry.move(aside / entry.name)
    folder.delete()
    return aside


def restore_newest(run_dir: Location, set_aside_unreadable: bool = True) -> tuple[dict, list[dict]] | None:
    """``(state, history)`` of the newest readable checkpoint of a trial; unreadable newer ones are set aside (by the
    one process that should move files: DDP's rank 0)."""
    for folder in checkpoint_folders(run_dir):
        try:
            return load_checkpoint(folder)
        except UnreadableCheckpointError as error:
            if set_aside_unreadable:
                logger.warning(
                    "%s; set it aside as %s and falling back to the previous checkpoint", error, set_aside(folder).name
                )
            else:
                logger.warning("%s; falling back to the previous checkpoint", error)
    return None


class BestCheckpoint:
    """The trial's best epoch by ``metric`` (``mode``), kept in ``<run>/best/`` as one unit: ``model-<epoch>-<tag>.pt``
    (the student's state dict), ``history-<epoch>-<tag>.json`` (every epoch up to it), then ``best.json`` (its epoch,
    metrics, the model's shape and labels, and the names and SHA-256 of the two files), written last: a crash
    between the writes leaves the previous best whole, and a reader never pairs one epoch's weights with another's
    metrics. Written by the trial's rank 0 each time an epoch beats the best so far; older files are removed after."""

    def __init__(self, run_dir: Location, metric: str, mode: str):
        self.folder = run_dir / BEST
        self.metric, self.mode = metric, mode
        self.value = None
        info = self.folder / "best.json"
        if info.is_file():  # a resumed trial: the best before the crash still counts
            try:
                self.value = json.loads(info.read_text())["metrics"].get(metric)
            except (ValueError, KeyError, AttributeError, UnicodeDecodeError):
                self.value = None

    def _better(self, value: float) -> bool:
        return better(value, self.value, self.mode)

    def offer(self, metrics: dict, run, run_config, selection: dict | None = None) -> bool:
        """Keep this epoch when it is the best so far; returns whether it was. ``selection``: a multi-seed trial's
        students at this epoch (their seeds and values of the metric, whose mean ``metrics`` holds); the student kept
        is ``run``'s, the first seed's, and ``best.json`` says so."""
        value = metrics.get(self.metric)
        if value is None or not self._better(float(value)):
            return False

        buffer = io.BytesIO()
        torch.save(run.student.state_dict(), buffer)
        epoch = int(metrics["epoch"])
        model, history = buffer.getvalue(), json.dumps(run.history).encode()
        tag = f"{epoch:04d}-{uuid.uuid4().hex[:8]}"  # never a name best.json may still point at (a replayed epoch)
        names = {"model": f"model-{tag}.pt", "history": f"history-{tag}.json"}
        (self.folder / names["model"]).write_bytes(model)
        (self.folder / names["history"]).write_bytes(history)
        info = {
            "epoch": epoch,
            "metric": self.metric,
            "mode": self.mode,
            "metrics": metrics,
            "backbone": run_config.student,
            "num_classes": len(run.splits["train"].class_names),
            "class_names": list(run.splits["train"].class_names),
            "embed_dim": run_config.embed_dim,
            "image_size": run_config.image_size,
            "device": device_name(run_config.device),
            "files": names,
            "sha256": {"model": hashlib.sha256(model).hexdigest(), "history": hashlib.sha256(history).hexdigest()},
        }
        if selection is not None:  # metrics are the means over these students; the weights are the first one's
            info["selection"] = selection
        failpoint("best-unit")  # the two files written, best.json not yet: the previous best stays whole
        (self.folder / "best.json").write_text(json.dumps(info))  # last: it names the files that make the unit
        for entry in self.folder.list():  # the previous best's files, no longer named
            if entry.name.startswith(("model", "history")) and entry.name not in names.values():
                entry.delete()
        self.value = float(value)
        return True

    @staticmethod
    def history(run_dir: Location) -> list[dict]:
        """The history saved with the best epoch (empty when there is none, or it is unreadable)."""
        try:
            return read_best(run_dir)[2]
        except (FileNotFoundError, UnreadableCheckpointError):
            return []


def read_best(run_dir: Location) -> tuple[dict, bytes, list[dict]]:
    """``(best.json, the model's bytes, the history)`` of a trial's best epoch, each file checked against the digest
    ``best.json`` gives it (a ``best/`` from before digests: its ``model.pt`` and ``history.json``).

    Raises:
        FileNotFoundError: the trial has no best epoch (no ``best.json``).
        UnreadableCheckpointError: a file is missing, unreadable, or not the one ``best.json`` describes (named).
    """
    folder = run_dir / BEST
    info_file = folder / "best.json"
    try:
        text = info_file.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"{info_file}: no best checkpoint") from None
    try:
        info = json.loads(text)
        if not isinstance(info, dict) or "epoch" not in info or "backbone" not in info:
            raise ValueError("not a best checkpoint's description")
    except (ValueError, UnicodeDecodeError) as error:
        raise UnreadableCheckpointError(f"{info_file}: unreadable ({error})") from None
    names = info.get("files") or {"model": "model.pt", "history": HISTORY_FILE}
    data = {}
    for kind, name in names.items():
        try:
            data[kind] = (folder / name).read_bytes()
        except FileNotFoundError:
            raise UnreadableCheckpointError(f"{folder / name}: missing (best.json names it)") from None
        expected = (info.get("sha256") or {}).get(kind)
        if expected and hashlib.sha256(data[kind]).hexdigest() != expected:
            raise UnreadableCheckpointError(
                f"{folder / name}: not the file best.json describes (its digest differs): best/ is damaged"
            )
    try:
        history = json.loads(data["history"])
    except (ValueError, UnicodeDecodeError) as error:
        raise UnreadableCheckpointError(f"{folder / names['history']}: unreadable ({error})") from None
    return info, data["model"], history


def device_name(device: str | None) -> str:
    """``cuda:0 (NVIDIA H100 80GB HBM3)``, or ``cpu (<processor>, N threads)``: where a latency was measured."""
    if device and device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def prune(run_dir: Location, status: str, keep: str) -> int:
    """What a finished trial keeps: ``all`` everything; ``best+last`` its best epoch and, when it completed, its
    last checkpoint (a stopped or failed trial keeps only its best); ``best`` only its best epoch. A trial with no
    best (it failed in its first epoch) keeps its checkpoints. Returns the bytes freed."""
    if keep == "all" or not (run_dir / BEST / "best.json").is_file():
        return 0
    folders = checkpoint_folders(run_dir)
    kept = folders[:1] if keep == "best+last" and status == "completed" else []
    freed = 0
    for folder in folders:
        if folder not in kept:
            freed += folder.size()
            folder.delete()
    return freed
