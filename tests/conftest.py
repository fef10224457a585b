"""Shared fixtures: every test gets its own dataset cache and teacher store (nothing touches ~/.cache)."""

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.getbasetemp() / "l2d-cache"
    monkeypatch.setenv("L2D_SWEEP_CACHE", str(cache))
    return cache
