"""A sweep folder's stored spec: what every command that opens an existing sweep reads first (no Ray, no torch)."""

from __future__ import annotations

from l2d.storage import Location
from sweeps.folder import SweepNotFoundError, is_sweep
from sweeps.spec import SpecError, SweepSpec, parse_spec

SPEC_FILE = "spec.yaml"


def sweep_exists(sweep_dir: str | Location) -> bool:
    """Whether ``sweep_dir`` holds a sweep (its marker, or a spec.yaml from before markers)."""
    return is_sweep(Location.parse(sweep_dir))


def load_sweep_spec(sweep_dir: str | Location) -> SweepSpec:
    """The spec stored in a sweep folder (following the folder when it moved).

    Raises:
        SweepNotFoundError: no sweep there (a spec file given instead is named as such); SpecError: its spec.yaml
            is unreadable or invalid (named).
    """
    from sweeps._checks import safe_yaml

    sweep_dir = Location.parse(sweep_dir, "sweep folder")
    path = sweep_dir / SPEC_FILE
    if sweep_dir.is_file() and sweep_dir.name.endswith((".yaml", ".yml")):
        raise SweepNotFoundError(f"{sweep_dir}: is a spec file, not a sweep folder; a sweep folder is "
                                 f"<storage>/<name> (start the sweep with `l2d-sweep run {sweep_dir}`)")
    if not is_sweep(sweep_dir) or not path.is_file():
        raise SweepNotFoundError(f"{sweep_dir}: no sweep here (no spec.yaml); start one with `l2d-sweep run SPEC`")
    try:
        data = safe_yaml(path.read_text())
    except Exception as error:  # noqa: BLE001 - yaml raises many kinds; decoding errors too
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SpecError(f"{path}: not valid YAML ({first}); the sweep's stored spec is damaged") from None
    spec = parse_spec(data, str(path))
    if spec.sweep_dir != sweep_dir:  # the folder moved: follow it
        spec = parse_spec({**spec.to_dict(), "storage": str(sweep_dir.parent)}, str(path))
    return spec
