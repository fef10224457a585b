"""Statistics of paired runs (the same configurations, or methods, under the same seeds): what a difference between two
of them is, with an honest interval.

- :func:`paired_t`: the mean of the paired differences with a Student-t interval, its p-value, and the smallest
  difference the design could detect (:func:`detectable_effect`); with 5 seeds a percentile bootstrap of the mean
  covers about 84 % where it claims 95 %, the t-interval 95 % (``tests/test_statistics.py`` simulates both);
- :func:`holm`: Holm's step-down correction of the p-values of one table's comparisons (family-wise error);
- :func:`bca_interval`: a BCa bootstrap interval, for whoever asks for one beside the t-interval;
- :func:`wilcoxon`: the signed-rank test, an option where normality is doubtful.

``l2d-sweep compare`` prints these; the benchmarks use the same functions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

# Loaded late, inside the functions that use them: scipy (not needed when the command line starts).


@dataclass(frozen=True)
class Paired:
    """A paired difference ``a - b`` over ``n`` seeds."""

    n: int
    mean: float
    sd: float  # of the differences
    low: float  # the interval at ``level``
    high: float
    level: float
    p: float  # two-sided, H0: mean difference 0
    detectable: float  # the smallest |difference| this design detects with 80 % power at the interval's level

    @property
    def established(self) -> bool:
        """Whether the interval excludes 0."""
        return self.low > 0 or self.high < 0

    def words(self, name: str = "a", other: str = "b") -> str:
        """What the interval supports, and no more: "not established" comes with the effect it could have seen."""
        interval = f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"
        if self.low > 0:
            return f"{name} better than {other}: {interval}"
        if self.high < 0:
            return f"{name} worse than {other}: {interval}"
        return (
            f"no difference established between {name} and {other}: {interval}; this design detects "
            f"|differences| of {self.detectable:.2f} or more"
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "established": self.established}


def paired_t(diffs: list[float], level: float = 0.95) -> Paired:
    """The mean of ``diffs`` (each ``a - b`` under one seed) with a two-sided Student-t interval at ``level``.

    Raises:
        ValueError: fewer than 2 differences (no spread, no interval).
    """
    from scipy import stats

    n = len(diffs)
    if n < 2:
        raise ValueError(f"a paired interval needs 2 or more seeds; got {n}")
    mean = math.fsum(diffs) / n
    sd = math.sqrt(math.fsum((d - mean) ** 2 for d in diffs) / (n - 1))
    se = sd / math.sqrt(n)
    quantile = float(stats.t.ppf(0.5 + level / 2, n - 1))
    if se == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        p = float(2 * stats.t.sf(abs(mean / se), n - 1))
    return Paired(
        n=n,
        mean=mean,
        sd=sd,
        low=mean - quantile * se,
        high=mean + quantile * se,
        level=level,
        p=p,
        detectable=detectable_effect(sd, n, alpha=1 - level),
    )


def detectable_effect(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean difference a two-sided paired t-test of ``n`` pairs with differences of spread ``sd``
    detects with probability ``power`` at level ``alpha`` (solved on the noncentral t distribution)."""
    from scipy import optimize, stats

    if n < 2:
        return math.inf
    if sd == 0:
        return 0.0
    df = n - 1
    critical = float(stats.t.ppf(1 - alpha / 2, df))

    def power_at(effect: float) -> float:
        shift = effect / (sd / math.sqrt(n))
        upper = float(stats.nct.sf(critical, df, shift))
        lower = float(stats.nct.cdf(-critical, df, shift))  # the wrong-sign rejections: tiny, NaN far in the tail
        return (upper if math.isfinite(upper) else 1.0) + (lower if math.isfinite(lower) else 0.0)

    # Power is ~1 at this shift for a moderate level; with one degree of freedom and a corrected level (a quantile in
    # the hundreds) the noncentral t is so heavy-tailed that the bound has to grow until the power is reached.
    high = (critical + 8) * sd / math.sqrt(n)
    for _ in range(60):
        if power_at(high) >= power:
            return float(optimize.brentq(lambda effect: power_at(effect) - power, 0.0, high))
        high *= 2
    return math.inf


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (the same order as given): compare each with the level, and at most that
    fraction of the table's claims is wrong when every null is true."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def holm_level(level: float, comparisons: int) -> float:
    """The interval level each of ``comparisons`` intervals needs for the table to hold ``level`` jointly under
    Bonferroni (the intervals Holm's first step corresponds to): ``1 - (1 - level) / comparisons``."""
    return 1 - (1 - level) / max(1, comparisons)


def bca_interval(values: list[float], level: float = 0.95, resamples: int = 9999, seed: int = 0) -> tuple[float, float]:
    """A BCa bootstrap interval of the mean of ``values`` (scipy's)."""
    from scipy import stats

    found = stats.bootstrap(
        (np.asarray(values, dtype=float),),
        np.mean,
        confidence_level=level,
        n_resamples=resamples,
        method="BCa",
        random_state=np.random.default_rng(seed),
    )
    return float(found.confidence_interval.low), float(found.confidence_interval.high)


def wilcoxon(diffs: list[float]) -> float:
    """The two-sided p-value of Wilcoxon's signed-rank test of the paired differences (exact where scipy can)."""
    from scipy import stats

    if all(d == 0 for d in diffs):
        return 1.0
    return float(stats.wilcoxon(diffs).pvalue)
