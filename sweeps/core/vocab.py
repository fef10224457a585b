"""The words every floor of the sweep shares: what an objective's mode means, and which trial states end a trial."""

from __future__ import annotations

#: Trial states that end a trial (the rest: running, pending, interrupted).
FINISHED = ("completed", "stopped", "failed")
#: Finished trials that have a score (failed ones have none).
SCORED = ("completed", "stopped")
#: Metrics that are better when smaller (their mode defaults to min).
SMALLER_IS_BETTER = ("val_loss", "latency_ms", "student_params")


def default_mode(metric: str) -> str:
    return "min" if metric in SMALLER_IS_BETTER else "max"


def sign(mode: str) -> float:
    """+1 for ``max``, -1 for ``min``: ``sign(mode) * value`` is larger when better."""
    return 1.0 if mode == "max" else -1.0


def better(value: float, than: float | None, mode: str) -> bool:
    """Whether ``value`` beats ``than`` under ``mode`` (anything beats None)."""
    return than is None or sign(mode) * value > sign(mode) * than


def sql_order(mode: str) -> str:
    """``DESC`` for max, ``ASC`` for min: best first."""
    return "DESC" if mode == "max" else "ASC"


def direction(mode: str) -> str:
    """Optuna's word: ``maximize`` / ``minimize``."""
    return "maximize" if mode == "max" else "minimize"
