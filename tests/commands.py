"""Running the ``l2d-sweep`` command line in a fresh process, as a user does (the integration tests' one way)."""

from __future__ import annotations

import os
import subprocess
import sys


def l2d_sweep(*args: str, cwd=None, env: dict | None = None, timeout: float = 700) -> subprocess.CompletedProcess:
    """``l2d-sweep ARGS`` (``python -m sweeps.cli``) with this environment plus ``env``, unbuffered, its output
    captured as text; the result whatever the exit status (the caller checks it)."""
    return subprocess.run(
        [sys.executable, "-m", "sweeps.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def l2d_sweep_ok(*args: str, cwd=None, env: dict | None = None, timeout: float = 800) -> str:
    """:func:`l2d_sweep` that must exit 0 (its output's tails in the failure); its stdout."""
    done = l2d_sweep(*args, cwd=cwd, env=env, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout
