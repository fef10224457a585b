"""Failpoints for the fault-injection tests: with ``L2D_SWEEP_FAILPOINTS="results-write=3"`` the driver kills
itself with SIGKILL the 3rd time it passes the point ``results-write`` (several points: comma-separated). Unset,
as it always is outside those tests, every point is a dictionary lookup that does nothing.

Points: ``results-write`` (between writing ``epochs.parquet`` and ``trials.parquet``), ``epoch-<n>`` (after a
trial's epoch ``n`` is recorded and printed, while the trial waits for the driver), ``trial-end`` (after a trial's
end is recorded).
"""

from __future__ import annotations

import os
import signal

_PASSED: dict[str, int] = {}


def failpoint(name: str) -> None:
    spec = os.environ.get("L2D_SWEEP_FAILPOINTS")
    if not spec:
        return
    _PASSED[name] = _PASSED.get(name, 0) + 1
    for item in spec.split(","):
        point, _, count = item.partition("=")
        if point.strip() == name and _PASSED[name] == int(count or 1):
            os.kill(os.getpid(), signal.SIGKILL)
