"""A trial's epoch checkpoints: ``<sweep>/train/trial-<id>/epoch-NNNN/{state.pt, history.json}``.

Ray Train writes this layout for a TorchTrainer trial (its ``checkpoint_dir_name``); an in-process trial writes
the same one itself (:func:`write_checkpoint`), so the resume logic is shared. A folder counts as a checkpoint
only once its state file exists: the history is written first, the state last, each atomically. A checkpoint that
cannot be read anyway is set aside (``corrupt-epoch-NNNN-<time>``) and the previous one is used
(:func:`restore_newest`), with a warning naming it.
"""

from __future__ import annotations

import io
import json
import logging
import time

from l2d.storage import Location

logger = logging.getLogger(__name__)

STATE_FILE = "state.pt"
HISTORY_FILE = "history.json"


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
    import torch

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
    import torch

    state = torch.load(io.BytesIO((folder / STATE_FILE).read_bytes()), map_location="cpu", weights_only=True)
    return state, json.loads((folder / HISTORY_FILE).read_text())


class UnreadableCheckpointError(ValueError):
    """A checkpoint's files cannot be read; the message names the folder."""


def load_checkpoint(folder: Location) -> tuple[dict, list[dict]]:
    """:func:`read_checkpoint`, with any failure to read it as :class:`UnreadableCheckpointError` naming the folder."""
    try:
        state, history = read_checkpoint(folder)
        if not isinstance(state, dict) or "model" not in state or not isinstance(history, list):
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
                logger.warning("%s; set it aside as %s and falling back to the previous checkpoint", error,
                               set_aside(folder).name)
            else:
                logger.warning("%s; falling back to the previous checkpoint", error)
    return None
