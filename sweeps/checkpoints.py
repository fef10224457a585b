"""A trial's epoch checkpoints: ``<sweep>/train/trial-<id>/epoch-NNNN/{state.pt, history.json}``.

Ray Train writes this layout for a TorchTrainer trial (its ``checkpoint_dir_name``); an in-process trial writes
the same one itself (:func:`write_checkpoint`), so the resume logic is shared. A folder counts as a checkpoint
only once its state file exists: the history is written first, the state last, each atomically.
"""

from __future__ import annotations

import io
import json
import logging

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
