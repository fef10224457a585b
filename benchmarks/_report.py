"""What every benchmark does at the end: a JSON report with the machine's facts, written atomically."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch


def write_report(path: str, name: str, rows: list[dict], **settings) -> None:
    """Write ``{"benchmark": name, **settings, machine facts, "rows": rows}`` to ``path`` (temp file + rename)."""
    report = {"benchmark": name, **settings, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "cpu_count": os.cpu_count(), "machine": platform.machine(), "rows": rows}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")
