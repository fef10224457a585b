"""``python -m sweeps.cli``: the ``l2d-sweep`` command."""

import sys

from sweeps.cli import main

sys.exit(main())
