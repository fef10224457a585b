"""The benchmarks' statistics against an independent computation (scipy), and their run cache."""

import pytest
from scipy import stats

from benchmarks._stats import RunCache, levels_line, mean_interval, paired, restate, verdict


def test_mean_interval_is_scipys_t_interval_at_the_bonferroni_level():
    values = [1.2, -0.4, 2.5, 0.9, 1.7]
    mean, low, high = mean_interval(values)
    expected = stats.ttest_1samp(values, 0).confidence_interval(0.95)
    assert mean == pytest.approx(sum(values) / 5)
    assert (low, high) == (pytest.approx(expected.low), pytest.approx(expected.high))
    wider = mean_interval(values, comparisons=4)
    bonferroni = stats.ttest_1samp(values, 0).confidence_interval(1 - 0.05 / 4)
    assert (wider[1], wider[2]) == (pytest.approx(bonferroni.low), pytest.approx(bonferroni.high))
    assert mean_interval([3.0]) == (3.0, 3.0, 3.0)


def test_paired_differences_restated_for_a_table_and_their_verdicts():
    a, b = {0: 10.0, 1: 12.0, 2: 11.0, 9: 50.0}, {0: 9.0, 1: 10.5, 2: 10.0}
    result = paired(a, b)
    assert result["seeds"] == [0, 1, 2] and result["diffs"] == [1.0, 1.5, 1.0]
    assert result["mean"] == pytest.approx(7 / 6) and result["low"] > 0
    expected = stats.ttest_rel([10.0, 12.0, 11.0], [9.0, 10.5, 10.0]).confidence_interval(0.95)
    assert (result["low"], result["high"]) == (pytest.approx(expected.low), pytest.approx(expected.high))
    assert verdict(result, "x", "y") == "x better than y"
    # The same differences in a table of 10 comparisons: each interval at 99.5 %, and this one no longer excludes 0.
    table = restate({"diffs": [1.0, 1.5, 1.0], "seeds": [0, 1, 2], "low": 9.0, "high": 9.0}, 10)
    assert table["level"] == pytest.approx(0.995) and table["low"] < 0 < table["high"]
    assert verdict(table, "x", "y") == (
        f"no difference established between x and y (detectable: {table['detectable']:.2f})"
    )
    assert restate(None, 3) is None
    assert verdict({"low": -3.0, "high": -1.0, "detectable": 1.0}, "x", "y") == "x worse than y"
    assert "vs bce: 10 comparison(s), each at 99.50%" in levels_line({"vs bce": table, "none": None})


def test_run_cache_survives_a_cut_line(tmp_path):
    cache = RunCache(tmp_path / "runs.jsonl")
    key = RunCache.key(method="l2d", seed=0, hparams={"b": 1, "a": 2})
    assert key == RunCache.key(seed=0, hparams={"a": 2, "b": 1}, method="l2d")
    cache.put(key, {"test_mAP": 50.0})
    with (tmp_path / "runs.jsonl").open("a") as file:
        file.write('{"key": "half')  # a kill in the middle of a write
    again = RunCache(tmp_path / "runs.jsonl")
    assert again.get(key) == {"test_mAP": 50.0} and len(again.runs) == 1
