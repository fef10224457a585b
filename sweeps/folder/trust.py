"""Which pickles in a sweep folder this user's drivers wrote: a keyed digest (HMAC-SHA256) of each, with a key kept
outside every sweep folder.

A sweep folder holds pickles (Tune's experiment state, which embeds pickled trials; the searcher's state): loading one
runs whatever code it names. Anyone who can write a sweep folder (a shared bucket, a copied folder) could plant one.
So every driver signs the pickles it and Tune leave there (``<sweep>/signatures.json``: file -> HMAC under the user's
key), and ``resume`` loads none whose signature does not match: it continues from the results tables and checkpoints
instead, as it does when Tune's state is lost (a crash between Tune's save and the signature loses nothing), and says
so in one line. ``--trust`` loads them anyway, for a folder its user vouches for (another user's, say).

The key: ``$L2D_SWEEP_KEY_FILE``, else ``~/.config/l2d-sweep/signing.key`` (32 random bytes, mode 0600, created on
first use). Read commands never unpickle anything.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from pathlib import Path

from l2d.storage import Location

logger = logging.getLogger(__name__)

SIGNATURES = "signatures.json"


def key_file() -> Path:
    if os.environ.get("L2D_SWEEP_KEY_FILE"):
        return Path(os.environ["L2D_SWEEP_KEY_FILE"]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "l2d-sweep" / "signing.key"


class KeyFileError(RuntimeError):
    """The signing key file exists but is not a key (exit status 1; the message names it and what to do)."""


def _key() -> bytes:
    path = key_file()
    if path.exists():
        key = path.read_bytes() if path.is_file() else b""
        if len(key) < 32:
            raise KeyFileError(
                f"{path}: not a signing key (a key is 32 random bytes or more); remove it to make a new "
                f"one (the sweeps it signed then need `resume --trust` once)"
            )
        return key
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_bytes(32)
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as stream:
        stream.write(key)
    logger.info("created the signing key %s", path)
    return key


def digest(data: bytes) -> str:
    return hmac.new(_key(), data, hashlib.sha256).hexdigest()


class Signatures:
    """The signatures of a sweep folder's pickles (``signatures.json``), kept in memory and rewritten when they
    change."""

    def __init__(self, sweep_dir: Location):
        self.sweep_dir = sweep_dir
        self.file = sweep_dir / SIGNATURES
        self._seen: dict[str, tuple[int, int]] = {}  # local file -> (size, mtime) when last signed
        try:
            self.entries: dict[str, str] = json.loads(self.file.read_text())
            if not isinstance(self.entries, dict):
                self.entries = {}
        except (FileNotFoundError, ValueError, UnicodeDecodeError):
            self.entries = {}

    def sign(self, relative: str, data: bytes) -> None:
        self.entries[relative] = digest(data)
        self.file.write_text(json.dumps(self.entries, indent=1, sort_keys=True))

    def sign_folder(self, relative: str) -> int:
        """Sign every file at the top of ``<sweep>/<relative>`` (a Tune experiment folder: its state, pickles and the
        searcher's) whose content changed since it was last signed; returns how many were (re)signed."""
        folder = self.sweep_dir / relative
        changed = 0
        for entry in folder.list() if folder.is_dir() else []:
            if not entry.is_file():
                continue
            name = f"{relative}/{entry.name}"
            if entry.is_local:
                stat = os.stat(entry.path)
                stamp = (stat.st_size, stat.st_mtime_ns)
                if self._seen.get(name) == stamp:
                    continue
                self._seen[name] = stamp
            try:
                data = entry.read_bytes()
            except FileNotFoundError:
                continue
            value = digest(data)
            if self.entries.get(name) != value:
                self.entries[name] = value
                changed += 1
        if changed:
            self.file.write_text(json.dumps(self.entries, indent=1, sort_keys=True))
        return changed

    def check(self, relative: str, data: bytes) -> bool:
        return hmac.compare_digest(self.entries.get(relative, ""), digest(data))

    def unsigned(self, relative: str) -> list[str]:
        """The files at the top of ``<sweep>/<relative>`` whose signature is missing or does not match."""
        folder = self.sweep_dir / relative
        problems = []
        for entry in folder.list() if folder.is_dir() else []:
            if entry.is_file() and not self.check(f"{relative}/{entry.name}", entry.read_bytes()):
                problems.append(f"{relative}/{entry.name}")
        return problems
