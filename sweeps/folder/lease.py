"""The lease that says who drives a sweep, taken and renewed by compare-and-swap.

The driver of a sweep holds ``<sweep>/lease.json`` (owner token, user, host, pid, command, when it was acquired,
last heartbeat) and renews it every :data:`HEARTBEAT_S` seconds from a background thread. A second
``run``/``resume``/``extend`` refuses, naming the holder and since when, unless the lease is stale or ``--force`` is
given. Every change is a compare-and-swap, so two drivers can never both believe they hold it:

- locally: creating the lease is an exclusive create (``O_EXCL``), and every read-change-write happens under an
  exclusive ``flock`` of ``<sweep>/.lease.lock``;
- on S3: conditional writes (``If-None-Match: *`` to create, ``If-Match: <ETag>`` to renew or take over; boto3);
- on GCS: generation preconditions (``if_generation_match``; google-cloud-storage); a store that cannot guard a lease
  this way is refused with what to install.

Staleness tolerates clock skew: a lease is stale after :data:`LEASE_TIMEOUT_S` seconds without a heartbeat, or
when its heartbeat is dated more than that in the future (a clock that far off, or a forged lease: it must not hold
forever), or when its process on this host is gone. A driver that cannot renew its lease for half the timeout stops
cleanly (its experiment saved, exit status 1) rather than risk another driver taking over a live one.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from urllib.parse import parse_qsl

from l2d.storage import Location
from sweeps.core.faults import failpoint

# Loaded late, inside the functions that use them: boto3, botocore, google (imported where its absence is handled).

logger = logging.getLogger(__name__)

LEASE = "lease.json"
LOCK = ".lease.lock"
LEASE_TIMEOUT_S = float(os.environ.get("L2D_SWEEP_LEASE_TIMEOUT", "120"))
HEARTBEAT_S = max(1.0, LEASE_TIMEOUT_S / 8)
#: Why a driver of this process stopped itself (its lease could not be renewed), for the command line's exit status.
stopped_because: str | None = None


class LeaseHeldError(RuntimeError):
    """Another driver holds the sweep's lease (the sweep cannot run now: exit status 1)."""


class LeaseError(RuntimeError):
    """The lease cannot be guarded on this storage, or could not be renewed (named, with what to do)."""


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
        return cls(
            owner=uuid.uuid4().hex,
            user=_user(),
            host=socket.gethostname(),
            pid=os.getpid(),
            command=" ".join(["l2d-sweep", *sys.argv[1:]])[:300],
            acquired=now,
            heartbeat=now,
        )

    @classmethod
    def parse(cls, text: str) -> Lease:
        """A lease from its JSON, every field of the right type (ValueError otherwise)."""
        data = json.loads(text)
        kinds = {
            "owner": str,
            "user": str,
            "host": str,
            "pid": int,
            "command": str,
            "acquired": (int, float),
            "heartbeat": (int, float),
        }
        if (
            not isinstance(data, dict)
            or set(data) != set(kinds)
            or any(not isinstance(data[k], t) or isinstance(data[k], bool) for k, t in kinds.items())
        ):
            raise ValueError("not a lease")
        return cls(**data)

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.acquired))
        return (
            f"{self.user}@{self.host} pid {self.pid} ({self.command!r}) since {since}, last heartbeat "
            f"{time.time() - self.heartbeat:.0f} s ago"
        )

    def stale(self) -> str | None:
        """Why this lease no longer holds (None while it does)."""
        age = time.time() - self.heartbeat
        if age > LEASE_TIMEOUT_S:
            return f"no heartbeat for {age:.0f} s (timeout {LEASE_TIMEOUT_S:.0f} s)"
        if -age > LEASE_TIMEOUT_S:
            return f"its heartbeat is dated {-age:.0f} s in the future (a clock that far off, or a forged lease)"
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


# --- where the lease lives: one compare-and-swap primitive per store ---------------------------------------------


class _LocalLease:
    """The lease file, changed only under an exclusive ``flock`` (created with ``O_EXCL``)."""

    def __init__(self, sweep_dir: Location):
        self.path = os.path.join(sweep_dir.path, LEASE)
        self.lock = os.path.join(sweep_dir.path, LOCK)

    @contextlib.contextmanager
    def locked(self):
        os.makedirs(os.path.dirname(self.lock), exist_ok=True)
        fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def read(self) -> tuple[str | None, object]:
        try:
            with open(self.path) as stream:
                text = stream.read()
        except FileNotFoundError:
            return None, None
        return text, text  # the token is the content itself: compared under the lock

    def swap(self, text: str, expected):
        """Write ``text`` if the lease is still ``expected`` (None: absent): the new token, or None when it was not."""
        with self.locked():
            current, _ = self.read()
            if current != expected:
                return None
            if expected is None:
                try:
                    fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    return None
                with os.fdopen(fd, "w") as stream:
                    stream.write(text)
                    stream.flush()
                    os.fsync(stream.fileno())
                return text
            tmp = f"{self.path}.{uuid.uuid4().hex[:8]}.tmp"
            with open(tmp, "w") as stream:
                stream.write(text)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(tmp, self.path)
            return text

    def delete(self, expected) -> bool:
        with self.locked():
            current, _ = self.read()
            if current != expected:
                return False
            os.unlink(self.path)
            return True


class _S3Lease:
    """The lease object, changed by S3 conditional writes (boto3)."""

    def __init__(self, sweep_dir: Location):
        try:
            import boto3
            from botocore.exceptions import ClientError
        except ImportError:
            raise LeaseError(
                f"{sweep_dir}: a lease on s3:// needs boto3 (conditional writes keep two drivers from "
                f"both holding it): pip install 'l2d-sweep[s3]'"
            ) from None

        options = dict(parse_qsl(sweep_dir.query))
        endpoint = options.get("endpoint_override")
        url = (
            f"{options.get('scheme', 'https')}://{endpoint}" if endpoint else None
        )  # None: boto3's own (AWS_ENDPOINT_URL)
        self.client = boto3.client("s3", endpoint_url=url, region_name=options.get("region"))
        self.error = ClientError
        self.bucket, _, prefix = sweep_dir.path.partition("/")
        self.key = f"{prefix}/{LEASE}" if prefix else LEASE

    def _failed(self, error) -> bool:
        code = error.response.get("Error", {}).get("Code")
        return code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")

    def read(self) -> tuple[str | None, object]:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except self.error as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None, None
            raise
        return answer["Body"].read().decode(), answer["ETag"]

    def swap(self, text: str, expected):
        condition = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected}
        try:
            answer = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=text.encode(), **condition)
        except self.error as error:
            if self._failed(error):
                return None
            raise
        return answer["ETag"]

    def delete(self, expected) -> bool:
        text, etag = self.read()
        if etag != expected:
            return False
        self.client.delete_object(Bucket=self.bucket, Key=self.key)
        return True


class _GcsLease:
    """The lease object, changed under GCS generation preconditions (google-cloud-storage)."""

    def __init__(self, sweep_dir: Location):
        try:
            from google.api_core.exceptions import NotFound, PreconditionFailed
            from google.cloud import storage
        except ImportError:
            raise LeaseError(
                f"{sweep_dir}: a lease on gs:// needs google-cloud-storage (generation preconditions keep "
                f"two drivers from both holding it): pip install 'l2d-sweep[gcs]'"
            ) from None
        bucket, _, prefix = sweep_dir.path.partition("/")
        self.blob = storage.Client().bucket(bucket).blob(f"{prefix}/{LEASE}" if prefix else LEASE)
        self.missing, self.conflict = NotFound, PreconditionFailed

    def read(self) -> tuple[str | None, object]:
        try:
            text = self.blob.download_as_text()
        except self.missing:
            return None, None
        return text, self.blob.generation

    def swap(self, text: str, expected):
        try:
            self.blob.upload_from_string(text, if_generation_match=0 if expected is None else expected)
        except self.conflict:
            return None
        return self.blob.generation

    def delete(self, expected) -> bool:
        try:
            self.blob.delete(if_generation_match=expected)
        except (self.conflict, self.missing):
            return False
        return True


def lease_store(sweep_dir: Location):
    """The compare-and-swap primitive of the sweep's storage (see the module docstring)."""
    if sweep_dir.is_local:
        return _LocalLease(sweep_dir)
    if sweep_dir.scheme == "s3":
        return _S3Lease(sweep_dir)
    if sweep_dir.scheme == "gs":
        return _GcsLease(sweep_dir)
    raise LeaseError(f"{sweep_dir}: no way to guard a lease on {sweep_dir.scheme}://")


def read_lease(sweep_dir: Location) -> Lease | None:
    """The current lease (None when there is none; an unreadable one, with a warning, also None: it holds nothing)."""
    path = sweep_dir / LEASE
    try:
        text = path.read_text()
    except (FileNotFoundError, OSError):
        return None
    try:
        return Lease.parse(text)
    except (ValueError, TypeError, UnicodeDecodeError):
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
        self._token = None
        self.lost: str | None = None
        self.failure: str | None = None

    def acquire(self) -> LeaseKeeper:
        """Take the lease (see the module docstring). Raises :class:`LeaseHeldError` naming its holder."""
        store = lease_store(self.sweep_dir)
        for _ in range(5):
            text, token = store.read()
            if text is not None:
                try:
                    held = Lease.parse(text)
                except (ValueError, TypeError):
                    held = None
                    self.say(f"{self.path}: unreadable lease; taking it over")
                if held is not None and held.owner != self.lease.owner:
                    why = held.stale()
                    if why is None and not self.force:
                        raise LeaseHeldError(
                            f"{self.sweep_dir} is being driven by {held.describe()}; wait for it to "
                            f"end, or pass --force if that driver is gone (a lease is stale after "
                            f"{LEASE_TIMEOUT_S:.0f} s without a heartbeat)"
                        )
                    self.say(f"taking over the lease of {self.sweep_dir} from {held.describe()}: {why or '--force'}")
            failpoint("lease-swap")
            token = store.swap(self._text(), token)  # only if the lease is still what was read
            if token is not None:
                self._token = token
                self._store = store
                self._thread = threading.Thread(target=self._renew, name="l2d-sweep-lease", daemon=True)
                self._thread.start()
                return self
        raise LeaseHeldError(f"{self.sweep_dir}: another driver changed the lease at each attempt; this one stops")

    def _text(self) -> str:
        self.lease.heartbeat = time.time()
        return json.dumps(asdict(self.lease))

    def verify(self) -> None:
        """Stop the process at once when another driver owns the lease now (nothing more gets written), or when
        renewing it failed."""
        if self.failure:
            raise LeaseError(self.failure)
        current = read_lease(self.sweep_dir)
        if current is not None and current.owner != self.lease.owner:
            self.lost = current.describe()
            print(
                f"l2d-sweep: lost the lease of {self.sweep_dir} to {self.lost}; stopping this driver without "
                f"writing anything more",
                file=sys.stderr,
                flush=True,
            )
            os._exit(1)

    def _renew(self) -> None:
        failing_since = None
        while not self._stop.wait(HEARTBEAT_S):
            try:
                failpoint("lease-renew")
                token = self._store.swap(self._text(), self._token)
                if token is None:
                    self.verify()  # someone else owns it now: stops the process
                    raise OSError("the lease changed under this driver")
                self._token = token
                failing_since = None
            except Exception as error:  # noqa: BLE001 - storage errors come in many kinds
                failing_since = failing_since or time.time()
                logger.warning("%s: could not renew the lease (%s)", self.path, error)
                if time.time() - failing_since > LEASE_TIMEOUT_S / 2:
                    self.failure = (
                        f"{self.path}: could not renew the lease for {time.time() - failing_since:.0f} s "
                        f"({error}); this driver stops so that no other takes over a live one: resume "
                        f"the sweep when the storage is back"
                    )
                    print(f"l2d-sweep: {self.failure}", file=sys.stderr, flush=True)
                    global stopped_because
                    stopped_because = self.failure

                    os.kill(os.getpid(), signal.SIGINT)  # the driver stops as on Ctrl-C: Tune saves, the lease goes
                    return

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=HEARTBEAT_S + 5)
        store = getattr(self, "_store", None)
        if store is not None and self._token is not None:
            try:
                store.delete(self._token)
            except Exception as error:  # noqa: BLE001 - a lease left behind goes stale on its own
                logger.warning(
                    "%s: could not remove the lease (%s); it goes stale in %.0f s", self.path, error, LEASE_TIMEOUT_S
                )

    def __enter__(self) -> LeaseKeeper:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
