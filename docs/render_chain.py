"""Run the command chain that docs/grow.md shows and write what it printed between its markers, so that the page is
what the commands print now (``<!-- chain:grow:start/end -->``).

    python docs/render_chain.py            # needs runs/quickstart (`make sweep`) and a few minutes of CPU

The chain: `extend` of the quickstart by 4 trials, the two-objective `tradeoff` sweep warm-started from it, and its
Pareto front. Each command's output is kept as a log shows it (plain lines, `L2D_PROGRESS=plain`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "grow.md"
START, END = "<!-- chain:grow:start -->", "<!-- chain:grow:end -->"
CHAIN = [
    ["extend", "runs/quickstart", "--num-samples", "4"],
    ["run", "search_spaces/tradeoff.yaml", "--new"],
    ["results", "runs/tradeoff", "--pareto"],
]


def main() -> int:
    if not (ROOT / "runs" / "quickstart").is_dir():
        print("error: runs/quickstart is missing: run `make sweep` first", file=sys.stderr)
        return 2
    env = {**os.environ, "L2D_PROGRESS": "plain", "COLUMNS": "200"}
    blocks = []
    for args in CHAIN:
        done = subprocess.run(
            [sys.executable, "-m", "sweeps.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True
        )
        if done.returncode != 0:
            print(done.stdout[-3000:] + done.stderr[-3000:], file=sys.stderr)
            print(f"error: `l2d-sweep {' '.join(args)}` exited {done.returncode}", file=sys.stderr)
            return 1
        # What the user sees: stdout, and stderr's lines but the "next:" hints (they repeat the page's own text).
        err = [line for line in done.stderr.splitlines() if not line.startswith("next: ")]
        blocks.append(f"$ l2d-sweep {' '.join(args)}\n" + done.stdout.rstrip() + ("\n" + "\n".join(err) if err else ""))
    text = PAGE.read_text()
    head, rest = text.split(START, 1)
    PAGE.write_text(
        f"{head}{START}\n```\n"
        + "\n\n".join(blocks).replace(str(ROOT) + "/", "")
        + f"\n```\n{END}"
        + rest.split(END, 1)[1]
    )
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
