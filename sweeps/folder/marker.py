"""A sweep folder's own safety: the marker that says "this is a sweep", and the lease that says who drives it.

**Marker.** ``<sweep>/.l2d-sweep`` (JSON: tool, format, sweep id, creation time) is written only by this tool, when a
sweep starts. ``run --new`` deletes only a folder that carries it; ``run`` refuses a non-empty folder without it,
and the names of the storage's shared folders (:data:`RESERVED`). A sweep written before the marker existed (a
``spec.yaml`` beside ``tune/`` or ``results/``) is recognised as one and gets its marker at its next resume. The
marker's sweep id seeds the sweep's deterministic trial ids (:func:`trial_id`).

**Lease.** Who drives the sweep now: :mod:`sweeps.folder.lease` (a compare-and-swap on every store). ``results`` and
``status`` never need it. Nothing here is pickled or unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid

from l2d.storage import Location
from sweeps.folder.lease import LeaseHeldError, read_lease

# Loaded late, inside the functions that use them: sweeps.core.checks (imported where its absence is handled).

logger = logging.getLogger(__name__)

MARKER = ".l2d-sweep"
FORMAT = 1
#: Names a sweep may not have: folders the storage shares between sweeps.
RESERVED = ("teachers", "tensorboard", "datasets", "exports")


class SweepFolderError(ValueError):
    """A sweep folder cannot be created, used or deleted as asked (bad input: exit status 2)."""


class SweepExistsError(SweepFolderError):
    """``run`` was asked to start a sweep whose folder already holds one."""


class SweepNotFoundError(SweepFolderError, FileNotFoundError):
    """``resume`` was given a folder without a sweep."""


# --- marker ------------------------------------------------------------------------------------------------------


def check_name(name: str) -> None:
    if name in RESERVED or name.startswith("."):
        raise SweepFolderError(
            f"sweep name {name!r} is reserved (the storage's shared folders are "
            f"{', '.join(RESERVED)}); choose another name"
        )


def read_marker(sweep_dir: Location) -> dict | None:
    """The marker's content, or None when the folder has none. A damaged marker still marks a sweep: it comes back
    as ``{"damaged": True, "sweep_id": None}`` (the id is recovered from the study and the results, see
    :func:`sweeps.search.study.sweep_identity`); nothing is written here."""
    path = sweep_dir / MARKER
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text())
        if isinstance(marker, dict) and marker.get("tool") == "l2d-sweep" and isinstance(marker.get("sweep_id"), str):
            return marker
    except (ValueError, UnicodeDecodeError):
        pass
    return {"tool": "l2d-sweep", "format": FORMAT, "sweep_id": None, "damaged": True}


def _path_id(sweep_dir: Location) -> str:
    return hashlib.sha256(str(sweep_dir).encode()).hexdigest()[:16]


def is_legacy_sweep(sweep_dir: Location) -> bool:
    """A sweep written before markers existed, recognised by what only this tool wrote together: a ``spec.yaml``
    that is a sweep spec *of this folder* (a mapping with ``pairings`` and ``methods`` whose ``name`` is the folder's),
    beside a results table (``results/trials.parquet``) or Tune's experiment state (``tune/experiment_state-*.json``).
    A user's folder that merely holds a ``spec.yaml`` and a ``results/`` folder is not one: ``run --new`` never
    deletes it."""
    spec_file = sweep_dir / "spec.yaml"
    if not spec_file.is_file():
        return False
    try:
        from sweeps.core.checks import safe_yaml

        data = safe_yaml(spec_file.read_text())
    except Exception:  # noqa: BLE001 - not YAML (or not readable): not provably a sweep's spec
        return False
    if not isinstance(data, dict) or data.get("name") != sweep_dir.name or not {"pairings", "methods"} <= set(data):
        return False
    if (sweep_dir / "results" / "trials.parquet").is_file():
        return True
    tune = sweep_dir / "tune"
    return tune.is_dir() and any(
        entry.name.startswith("experiment_state-") and entry.name.endswith(".json") for entry in tune.list()
    )


def is_sweep(sweep_dir: Location) -> bool:
    return read_marker(sweep_dir) is not None or is_legacy_sweep(sweep_dir)


def write_marker(sweep_dir: Location, sweep_id: str | None = None, **fields) -> dict:
    """Write the marker (a new random id unless given); ``fields`` are kept in it (the stored spec's digest...)."""
    marker = {
        "tool": "l2d-sweep",
        "format": FORMAT,
        "sweep_id": sweep_id or uuid.uuid4().hex[:16],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **fields,
    }
    (sweep_dir / MARKER).write_text(json.dumps(marker, indent=2))
    return marker


def update_marker(sweep_dir: Location, **fields) -> dict:
    """The marker with ``fields`` changed (a driver only: the experiment number, the spec's digest)."""
    marker = {k: v for k, v in (read_marker(sweep_dir) or {}).items() if k != "damaged"}
    marker.update(fields)
    (sweep_dir / MARKER).write_text(json.dumps(marker, indent=2))
    return marker


def legacy_id(sweep_dir: Location) -> str:
    """The id of a sweep from before markers: derived from its path, as its study was named then."""
    return _path_id(sweep_dir)


def prepare_new(sweep_dir: Location, delete_existing: bool, say=print, force: bool = False) -> None:
    """Check that a new sweep may be written at ``sweep_dir``; with ``delete_existing`` delete the sweep there
    (never one whose lease another driver holds, unless ``force``).

    Raises:
        SweepFolderError: a reserved name, a non-empty folder that is not a sweep, or a sweep without --new.
        LeaseHeldError: ``--new`` on a sweep that another driver is running.
    """
    check_name(sweep_dir.name)
    if not sweep_dir.exists():
        return
    if not sweep_dir.is_dir():
        raise SweepFolderError(
            f"{sweep_dir} exists and is a file, not a sweep folder; choose another --name or --storage"
        )
    if not is_sweep(sweep_dir):
        if sweep_dir.list():
            raise SweepFolderError(
                f"{sweep_dir} exists and is not a sweep folder (no {MARKER} marker): refusing to "
                f"write into it or delete it; choose another --name or --storage"
            )
        return
    if not delete_existing:
        raise SweepExistsError(
            f"a sweep already exists at {sweep_dir}; continue it with `l2d-sweep resume "
            f"{sweep_dir}`, or pass --new to delete it and start over"
        )
    held = read_lease(sweep_dir)
    if held is not None and held.stale() is None and not force:
        raise LeaseHeldError(
            f"{sweep_dir} is being driven by {held.describe()}; refusing to delete it (--new) while "
            f"it runs; pass --force if that driver is gone"
        )
    say(f"--new: deleting the previous sweep at {sweep_dir}")
    sweep_dir.delete()


def trial_id(sweep_id: str, experiment: int, counter: int) -> str:
    """The id of the ``counter``-th trial (1-based) of the sweep's ``experiment``-th Tune experiment: 8 hex digits,
    the same every time, so a trial Tune re-creates after a crash comes back under its own id."""
    return hashlib.sha256(f"{sweep_id}:{experiment}:{counter}".encode()).hexdigest()[:8]
