"""Paired statistics over seeds for the benchmarks' tables (the platform's own, :mod:`sweeps.results.stats`: paired
t-intervals, corrected for the number of comparisons in a table), and a cache of finished runs so that a long benchmark
resumes where it stopped."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

#: The level each table holds jointly: every interval of a table of m comparisons is at 1 - 0.05 / m (Bonferroni, the
#: intervals Holm's first step corresponds to), so the table's "established" claims are wrong with probability <= 5 %.
LEVEL = 0.95


def mean_interval(values: list[float], comparisons: int = 1) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``values`` with a Student-t interval at the Bonferroni level of
    ``comparisons`` (:mod:`sweeps.results.stats`, the platform's own statistics)."""
    from sweeps.results.stats import holm_level, paired_t

    if not values:
        raise ValueError("no values")
    mean = statistics.fmean(values)
    if len(values) == 1:
        return mean, mean, mean
    found = paired_t(list(values), holm_level(LEVEL, comparisons))
    return found.mean, found.low, found.high


def interval(diffs: list[float], seeds: list, comparisons: int = 1) -> dict:
    """Per-seed differences as a paired t-interval at the Bonferroni level of ``comparisons``: mean, low, high, the
    level, the p-value, the smallest difference the design detects (80 % power at that level), seeds, diffs."""
    from sweeps.results.stats import holm_level, paired_t

    level = holm_level(LEVEL, comparisons)
    out = {"seeds": list(seeds), "diffs": list(diffs), "level": level, "comparisons": comparisons}
    if len(diffs) < 2:
        mean = diffs[0] if diffs else math.nan
        return {**out, "mean": mean, "low": -math.inf, "high": math.inf, "p": 1.0, "detectable": math.inf}
    found = paired_t(list(diffs), level)
    return {
        **out,
        "mean": found.mean,
        "low": found.low,
        "high": found.high,
        "p": found.p,
        "detectable": found.detectable,
    }


def paired(a: dict[int, float], b: dict[int, float], comparisons: int = 1) -> dict:
    """``a - b`` paired by seed (the seeds both have): :func:`interval` of the per-seed differences."""
    seeds = sorted(set(a) & set(b))
    return interval([a[s] - b[s] for s in seeds], seeds, comparisons)


def restate(diff: dict | None, comparisons: int) -> dict | None:
    """A paired difference a report stored, restated from its per-seed differences as :func:`interval` over a table
    of ``comparisons`` (reports written before the t-intervals held percentile-bootstrap ones)."""
    return interval(diff["diffs"], diff["seeds"], comparisons) if diff else None


def levels_line(families: dict[str, dict | None]) -> str:
    """How a table's intervals were made, in one line: each column (family) with its number of comparisons and the
    level of each interval."""
    said = [f"{name}: {d['comparisons']} comparison(s), each at {d['level']:.2%}" for name, d in families.items() if d]
    return "intervals: paired t over the seeds, family-wise 95 % per column (Bonferroni; " + "; ".join(said) + ")"


def verdict(interval: dict, name: str, other: str) -> str:
    """What an interval supports, in words (no more than that): "not established" with the smallest difference the
    design could detect."""
    if interval["low"] > 0:
        return f"{name} better than {other}"
    if interval["high"] < 0:
        return f"{name} worse than {other}"
    return f"no difference established between {name} and {other} (detectable: {interval['detectable']:.2f})"


class RunCache:
    """Finished runs as JSON lines, keyed by what determines them: a rerun of a benchmark skips them."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.runs: dict[str, dict] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    try:
                        entry = json.loads(line)
                    except ValueError:  # a line cut by a kill: that run is simply done again
                        continue
                    self.runs[entry["key"]] = entry["value"]

    @staticmethod
    def key(**fields) -> str:
        return json.dumps(fields, sort_keys=True, default=str)

    def get(self, key: str) -> dict | None:
        return self.runs.get(key)

    def put(self, key: str, value: dict) -> None:
        self.runs[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as file:  # one line per run, flushed: a kill loses at most the run in progress
            file.write(json.dumps({"key": key, "value": value}, default=str) + "\n")
