"""How long a declared dataset of a million rows takes to load and check, and the memory it holds.

Writes, under a temporary folder, ``--rows`` empty image files (in folders of 10,000: the existence check lists each
folder once, and decodes nothing) and the manifest of them as CSV and as Parquet (``|``-delimited labels over 80
classes, 1-4 per row, 2 % of the rows for test, val held out of train), then, for each format, in a fresh process:
:func:`l2d.data.check_declared` (read the table, parse the labels, check every image's presence and that no image is
in two splits) and the first build of the train split (torch and the readers imported before). Reports seconds, the
resident memory that loading added to the process, its peak, and what pyarrow and the target matrix hold.

Usage:
    python benchmarks/manifest_load.py [--rows 1000000] [--out benchmarks/results/manifest_load.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import write_report  # noqa: E402 - run as a script: the repository on sys.path first

CLASSES = 80
PER_FOLDER = 10_000

_CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
import numpy as np
import pyarrow as pa
from l2d.data import build_dataset, check_declared
import l2d.data.formats, l2d.data.manifest  # torch and the readers imported before anything is measured

def rss_mb():
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

options = json.loads(sys.argv[1])
before = rss_mb()
start = time.perf_counter()
loaded = check_declared("manifest", None, options)
checked = time.perf_counter() - start
start = time.perf_counter()
train = build_dataset("manifest", None, "train", 224, **options)
built = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
targets = sum(t.nbytes for _, t in loaded.splits.values())
print(json.dumps({{
    "check_s": checked, "build_train_s": built, "rows": sum(len(i) for i, _ in loaded.splits.values()),
    "train": len(train), "rss_before_mb": before, "rss_after_mb": rss_mb(), "peak_rss_mb": peak,
    "arrow_mb": pa.total_allocated_bytes() / 2**20, "targets_mb": targets / 2**20,
}}))
"""


def write_data(folder: Path, rows: int) -> dict[str, dict]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    names = []
    for start in range(0, rows, PER_FOLDER):
        sub = folder / "images" / f"{start // PER_FOLDER:04d}"
        sub.mkdir(parents=True)
        for k in range(start, min(rows, start + PER_FOLDER)):
            name = f"{k:07d}.jpg"
            (sub / name).touch()
            names.append(f"images/{sub.name}/{name}")
    counts = rng.integers(1, 5, rows)
    labels = ["|".join(f"class_{c:02d}" for c in rng.choice(CLASSES, n, replace=False)) for n in counts]
    split = np.where(rng.random(rows) < 0.02, "test", "train")
    table = pa.table({"image": names, "labels": labels, "split": split})
    pacsv.write_csv(table, folder / "data.csv")
    pq.write_table(table, folder / "data.parquet")
    return {
        "csv": {"path": str(folder / "data.csv")},
        "parquet": {"path": str(folder / "data.parquet")},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows (images) of the manifest (default: 1e6)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "manifest_load.json"))
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="l2d-manifest-") as tmp:
        print(f"writing {args.rows:,} empty image files and their manifest ...", flush=True)
        formats = write_data(Path(tmp), args.rows)
        for kind, options in formats.items():
            size = os.path.getsize(options["path"])
            done = subprocess.run(
                [sys.executable, "-c", _CHILD.format(root=str(ROOT)), json.dumps(options)],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "L2D_SWEEP_CACHE": str(Path(tmp) / "cache")},
            )
            row = {"format": kind, "file_mb": size / 2**20, **json.loads(done.stdout.splitlines()[-1])}
            results.append(row)
    print(
        f"\n{'format':<8} {'rows':>10} {'file MB':>8} {'check s':>8} {'build s':>8} {'peak RSS MB':>12} "
        f"{'RSS added MB':>13} {'arrow MB':>9} {'targets MB':>11}"
    )
    for r in results:
        print(
            f"{r['format']:<8} {r['rows']:>10,} {r['file_mb']:>8.1f} {r['check_s']:>8.2f} {r['build_train_s']:>8.2f} "
            f"{r['peak_rss_mb']:>12.0f} {r['rss_after_mb'] - r['rss_before_mb']:>13.0f} {r['arrow_mb']:>9.1f} "
            f"{r['targets_mb']:>11.1f}"
        )
    write_report(args.out, "manifest_load", results, manifest_rows=args.rows, classes=CLASSES)
    return 0


if __name__ == "__main__":
    sys.exit(main())
