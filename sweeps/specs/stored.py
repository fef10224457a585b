"""A sweep folder's stored spec: what every command that opens an existing sweep reads first (no Ray, no torch)."""

from __future__ import annotations

import hashlib
import json
import logging

from l2d.storage import Location
from sweeps.core.checks import safe_yaml
from sweeps.folder.marker import MARKER, SweepNotFoundError, is_sweep, read_marker
from sweeps.specs import SpecError, SweepSpec, parse_spec

logger = logging.getLogger(__name__)

SPEC_FILE = "spec.yaml"


class SweepStateError(RuntimeError):
    """A sweep folder's own state is damaged or was changed by hand (not bad input: exit status 1); the message names
    the file."""


def spec_digest(spec: SweepSpec) -> str:
    """A digest of what a sweep runs (its spec, the storage left out: a folder may move): kept in the marker, so a
    ``spec.yaml`` edited by hand is found."""
    data = _canonical({k: v for k, v in spec.to_dict().items() if k != "storage"})
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def written_digest(data) -> str | None:
    """The digest of a stored ``spec.yaml`` as it was written (its mapping as read, the storage left out): what
    :func:`spec_digest` gave when the version that started the sweep wrote it, whatever settings were added since
    (a setting added later is a key the file lacks, not an edit). None for a file that is not a mapping."""
    if not isinstance(data, dict):
        return None
    canonical = _canonical({k: v for k, v in data.items() if k != "storage"})
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _canonical(value):
    """A spec's values as its stored YAML gives them back: every number a float (a spec built in code may hold
    ``3`` where the file, once parsed, holds ``3.0``), tuples as lists."""
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def sweep_exists(sweep_dir: str | Location) -> bool:
    """Whether ``sweep_dir`` holds a sweep (its marker, or a spec.yaml from before markers)."""
    return is_sweep(Location.parse(sweep_dir))


def load_sweep_spec(sweep_dir: str | Location, driver: bool = False) -> SweepSpec:
    """The spec stored in a sweep folder, as the sweep *in that folder*: copied, renamed or moved, it reads and
    writes where it is (:meth:`sweeps.specs.SweepSpec.in_folder`), never at the ``<storage>/<name>`` its file names.
    A spec that differs from the one the sweep was started with (its digest in the marker) is reported, or refused
    for a ``driver``.

    Raises:
        SweepNotFoundError: no sweep there (a spec file given instead is named as such); SweepStateError: its
            spec.yaml is unreadable or invalid (named), or, for a driver, was edited by hand.
    """
    sweep_dir = Location.parse(sweep_dir, "sweep folder")
    path = sweep_dir / SPEC_FILE
    if sweep_dir.is_file() and sweep_dir.name.endswith((".yaml", ".yml")):
        raise SweepNotFoundError(
            f"{sweep_dir}: is a spec file, not a sweep folder; a sweep folder is "
            f"<storage>/<name> (start the sweep with `l2d-sweep run {sweep_dir}`)"
        )
    if path.exists() and not path.is_file() and (sweep_dir / MARKER).is_file():
        raise SweepStateError(
            f"{path}: is not a file (a folder?); the sweep's stored spec is damaged: put the file "
            f"back from a copy of the sweep"
        )
    if not sweep_dir.is_dir():
        raise SweepNotFoundError(f"{sweep_dir}: no such sweep folder")
    if not is_sweep(sweep_dir) or not path.is_file():
        raise SweepNotFoundError(f"{sweep_dir}: no sweep here (no spec.yaml); start one with `l2d-sweep run SPEC`")
    try:
        data = safe_yaml(path.read_text())
    except Exception as error:  # noqa: BLE001 - yaml raises many kinds; decoding errors too
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SweepStateError(f"{path}: not valid YAML ({first}); the sweep's stored spec is damaged") from None
    try:
        spec = parse_spec(data, str(path)).in_folder(sweep_dir)  # a sweep is its folder: a copy reads as itself
    except SpecError as error:  # the sweep's own file, not the user's input: a state error (exit 1), every line kept
        raise SweepStateError(
            "; ".join(error.errors) + " (the sweep's stored spec is damaged or from a newer version)"
        ) from None
    stored = (read_marker(sweep_dir) or {}).get("spec_digest")
    if stored and stored not in (spec_digest(spec), written_digest(data)):
        message = (
            f"{path}: differs from the spec this sweep was started with (its digest is not the marker's): it "
            f"was edited by hand; a sweep's spec changes only through `l2d-sweep extend`. Put it back, or start "
            f"another sweep with the new spec"
        )
        if driver:
            raise SweepStateError(message)
        logger.warning("%s", message)
    return spec
