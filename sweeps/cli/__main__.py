"""``python -m sweeps.cli``: the ``l2d-sweep`` command."""

from sweeps.cli import run

run()
