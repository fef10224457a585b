"""Paired statistics over seeds, and a cache of finished runs so that a long benchmark resumes where it stopped."""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path


def bootstrap_interval(
    values: list[float], resamples: int = 10_000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``values`` and a percentile bootstrap interval of it (resampling the
    values with replacement). With 5 seeds the interval is coarse: it says how far the seeds' spread leaves the
    mean uncertain, not more."""
    if not values:
        raise ValueError("no values")
    mean = statistics.fmean(values)
    if len(values) == 1:
        return mean, mean, mean
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(resamples))
    tail = (1 - level) / 2
    return mean, means[int(tail * resamples)], means[min(resamples - 1, int((1 - tail) * resamples))]


def paired(a: dict[int, float], b: dict[int, float]) -> dict:
    """``a - b`` paired by seed (the seeds both have): mean, 95 % bootstrap interval, per-seed differences."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds]
    mean, low, high = bootstrap_interval(diffs)
    return {"mean": mean, "low": low, "high": high, "seeds": seeds, "diffs": diffs}


def verdict(interval: dict, name: str, other: str) -> str:
    """What an interval supports, in words (no more than that)."""
    if interval["low"] > 0:
        return f"{name} better than {other}"
    if interval["high"] < 0:
        return f"{name} worse than {other}"
    return f"no difference established between {name} and {other}"


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
