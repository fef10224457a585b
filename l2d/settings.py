"""A run's settings, each defined once: its type, default, range and help text.

Every recipe, data and teacher setting of a run is a field of :class:`l2d.run.RunConfig` declared with
:func:`setting`; the rest is derived from that declaration:

- the run config checks its values against it (:func:`check`, called by :func:`l2d.run.resolve`);
- the sweep spec's typed sections (``dataset``, ``budget``, ``recipe``, the top-level ``seed``) take the field named by
  its ``spec`` path, with the same bounds, default and help, and so does the spec's JSON Schema
  (:func:`sweeps.core.checks.setting_rule`, :func:`sweeps.specs.section_class`); a sweep's base run reads them back by
  the same path (:func:`spec_values`);
- the ``train`` / ``teacher`` / ``dataset`` commands get a flag for each setting that names one for them, typed and
  bounded the same way (:func:`sweeps.cli._common.add_setting_options`);
- the generated reference pages (docs/cli.md, docs/reference/spec.md) are drawn from the spec and the parser.

Adding a setting is one :func:`setting` field of ``RunConfig``; ``tests/test_settings.py`` adds one and finds it in
all four. Torch-free.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

#: The largest image side a run or a spec accepts.
MAX_IMAGE_SIZE = 4096
#: The largest seed (numpy's and Optuna's generators take 32-bit seeds).
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Setting:
    """One setting of a run (the metadata of a :class:`l2d.run.RunConfig` field; :func:`settings` fills in ``name``
    and ``default`` from the field).

    Attributes:
        kind: ``int``, ``float``, ``bool``, or ``str`` (one of ``choices``).
        help: what it is, in a few words (the spec's schema, the CLI's help, the reference pages).
        minimum / maximum: its bounds (None: unbounded); ``exclusive``: the minimum itself is not allowed.
        multiple_of: the value must be a multiple of this.
        default_text: what a ``None`` default stands for (``the dataset's``).
        spec: where a sweep spec holds it: ``section.key`` (``recipe.batch_size``) or a top-level key (``seed``);
            None: not in a spec (a sweep sets it itself).
        flags: the CLI flag of each command that takes it (``{"train": "--teacher-epochs", "teacher": "--epochs"}``).
    """

    kind: type
    help: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive: bool = False
    multiple_of: int | None = None
    choices: tuple[str, ...] = ()
    default_text: str = ""
    spec: str | None = None
    flags: Mapping[str, str] = field(default_factory=dict)
    name: str = ""
    default: Any = None

    @property
    def optional(self) -> bool:
        """Whether ``None`` is allowed (it means :attr:`default_text`)."""
        return self.default is None

    def bounds(self) -> str:
        """``an integer >= 1 and <= 65,536``, ``a number > 0``: what is allowed, in words."""
        if self.kind is bool:
            return "true or false"
        if self.kind is str:
            return ", ".join(self.choices)
        show = (lambda v: f"{int(v):,}") if self.kind is int else (lambda v: f"{v:g}")
        parts = ([f"{'>' if self.exclusive else '>='} {show(self.minimum)}"] if self.minimum is not None else []) + (
            [f"<= {show(self.maximum)}"] if self.maximum is not None else []
        )
        what = "an integer" if self.kind is int else "a number"
        text = " ".join([what, " and ".join(parts)]).strip()
        return text + (f", a multiple of {self.multiple_of}" if self.multiple_of else "")

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not allowed (one line, without the setting's name), or None when it is."""
        if value is None:
            return None if self.optional else f"is required; allowed: {self.bounds()}"
        if self.kind is bool:
            return None if isinstance(value, bool) else f"expected true or false, got {value!r}"
        if self.kind is str:
            return None if value in self.choices else f"{value!r} is not allowed; allowed: {self.bounds()}"
        what = "an integer" if self.kind is int else "a number"
        if isinstance(value, bool) or not isinstance(value, int if self.kind is int else (int, float)):
            return f"expected {what}, got {value!r}"
        if not math.isfinite(value):
            return f"expected a finite number, got {value!r}"
        low = self.minimum is not None and (value <= self.minimum if self.exclusive else value < self.minimum)
        if low or (self.maximum is not None and value > self.maximum):
            shown = f"{value:,}" if self.kind is int else f"{value:g}"
            return f"{shown} is out of range; allowed: {self.bounds()}"
        if self.multiple_of and value % self.multiple_of:
            return f"{value} is not allowed; allowed: a multiple of {self.multiple_of}"
        return None

    def described(self) -> str:
        """The help with the default: ``global batch size (default: 64)``."""
        if self.default is None:
            default = self.default_text
        elif self.kind is bool:
            default = "true" if self.default else "false"
        elif self.kind is str:
            default = self.default
        else:
            default = f"{self.default:g}" if self.kind is float else f"{self.default}"
        return f"{self.help} (default: {default})" if default else self.help

    @property
    def spec_section(self) -> str | None:
        """The spec section it is in (None: top level, or not in a spec)."""
        return self.spec.split(".")[0] if self.spec and "." in self.spec else None

    @property
    def spec_key(self) -> str | None:
        return self.spec.split(".")[-1] if self.spec else None


def setting(default: Any = None, kind: type = int, help: str = "", **rules) -> Any:
    """A :class:`l2d.run.RunConfig` field that is a setting (see :class:`Setting` for ``rules``)."""
    return field(default=default, metadata={"setting": Setting(kind, help, **rules)})


def settings(config_class: type) -> dict[str, Setting]:
    """The settings of ``config_class`` (:class:`l2d.run.RunConfig`, or a class built like it) by field name, in field
    order."""
    out = {}
    for item in dataclasses.fields(config_class):
        declared = item.metadata.get("setting")
        if declared is not None:
            out[item.name] = dataclasses.replace(declared, name=item.name, default=item.default)
    return out


def check(config: Any) -> None:
    """Each setting of ``config`` (a run config) against its declaration.

    Raises:
        ValueError: the first value that is not allowed, ``<name>: <why>``.
    """
    for name, declared in settings(type(config)).items():
        problem = declared.problem(getattr(config, name))
        if problem is not None:
            raise ValueError(f"{name}: {problem}")


def spec_values(spec: Any, config_class: type) -> dict[str, Any]:
    """The settings a sweep spec holds (by :attr:`Setting.spec` path), as run-config field values."""
    out = {}
    for name, declared in settings(config_class).items():
        if declared.spec is None:
            continue
        holder = getattr(spec, declared.spec_section) if declared.spec_section else spec
        out[name] = getattr(holder, declared.spec_key)
    return out
