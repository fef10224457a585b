"""What ran a sweep: ``<sweep>/run.json``, one entry per driver (run, resume, extend), so that every result can be
traced to the code, the packages, the machine and the devices that produced it.

Each entry: the command line, the user and host, start and end time and outcome, the Python and package versions
(torch, torchvision, timm, ray, optuna, pyarrow, duckdb, l2d-sweep), the git commit of the code (with ``+dirty`` when
the working tree has changes), and the devices (this machine's GPUs by name, the Ray cluster's resources).
"""

from __future__ import annotations

import getpass
import json
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from l2d.storage import Location

# Loaded late, inside the functions that use them: ray (imported where its absence is handled); torch (not needed when
# the command line starts).

PACKAGES = ("l2d-sweep", "torch", "torchvision", "timm", "ray", "optuna", "pyarrow", "duckdb")
RUN_FILE = "run.json"


def versions() -> dict[str, str]:
    """Python's and each package's version (``missing`` for one not installed)."""
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "missing"
    return found


def git_commit() -> str | None:
    """The commit of the checkout this code runs from (``+dirty`` with local changes); None outside a checkout."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def devices() -> dict:
    """This machine's accelerators by name, and the Ray cluster's resources when Ray is up."""
    import torch

    found: dict = {
        "local": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else ["cpu"]
    }
    try:
        import ray

        if ray.is_initialized():
            resources = ray.cluster_resources()
            found["cluster"] = {k: v for k, v in resources.items() if k in ("CPU", "GPU", "memory")}
            found["cluster"]["nodes"] = len([n for n in ray.nodes() if n.get("Alive")])
    except Exception:  # noqa: BLE001 - the record must never stop a sweep
        pass
    return found


class RunRecord:
    """The entry of the current driver in ``run.json``: written when it starts, completed when it ends."""

    def __init__(self, sweep_dir: Location, action: str):
        self.file = sweep_dir / RUN_FILE
        self.entry = {
            "action": action,
            "command": " ".join(["l2d-sweep", *sys.argv[1:]]),
            "user": _user(),
            "host": socket.gethostname(),
            "platform": platform.platform(),
            "started": _now(),
            "ended": None,
            "outcome": None,
            "versions": versions(),
            "git_commit": git_commit(),
            "devices": None,
        }
        self._index: int | None = None

    def _entries(self) -> list[dict]:
        if not self.file.is_file():
            return []
        try:
            return list(json.loads(self.file.read_text()).get("runs", []))
        except (ValueError, AttributeError, UnicodeDecodeError):
            return []  # a damaged record is rewritten from this entry on: it holds no result

    def _write(self) -> None:
        entries = self._entries()
        if self._index is None or self._index >= len(entries):
            entries.append(self.entry)
            self._index = len(entries) - 1
        else:
            entries[self._index] = self.entry
        self.file.write_text(json.dumps({"runs": entries}, indent=2, default=str))

    def start(self) -> RunRecord:
        self._write()
        return self

    def ray_started(self) -> None:
        self.entry["devices"] = devices()
        self._write()

    def end(self, outcome: str) -> None:
        self.entry.update(ended=_now(), outcome=outcome)
        if self.entry["devices"] is None:
            self.entry["devices"] = devices()
        self._write()


def last_run(sweep_dir: Location) -> dict | None:
    """The newest entry of ``run.json`` (None when there is none or it cannot be read): read-only."""
    path = sweep_dir / RUN_FILE
    try:
        runs = json.loads(path.read_text()).get("runs", []) if path.is_file() else []
    except (ValueError, AttributeError, UnicodeDecodeError, OSError):
        return None
    return runs[-1] if runs and isinstance(runs[-1], dict) else None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
