"""Failpoints for the fault-injection tests: with ``L2D_SWEEP_FAILPOINTS="manifest-swap=3"`` the driver kills
itself with SIGKILL the 3rd time it passes the point ``manifest-swap`` (several points: comma-separated). Unset,
as it always is outside those tests, every point is a dictionary lookup that does nothing.

Points: ``segment-write`` (after each file of a results segment), ``manifest-swap`` (a segment written, the manifest
not yet replaced), ``compaction`` (a merged segment written, the manifest not yet naming it), ``publish`` (between the
two compacted tables), ``lease-swap`` (a lease read, not yet swapped: a slow store), ``lease-renew`` (each renewal),
``write-window`` (inside every atomic write of l2d.storage, between the temporary file and its rename), ``epoch-<n>``
(after a
trial's epoch ``n`` is recorded and printed, while the trial waits for the driver), ``trial-end`` (after a trial's
end is recorded), ``reported-<n>`` (in the trial, after it reported its epoch ``n``: ``sleep:S`` holds it there, so
that a driver killed at that epoch dies before the trial, a Ray worker the kill does not reach at once, goes on).
"""

from __future__ import annotations

from l2d.storage import failpoint  # noqa: F401 - the one implementation (l2d's writes have a point too)
