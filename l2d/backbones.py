"""Which timm backbones exist, answered without importing timm when it can be.

timm's registry lives in its modules (importing it costs seconds: torch and every model family). The names are
written once to an index in the cache (``$L2D_SWEEP_CACHE/timm-models-<timm version>.txt``) by the first check that
imports timm; later checks (``l2d-sweep validate``, a spec parsed by a read command) read the index. A name with a
pretrained tag (``resnet50.a1_in1k``) or a hub prefix is checked by timm itself.
"""

from __future__ import annotations

import difflib
import functools
import os
from importlib import metadata

from l2d.storage import cache_dir

# Loaded late, inside the functions that use them: l2d.storage (imported where its absence is handled); timm (not needed
# when the command line starts).


class UnknownModelError(ValueError):
    """Raised for a backbone name timm does not know."""


def _index_path() -> str | None:
    try:
        version = metadata.version("timm")
    except metadata.PackageNotFoundError:
        return None
    return os.path.join(str(cache_dir()), f"timm-models-{version}.txt")


@functools.lru_cache(maxsize=1)
def model_names() -> frozenset[str]:
    """Every model name timm registers: from the index when it exists, else from timm (and the index written)."""
    path = _index_path()
    if path and os.path.isfile(path):
        with open(path) as stream:
            names = frozenset(line.strip() for line in stream if line.strip())
        if names:
            return names
    import timm

    names = frozenset(timm.list_models())
    if path:
        try:
            from l2d.storage import Location

            Location.parse(path).write_text("\n".join(sorted(names)) + "\n")
        except OSError:  # a read-only cache: timm answers every time, slower
            pass
    return names


def check_backbone_name(backbone: str) -> None:
    """Raise :class:`UnknownModelError` naming close matches when timm does not know ``backbone``."""
    if any(c in backbone for c in ".:/"):  # a pretrained tag or a hub name: timm's own parser decides
        import timm

        if timm.is_model(backbone):
            return
        known = list(model_names())
    else:
        known = model_names()
        if backbone in known:
            return
    close = difflib.get_close_matches(backbone, list(known), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else " See timm.list_models() for the names."
    raise UnknownModelError(f"unknown backbone {backbone!r}: timm has no model of that name.{hint}")
