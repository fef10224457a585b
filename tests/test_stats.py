"""The benchmarks' statistics against an independent computation, and their run cache."""

import numpy as np
import pytest

from benchmarks._stats import RunCache, bootstrap_interval, paired, verdict


def test_bootstrap_interval_matches_numpy():
    values = [1.2, -0.4, 2.5, 0.9, 1.7]
    mean, low, high = bootstrap_interval(values, resamples=20_000)
    rng = np.random.default_rng(1)
    means = rng.choice(values, size=(20_000, len(values)), replace=True).mean(axis=1)
    assert mean == pytest.approx(np.mean(values))
    assert low == pytest.approx(np.percentile(means, 2.5), abs=0.06)
    assert high == pytest.approx(np.percentile(means, 97.5), abs=0.06)
    assert min(values) <= low < mean < high <= max(values)
    assert bootstrap_interval([3.0]) == (3.0, 3.0, 3.0)


def test_paired_differences_and_verdicts():
    a, b = {0: 10.0, 1: 12.0, 2: 11.0, 9: 50.0}, {0: 9.0, 1: 10.5, 2: 10.0}
    result = paired(a, b)
    assert result["seeds"] == [0, 1, 2] and result["diffs"] == [1.0, 1.5, 1.0]
    assert result["mean"] == pytest.approx(7 / 6) and result["low"] > 0
    assert verdict(result, "x", "y") == "x better than y"
    assert verdict({"low": -1.0, "high": 2.0}, "x", "y") == "no difference established between x and y"
    assert verdict({"low": -3.0, "high": -1.0}, "x", "y") == "x worse than y"


def test_run_cache_survives_a_cut_line(tmp_path):
    cache = RunCache(tmp_path / "runs.jsonl")
    key = RunCache.key(method="l2d", seed=0, hparams={"b": 1, "a": 2})
    assert key == RunCache.key(seed=0, hparams={"a": 2, "b": 1}, method="l2d")
    cache.put(key, {"test_mAP": 50.0})
    with (tmp_path / "runs.jsonl").open("a") as file:
        file.write('{"key": "half')  # a kill in the middle of a write
    again = RunCache(tmp_path / "runs.jsonl")
    assert again.get(key) == {"test_mAP": 50.0} and len(again.runs) == 1
