"""Type checks for the sweep spec that raise :class:`SpecError` naming ``source: field``, the value and what is
allowed."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any


class SpecError(ValueError):
    """A sweep spec is invalid; the message names the file, the field, the value and what is allowed."""


class Checker:
    """Type checks that raise :class:`SpecError` naming ``source: field``."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, message: str) -> SpecError:
        return SpecError(f"{self.source}: {where}: {message}")

    def mapping(self, value: Any, where: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a mapping with keys {', '.join(allowed)}, got {show(value)}")
        unknown = [k for k in value if k not in allowed]
        if unknown:
            raise self.fail(f"{where}.{unknown[0]}" if where else str(unknown[0]),
                            f"unknown key; allowed keys: {', '.join(allowed)}")
        for key in required:
            if key not in value:
                raise self.fail(f"{where}.{key}" if where else key, "is required")
        return value

    def integer(self, value: Any, where: str, minimum: int | None = None, maximum: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(where, f"expected an integer, got {show(value)}")
        if minimum is not None and value < minimum:
            bound = f">= {minimum}" + (f" and <= {maximum:,}" if maximum is not None else "")
            raise self.fail(where, f"{value} is too small; allowed: an integer {bound}")
        if maximum is not None and value > maximum:
            bound = (f">= {minimum} and " if minimum is not None else "") + f"<= {maximum:,}"
            raise self.fail(where, f"{value:,} is too large; allowed: an integer {bound}")
        return value

    def number(self, value: Any, where: str, minimum: float | None = None, exclusive: bool = False,
               maximum: float | None = None) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(where, f"expected a finite number, got {show(value)}")
        out_of_range = (minimum is not None and (value <= minimum if exclusive else value < minimum)) \
            or (maximum is not None and value > maximum)
        if out_of_range:
            bounds = [f"{'>' if exclusive else '>='} {minimum:g}"] if minimum is not None else []
            bounds += [f"<= {maximum:g}"] if maximum is not None else []
            raise self.fail(where, f"{value} is out of range; allowed: a number {' and '.join(bounds)}")
        return float(value)

    def string(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(where, f"expected a non-empty string, got {show(value)}")
        return value

    def choice(self, value: Any, where: str, allowed: tuple[str, ...]) -> str:
        if value not in allowed:
            raise self.fail(where, f"{show(value)} is not allowed; allowed: {', '.join(allowed)}")
        return value

    def string_list(self, value: Any, where: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            raise self.fail(where, f"expected a non-empty list of strings, got {show(value)}")
        return tuple(self.string(v, f"{where}[{i}]") for i, v in enumerate(value))


def show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def dataclass_fields(cls) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))
