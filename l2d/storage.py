"""One home for paths and URIs: a local folder or an ``s3://`` / ``gs://`` URI, parsed once.

Every module of the project reaches files through :class:`Location`; none checks for ``"://"`` itself::

    root = Location.parse("s3://bucket/sweeps?endpoint_override=127.0.0.1:9000&scheme=http")
    spec = root / "quickstart" / "spec.yaml"   # s3://bucket/sweeps/quickstart/spec.yaml?endpoint_override=...
    spec.write_text("...")                     # to a temporary name, then moved into place
    spec.read_text(), spec.exists(), (root / "quickstart").list(), (root / "quickstart").delete()

A URI's query parameters are options of its filesystem (pyarrow's ``FileSystem.from_uri`` reads them: an S3
endpoint, a region, ``scheme=http``...): they stay attached to the location and every location joined to it,
and never end up inside a path. Credentials never go in a URI (they would be copied into ``spec.yaml``, logs
and Ray's state): a URI with ``user:secret@`` or a key/secret/token parameter is refused; give them through the
environment or the cloud's credential chain.

The cache directory of datasets, teachers and staged TensorBoard files is :func:`cache_dir`.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pyarrow.fs as pafs

#: URI schemes a location may have (``gcs`` is an alias of ``gs``; ``file`` is a local path).
SCHEMES = ("s3", "gs", "gcs", "file")
#: Words that make a URI query parameter a credential (``password``, ``sslpassword``, ``secret_access_key``,
#: ``token``, ``api_key``...): such a parameter is refused wherever a URI is given.
_SECRET_WORDS = (
    "password",
    "passwd",
    "secret",
    "token",
    "access_key",
    "accesskey",
    "credential",
    "private_key",
    "api_key",
    "apikey",
    "sslkey",
)


def credentials_in_uri(uri: str) -> list[str]:
    """What in ``uri`` is a credential: ``password`` for a ``user:password@`` user-info, and every query parameter
    whose name holds a secret word (:data:`_SECRET_WORDS`); empty when there is none."""
    if "://" not in uri:
        return []
    found = []
    rest = uri.split("://", 1)[1]
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    if "@" in netloc and ":" in netloc.rsplit("@", 1)[0]:
        found.append("password")
    query = rest.split("?", 1)[1] if "?" in rest else ""
    for key, value in parse_qsl(query, keep_blank_values=True):
        if any(word in key.lower() for word in _SECRET_WORDS):
            found.append(key)
        elif _userinfo_with_password(value):  # endpoint_override=alice:s3cr3t@host: a password inside a value
            found.append(f"{key} (a user:password@ in its value)")
    return found


def _userinfo_with_password(value: str) -> bool:
    """``user:password@host`` (or ``scheme://user:password@host``) inside a query value."""
    netloc = value.split("://", 1)[1] if "://" in value else value
    netloc = netloc.split("/", 1)[0]
    return "@" in netloc and ":" in netloc.rsplit("@", 1)[0]


_PASSED: dict[str, int] = {}


def failpoint(name: str) -> None:
    """Nothing, unless ``L2D_SWEEP_FAILPOINTS`` names the point: ``name=N`` kills the process (SIGKILL) the N-th time
    it passes, ``name=error`` raises OSError every time (a storage failure), ``name=sleep:S`` waits S seconds (a slow
    store)."""
    spec = os.environ.get("L2D_SWEEP_FAILPOINTS")
    if not spec:
        return
    _PASSED[name] = _PASSED.get(name, 0) + 1
    for item in spec.split(","):
        point, _, action = item.partition("=")
        if point.strip() != name:
            continue
        action = action.strip()
        if action == "error":
            raise OSError(f"failpoint {name}: a storage failure")
        if action.startswith("sleep:"):
            time.sleep(float(action.removeprefix("sleep:")))
        elif _PASSED[name] == int(action or 1):
            os.kill(os.getpid(), signal.SIGKILL)


class StorageError(ValueError):
    """A storage location is malformed, unsupported, or carries credentials; the message names it."""


def cache_dir() -> Path:
    """The local cache: ``$L2D_SWEEP_CACHE``, or ``~/.cache/l2d-sweep``."""
    return Path(os.environ.get("L2D_SWEEP_CACHE", Path.home() / ".cache" / "l2d-sweep"))


def redact(text: str) -> str:
    """``text`` with any ``user:secret@`` part and every query value of a URI masked, for error messages."""
    if "://" not in text:
        return text
    scheme, rest = text.split("://", 1)
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    if "@" in netloc:  # the last "@" of the host part ends the user-info (a raw "@" in a password comes before it)
        rest = "***@" + rest[netloc.rindex("@") + 1 :]
    if "?" in rest:
        rest, query = rest.split("?", 1)
        rest += "?" + "&".join(f"{part.split('=', 1)[0]}=***" for part in query.split("&"))
    return f"{scheme}://{rest}"


@functools.lru_cache(maxsize=32)
def _filesystem(scheme: str, bucket: str, query: str) -> pafs.FileSystem:
    if not scheme:
        return pafs.LocalFileSystem()
    # The bucket with its options (pyarrow resolves an S3 bucket's region from it); the path stays ours.
    filesystem, _ = pafs.FileSystem.from_uri(f"{scheme}://{bucket}{'?' + query if query else ''}")
    return filesystem


@dataclass(frozen=True)
class Location:
    """A file or folder: local (``scheme == ""``, ``path`` absolute) or remote (``path`` is ``bucket/key``).

    Immutable and picklable (a plain value: Ray ships it to workers); its filesystem is created on first use
    and shared by every location with the same scheme, bucket and options.
    """

    scheme: str
    path: str
    query: str = ""

    # --- construction -------------------------------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str | os.PathLike | Location, what: str = "storage") -> Location:
        """Parse a local path (``~`` expanded, made absolute) or a URI.

        Raises:
            StorageError: an unsupported scheme, a URI without a bucket, or credentials in the URI; the message
                names ``what`` and the (redacted) value.
        """
        if isinstance(text, Location):
            return text
        text = os.fspath(text)
        if not isinstance(text, str) or not text.strip():
            raise StorageError(f"{what}: expected a folder or a URI, got {text!r}")
        if "://" not in text:
            return cls("", os.path.abspath(os.path.expanduser(text)))
        scheme = text.split("://", 1)[0].lower()
        if scheme not in SCHEMES:
            raise StorageError(
                f"{what}: {redact(text)!r}: unsupported scheme {scheme!r}; allowed: a local path, s3://, gs://, file://"
            )
        parts = urlsplit(text)
        if "@" in parts.netloc:
            raise StorageError(
                f"{what}: {redact(text)!r} carries credentials in the URI; remove them and give them "
                f"through the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
                f"GOOGLE_APPLICATION_CREDENTIALS) or the cloud's credential chain"
            )
        options = parse_qsl(parts.query, keep_blank_values=True)
        secret = credentials_in_uri(text)
        if secret:
            raise StorageError(
                f"{what}: {redact(text)!r} carries a credential parameter ({secret[0]}) in the URI; "
                f"give credentials through the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
                f"GOOGLE_APPLICATION_CREDENTIALS) or the cloud's credential chain"
            )
        if scheme == "file":
            return cls("", os.path.abspath(os.path.expanduser(parts.netloc + parts.path)))
        if not parts.netloc:
            raise StorageError(f"{what}: {redact(text)!r} has no bucket (expected {scheme}://BUCKET/PREFIX)")
        path = "/".join(p for p in f"{parts.netloc}/{parts.path}".split("/") if p)
        return cls("gs" if scheme == "gcs" else scheme, path, "&".join(f"{k}={v}" for k, v in sorted(options)))

    def __truediv__(self, part: str) -> Location:
        return self.join(part)

    def join(self, *parts: str) -> Location:
        """This location with ``parts`` appended (each may hold ``/``; empty parts are skipped)."""
        pieces = [p for part in parts for p in str(part).split("/") if p]
        if any(p in (".", "..") for p in pieces):
            raise StorageError(f"{self}: refusing a relative part in {parts!r}")
        if not pieces:
            return self
        joined = os.path.join(self.path, *pieces) if self.is_local else "/".join([self.path.rstrip("/"), *pieces])
        return Location(self.scheme, joined, self.query)

    # --- naming -------------------------------------------------------------------------------------------------

    @property
    def is_local(self) -> bool:
        return not self.scheme

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> Location:
        head = os.path.dirname(self.path.rstrip("/")) if self.is_local else self.path.rstrip("/").rsplit("/", 1)[0]
        return Location(self.scheme, head, self.query)

    def __str__(self) -> str:
        if self.is_local:
            return self.path
        return f"{self.scheme}://{self.path}" + (f"?{self.query}" if self.query else "")

    def __fspath__(self) -> str:
        if not self.is_local:
            raise StorageError(f"{self} is not a local path")
        return self.path

    @property
    def filesystem(self) -> pafs.FileSystem:
        """The pyarrow filesystem of this location (paths in it are :attr:`path`)."""
        return _filesystem(self.scheme, "" if self.is_local else self.path.split("/", 1)[0], self.query)

    @property
    def ray_storage(self) -> tuple[str, pafs.FileSystem | None]:
        """``(storage_path, storage_filesystem)`` for Ray Tune / Ray Train's ``RunConfig`` and ``Checkpoint``."""
        return (self.path, None) if self.is_local else (self.path, self.filesystem)

    # --- reading ------------------------------------------------------------------------------------------------

    def _info(self) -> pafs.FileInfo:
        return self.filesystem.get_file_info(self.path)

    def modified(self):
        """When the file or object was last changed (a timezone-aware datetime), or None when the store does not
        say or it is missing."""
        try:
            info = self._info()
        except OSError:
            return None
        return info.mtime if info.type != pafs.FileType.NotFound else None

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def read_bytes(self) -> bytes:
        """The file's bytes. Raises ``FileNotFoundError`` naming the location when it is missing."""
        try:
            with self.filesystem.open_input_stream(self.path) as stream:
                return stream.read()
        except (FileNotFoundError, OSError) as error:
            if not self.is_file():
                raise FileNotFoundError(f"{self}: file not found") from None
            raise OSError(f"{self}: could not be read ({error})") from error

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def list(self) -> list[Location]:
        """The entries directly inside this folder (none when it does not exist), sorted by name."""
        infos = self.filesystem.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        return sorted((Location(self.scheme, info.path, self.query) for info in infos), key=lambda loc: loc.path)

    def size(self) -> int:
        """Bytes of this file, or of every file under this folder."""
        info = self._info()
        if info.type == pafs.FileType.File:
            return int(info.size or 0)
        if info.type != pafs.FileType.Directory:
            return 0
        infos = self.filesystem.get_file_info(pafs.FileSelector(self.path, recursive=True, allow_not_found=True))
        return sum(int(i.size or 0) for i in infos if i.type == pafs.FileType.File)

    # --- writing ------------------------------------------------------------------------------------------------

    def makedirs(self) -> None:
        self.filesystem.create_dir(self.path, recursive=True)

    def write_bytes(self, data: bytes) -> None:
        """Write atomically, so that a reader (or a crash) never sees half a file: locally to a temporary name beside
        the target, then renamed into place (the folder created when missing); on an object store with one upload,
        which the store makes visible whole or not at all (S3's and GCS's PUT), one request."""
        if not self.is_local:
            with self.filesystem.open_output_stream(self.path) as stream:
                stream.write(data)
            return
        self.parent.makedirs()
        tmp = Location(self.scheme, f"{self.path}.{uuid.uuid4().hex[:12]}.tmp", self.query)
        try:
            with open(tmp.path, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            failpoint("write-window")  # the fault tests kill here: between the temporary file and its rename
            os.replace(tmp.path, self.path)
        except BaseException:
            tmp.delete()
            raise

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def move(self, target: Location) -> None:
        """Rename this file to ``target`` (same filesystem; the target's folder is created when missing)."""
        target.parent.makedirs()
        self.filesystem.move(self.path, target.path)

    def delete(self) -> None:
        """Delete this file, or this folder and everything in it; nothing when it does not exist."""
        info = self._info()
        try:
            if info.type == pafs.FileType.Directory:
                self.filesystem.delete_dir(self.path)
            elif info.type == pafs.FileType.File:
                self.filesystem.delete_file(self.path)
        except FileNotFoundError:
            pass


# --- where a command may write outside a sweep ----------------------------------------------------------------------

#: The marker of a folder this tool wrote outside a sweep (an export, a ``train --out`` folder): only such a folder,
#: a new one or an empty one is ever written into or replaced.
OUTPUT_MARKER = ".l2d-output"
#: A sweep folder's marker (:mod:`sweeps.folder.marker` writes it); a sweep folder is never an output target.
SWEEP_MARKER = ".l2d-sweep"


def check_output(target: str | os.PathLike | Location, what: str = "--out") -> Location:
    """The write-target rule of every command that writes outside a sweep: ``target`` must be a new folder, an empty
    one, or one that carries :data:`OUTPUT_MARKER` (this tool wrote it); never the current directory, a file, a
    sweep folder or a folder inside one. Returns it parsed; nothing is touched.

    Raises:
        StorageError: naming the target and why it is refused.
    """
    location = Location.parse(target, what)
    shown = redact(str(location))
    if location.is_local:
        path = Path(location.path)
        if path == Path.cwd() or Path.cwd().is_relative_to(path):
            raise StorageError(f"{what} {shown}: is the current directory (or holds it); give a new or empty folder")
    folder, depth = location, 0
    while depth < 64:  # the target and every folder above it (a bucket's prefixes too)
        if (folder / SWEEP_MARKER).is_file():
            where = "a sweep folder" if folder == location else f"inside the sweep folder {redact(str(folder))}"
            raise StorageError(
                f"{what} {shown}: is {where}; a sweep's own files are never an output target: give a folder outside it"
            )
        above = folder.parent
        if above == folder or (not above.is_local and "/" not in above.path):
            break
        folder, depth = above, depth + 1
    if not location.exists():
        return location
    if not location.is_dir():
        raise StorageError(f"{what} {shown}: exists and is not a folder")
    entries = location.list()
    if not entries or (location / OUTPUT_MARKER).is_file():
        return location
    raise StorageError(
        f"{what} {shown}: exists, is not empty and was not written by l2d-sweep (no {OUTPUT_MARKER}); "
        f"refusing to write into it or replace it: give a new or empty folder"
    )


def prepare_output(target: str | os.PathLike | Location, what: str = "--out", kind: str = "output") -> Location:
    """:func:`check_output`, then the folder created and marked as this tool's (``kind``: what it holds)."""
    location = check_output(target, what)
    (location / OUTPUT_MARKER).write_text(
        json.dumps({"tool": "l2d-sweep", "kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    )
    return location
