"""The spec language (``language``: one YAML file that defines a sweep, as typed models, every error at once) and the
spec a sweep folder stores, checked against the marker's digest (``stored``). Imports ``core`` and ``folder``.

The language's public names are re-exported here: ``from sweeps.specs import load_spec, parse_spec``.
"""

from sweeps.specs.language import (
    SEARCHABLE,
    Budget,
    Confirm,
    DatasetSpec,
    Pairing,
    Range,
    RecipeSpec,
    Resources,
    SpecError,
    SweepSpec,
    check_adopted_teachers,
    json_schema,
    load_spec,
    parse_spec,
    replace,
    with_overrides,
)

#: This floor's modules, bottom first (``__init__``: this package itself, after the language it re-exports).
MODULES = ["language", "__init__", "stored"]

__all__ = [
    "Budget",
    "Confirm",
    "DatasetSpec",
    "Pairing",
    "Range",
    "RecipeSpec",
    "Resources",
    "SEARCHABLE",
    "SpecError",
    "SweepSpec",
    "check_adopted_teachers",
    "json_schema",
    "load_spec",
    "parse_spec",
    "replace",
    "with_overrides",
]
