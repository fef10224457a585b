"""A sweep folder's own safety: the marker that says "this is a sweep", and the lease that says who drives it.

**Marker.** ``<sweep>/.l2d-sweep`` (JSON: tool, format, sweep id, creation time) is written only by this tool, when a
sweep starts. ``run --new`` deletes only a folder that carries it; ``run`` refuses a non-empty folder without it,
and the names of the storage's shared folders (:data:`RESERVED`). A sweep written before the marker existed (a
``spec.yaml`` beside ``tune/`` or ``results/``) is recognised as one and gets its marker at its next resume. The
marker's sweep id seeds the sweep's deterministic trial ids (:func:`trial_id`).

**Lease.** The driver of a sweep holds ``<sweep>/lease.json`` (owner token, user, host, pid, command, when it was
acquired, last heartbeat) and renews it every :data:`HEARTBEAT_S` seconds from a background thread. A second
``run``/``resume``/``extend`` refuses, naming the holder and since when, unless the lease is stale (no heartbeat for
:data:`LEASE_TIMEOUT_S` seconds, ``$L2D_SWEEP_LEASE_TIMEOUT``; or its process is gone, when it ran on this host) or
``--force`` is given. Two drivers that start at the same moment both write their lease, wait :data:`SETTLE_S`
seconds and read it back: only the last writer goes on. A driver that finds another owner in the lease (taken over
with ``--force``) stops at once, before writing anything more. ``results`` and ``status`` never need the lease.
Works the same on local and ``s3://`` / ``gs://`` storage (it needs no lock primitive, only reads and writes).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from l2d.storage import Location

logger = logging.getLogger(__name__)

MARKER = ".l2d-sweep"
LEASE = "lease.json"
FORMAT = 1
#: Names a sweep may not have: folders the storage shares between sweeps.
RESERVED = ("teachers", "tensorboard", "datasets", "exports")
LEASE_TIMEOUT_S = float(os.environ.get("L2D_SWEEP_LEASE_TIMEOUT", "120"))
HEARTBEAT_S = max(1.0, LEASE_TIMEOUT_S / 8)
SETTLE_S = float(os.environ.get("L2D_SWEEP_LEASE_SETTLE", "1.0"))


class SweepFolderError(ValueError):
    """A sweep folder cannot be created, used or deleted as asked (bad input: exit status 2)."""


class SweepExistsError(SweepFolderError):
    """``run`` was asked to start a sweep whose folder already holds one."""


class SweepNotFoundError(SweepFolderError, FileNotFoundError):
    """``resume`` was given a folder without a sweep."""


class LeaseHeldError(RuntimeError):
    """Another driver holds the sweep's lease (the sweep cannot run now: exit status 1)."""


# --- marker ------------------------------------------------------------------------------------------------------

def check_name(name: str) -> None:
    if name in RESERVED or name.startswith("."):
        raise SweepFolderError(f"sweep name {name!r} is reserved (the storage's shared folders are "
                               f"{', '.join(RESERVED)}); choose another name")


def read_marker(sweep_dir: Location) -> dict | None:
    """The marker's content, or None when the folder has none. A damaged marker still marks a sweep."""
    path = sweep_dir / MARKER
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text())
        if isinstance(marker, dict) and marker.get("tool") == "l2d-sweep":
            return marker
    except (ValueError, UnicodeDecodeError):
        pass
    logger.warning("%s: unreadable marker; the folder still counts as a sweep, with an id derived from its path", path)
    return {"tool": "l2d-sweep", "format": FORMAT, "sweep_id": _path_id(sweep_dir)}


def _path_id(sweep_dir: Location) -> str:
    return hashlib.sha256(str(sweep_dir).encode()).hexdigest()[:16]


def is_legacy_sweep(sweep_dir: Location) -> bool:
    """A sweep written before markers existed: ``spec.yaml`` beside ``tune/`` or ``results/``."""
    return (sweep_dir / "spec.yaml").is_file() and ((sweep_dir / "tune").is_dir() or (sweep_dir / "results").is_dir())


def is_sweep(sweep_dir: Location) -> bool:
    return read_marker(sweep_dir) is not None or is_legacy_sweep(sweep_dir)


def write_marker(sweep_dir: Location, sweep_id: str | None = None) -> dict:
    marker = {"tool": "l2d-sweep", "format": FORMAT, "sweep_id": sweep_id or uuid.uuid4().hex[:16],
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (sweep_dir / MARKER).write_text(json.dumps(marker, indent=2))
    return marker


def adopt(sweep_dir: Location) -> dict:
    """The marker of a sweep folder, written first for a sweep that predates markers."""
    marker = read_marker(sweep_dir)
    if marker is None:
        if not is_legacy_sweep(sweep_dir):
            raise SweepNotFoundError(f"{sweep_dir}: not a sweep folder (no {MARKER} marker and no spec.yaml); start one "
                                   f"with `l2d-sweep run SPEC`")
        marker = write_marker(sweep_dir, _path_id(sweep_dir))
        logger.info("%s: a sweep from before markers; marked it", sweep_dir)
    return marker


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
        raise SweepFolderError(f"{sweep_dir} exists and is a file, not a sweep folder; choose another --name or "
                               f"--storage")
    if not is_sweep(sweep_dir):
        if sweep_dir.list():
            raise SweepFolderError(f"{sweep_dir} exists and is not a sweep folder (no {MARKER} marker): refusing to "
                                   f"write into it or delete it; choose another --name or --storage")
        return
    if not delete_existing:
        raise SweepExistsError(f"a sweep already exists at {sweep_dir}; continue it with `l2d-sweep resume "
                               f"{sweep_dir}`, or pass --new to delete it and start over")
    held = read_lease(sweep_dir)
    if held is not None and held.stale() is None and not force:
        raise LeaseHeldError(f"{sweep_dir} is being driven by {held.describe()}; refusing to delete it (--new) while "
                             f"it runs; pass --force if that driver is gone")
    say(f"--new: deleting the previous sweep at {sweep_dir}")
    sweep_dir.delete()


def trial_id(sweep_id: str, experiment: int, counter: int) -> str:
    """The id of the ``counter``-th trial (1-based) of the sweep's ``experiment``-th Tune experiment: 8 hex digits,
    the same every time, so a trial Tune re-creates after a crash comes back under its own id."""
    return hashlib.sha256(f"{sweep_id}:{experiment}:{counter}".encode()).hexdigest()[:8]


# --- lease -------------------------------------------------------------------------------------------------------

@dataclass
class Lease:
    owner: str
    user: str
    host: str
    pid: int
    command: str
    acquired: float
    heartbeat: float

    @classmethod
    def mine(cls) -> Lease:
        now = time.time()
        return cls(owner=uuid.uuid4().hex, user=_user(), host=socket.gethostname(), pid=os.getpid(),
                   command=" ".join(["l2d-sweep", *sys.argv[1:]])[:300], acquired=now, heartbeat=now)

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.acquired))
        return (f"{self.user}@{self.host} pid {self.pid} ({self.command!r}) since {since}, last heartbeat "
                f"{time.time() - self.heartbeat:.0f} s ago")

    def stale(self) -> str | None:
        """Why this lease no longer holds (None while it does)."""
        age = time.time() - self.heartbeat
        if age > LEASE_TIMEOUT_S:
            return f"no heartbeat for {age:.0f} s (timeout {LEASE_TIMEOUT_S:.0f} s)"
        if self.host == socket.gethostname() and not _alive(self.pid):
            return f"its process {self.pid} on this host is gone"
        return None


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_lease(sweep_dir: Location) -> Lease | None:
    path = sweep_dir / LEASE
    if not path.is_file():
        return None
    try:
        return Lease(**json.loads(path.read_text()))
    except (ValueError, TypeError, UnicodeDecodeError, FileNotFoundError):
        logger.warning("%s: unreadable lease; treating it as stale", path)
        return None


class LeaseKeeper:
    """Holds a sweep's lease while a driver runs: acquire, renew in the background, verify, release."""

    def __init__(self, sweep_dir: Location, force: bool = False, say=print):
        self.sweep_dir = sweep_dir
        self.path = sweep_dir / LEASE
        self.lease = Lease.mine()
        self.force = force
        self.say = say
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: str | None = None

    def acquire(self) -> LeaseKeeper:
        """Take the lease (see the module docstring). Raises :class:`LeaseHeldError` naming its holder."""
        held = read_lease(self.sweep_dir)
        if held is not None and held.owner != self.lease.owner:
            why = held.stale()
            if why is None and not self.force:
                raise LeaseHeldError(f"{self.sweep_dir} is being driven by {held.describe()}; wait for it to end, or "
                                     f"pass --force if that driver is gone (a lease is stale after "
                                     f"{LEASE_TIMEOUT_S:.0f} s without a heartbeat)")
            self.say(f"taking over the lease of {self.sweep_dir} from {held.describe()}: "
                     f"{why or '--force'}")
        self._write()
        time.sleep(SETTLE_S)
        now = read_lease(self.sweep_dir)
        if now is None or now.owner != self.lease.owner:
            raise LeaseHeldError(f"{self.sweep_dir}: another driver took the lease at the same moment "
                                 f"({now.describe() if now else 'unreadable'}); this one stops")
        self._thread = threading.Thread(target=self._renew, name="l2d-sweep-lease", daemon=True)
        self._thread.start()
        return self

    def _write(self) -> None:
        self.lease.heartbeat = time.time()
        self.path.write_text(json.dumps(asdict(self.lease)))

    def verify(self) -> None:
        """Stop the process at once when another driver owns the lease now (nothing more gets written)."""
        current = read_lease(self.sweep_dir)
        if current is not None and current.owner != self.lease.owner:
            self.lost = current.describe()
            print(f"l2d-sweep: lost the lease of {self.sweep_dir} to {self.lost}; stopping this driver without "
                  f"writing anything more", file=sys.stderr, flush=True)
            os._exit(1)

    def _renew(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.verify()
                self._write()
            except OSError as error:  # storage unreachable for a moment: the next heartbeat tries again
                logger.warning("%s: could not renew the lease (%s)", self.path, error)

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=HEARTBEAT_S + 5)
        current = read_lease(self.sweep_dir)
        if current is not None and current.owner == self.lease.owner:
            self.path.delete()

    def __enter__(self) -> LeaseKeeper:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
