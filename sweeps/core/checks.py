"""The spec's checks and how they report: typed field rules (pydantic validates them and writes their JSON Schema),
an error list that gathers every mistake of a file (``source: field: the value and what is allowed``, one line each),
and the YAML reader every spec goes through."""

from __future__ import annotations

import difflib
import io
import math
import re
from dataclasses import MISSING, field, fields, make_dataclass
from typing import Annotated, Any, Iterable, Optional

import yaml
from pydantic import BeforeValidator, TypeAdapter, ValidationError, WithJsonSchema

from l2d.run import RunConfig
from l2d.settings import settings


class SpecError(ValueError):
    """A sweep spec is invalid: every error of the file, one line each (``errors``), each naming the file, the
    field, the value and what is allowed."""

    def __init__(self, message: str | list[str]):
        self.errors = [message] if isinstance(message, str) else list(message)
        super().__init__("\n".join(self.errors))


def show(value: Any) -> str:
    return f"{shown(value)} ({type(value).__name__})"


# --- typed field rules -------------------------------------------------------------------------------------------
# Each returns an Annotated type: its validator gives this project's messages, its JSON Schema says the same rule.


def _bounds_text(minimum, maximum, exclusive: bool, kind: type) -> str:
    show_value = (lambda v: f"{int(v):,}" if abs(v) >= 10_000 else f"{int(v)}") if kind is int else (lambda v: f"{v:g}")
    parts = ([f"{'>' if exclusive else '>='} {show_value(minimum)}"] if minimum is not None else []) + (
        [f"<= {show_value(maximum)}"] if maximum is not None else []
    )
    return " and ".join(parts)


def _or_null(schema: dict) -> dict:
    """An optional field's schema: its value's schema or null, the description beside them (where editors and the
    reference pages read it)."""
    inner = {k: v for k, v in schema.items() if k != "description"}
    return {
        "anyOf": [inner, {"type": "null"}],
        **({"description": schema["description"]} if "description" in schema else {}),
    }


def integer(
    minimum: int | None = None,
    maximum: int | None = None,
    optional: bool = False,
    help: str = "",
    multiple_of: int | None = None,
):
    def check(value):
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {show(value)}")
        if minimum is not None and value < minimum:
            raise ValueError(f"{value} is too small; allowed: an integer {_bounds_text(minimum, maximum, False, int)}")
        if maximum is not None and value > maximum:
            raise ValueError(
                f"{value:,} is too large; allowed: an integer {_bounds_text(minimum, maximum, False, int)}"
            )
        if multiple_of and value % multiple_of:
            raise ValueError(f"{value} is not allowed; allowed: a multiple of {multiple_of}")
        return value

    schema = {
        "type": "integer",
        **({"minimum": minimum} if minimum is not None else {}),
        **({"maximum": maximum} if maximum is not None else {}),
        **({"multipleOf": multiple_of} if multiple_of else {}),
        **({"description": help} if help else {}),
    }
    return Annotated[
        Optional[int] if optional else int,
        BeforeValidator(check),
        WithJsonSchema(_or_null(schema) if optional else schema),
    ]


def number(
    minimum: float | None = None,
    exclusive: bool = False,
    maximum: float | None = None,
    optional: bool = False,
    help: str = "",
):
    def check(value):
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {show(value)}")
        if (minimum is not None and (value <= minimum if exclusive else value < minimum)) or (
            maximum is not None and value > maximum
        ):
            raise ValueError(
                f"{value} is out of range; allowed: a number {_bounds_text(minimum, maximum, exclusive, float)}"
            )
        return float(value)

    schema: dict = {"type": "number", **({"description": help} if help else {})}
    if minimum is not None:
        schema["exclusiveMinimum" if exclusive else "minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return Annotated[
        Optional[float] if optional else float,
        BeforeValidator(check),
        WithJsonSchema(_or_null(schema) if optional else schema),
    ]


def setting_rule(declared):
    """The spec's rule of a run setting (:class:`l2d.settings.Setting`): its type, bounds and help, one definition."""
    default = f" (default: {declared.default_text})" if declared.optional and declared.default_text else ""
    help = declared.help + default
    if declared.kind is bool:
        return flag(help, optional=declared.optional)
    if declared.kind is str:
        return choice(declared.choices, help)
    if declared.kind is int:
        return integer(declared.minimum, declared.maximum, declared.optional, help, declared.multiple_of)
    return number(declared.minimum, declared.exclusive, declared.maximum, declared.optional, help)


def section_class(name: str, section: str, own: list, module: str, config_class: type | None = None) -> type:
    """A spec section's typed dataclass: the ``own`` fields (``(name, rule, default-or-field)``, a sweep's own) then a
    field for each run setting whose spec path is in ``section`` (:func:`setting_rule`, the setting's default)."""
    derived = [
        (declared.spec_key, setting_rule(declared), field(default=declared.default))
        for declared in settings(config_class or RunConfig).values()
        if declared.spec_section == section
    ]
    cls = make_dataclass(name, [*own, *derived], frozen=True)
    cls.__module__ = module  # pickles and the reference pages name it where it is defined
    return cls


def choice(values: Iterable[str], help: str = ""):
    allowed = tuple(values)

    def check(value):
        if value not in allowed:
            raise ValueError(f"{show(value)} is not allowed; allowed: {', '.join(allowed)}" + suggest(value, allowed))
        return value

    return Annotated[
        str, BeforeValidator(check), WithJsonSchema({"enum": list(allowed), **({"description": help} if help else {})})
    ]


def text(help: str = "", optional: bool = False):
    def check(value):
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"expected a non-empty string, got {show(value)}")
        return value

    schema = {"type": "string", "minLength": 1, **({"description": help} if help else {})}
    return Annotated[
        Optional[str] if optional else str,
        BeforeValidator(check),
        WithJsonSchema(_or_null(schema) if optional else schema),
    ]


def flag(help: str = "", optional: bool = False):
    def check(value):
        if value is None and optional:
            return None
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {show(value)}")
        return value

    schema = {"type": "boolean", **({"description": help} if help else {})}
    return Annotated[
        Optional[bool] if optional else bool,
        BeforeValidator(check),
        WithJsonSchema(_or_null(schema) if optional else schema),
    ]


def suggest(value: Any, known: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for a close match among ``known``, else empty."""
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, list(known), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close and close[0] != value else ""


# --- gathering errors --------------------------------------------------------------------------------------------


class Errors:
    """Every error of one spec: ``add`` collects, ``raise_if_any`` raises them all as one :class:`SpecError`."""

    def __init__(self, source: str):
        self.source = source
        self.lines: list[str] = []

    suggest = staticmethod(suggest)

    def add(self, where: str, message: str) -> None:
        if len(message) > MAX_MESSAGE:  # a value echoed whole (a 10 MB name) would drown the terminal
            message = f"{message[:MAX_MESSAGE]}... (cut: {len(message):,} characters)"
        line = f"{self.source}: {where}: {message}" if where else f"{self.source}: {message}"
        if line not in self.lines:
            self.lines.append(line)

    def raise_if_any(self) -> None:
        if self.lines:
            raise SpecError(self.lines)

    def value(self, rule, value: Any, where: str):
        """``value`` checked by a field rule (:func:`integer`, :func:`choice`...); None, and an error, when it fails."""
        try:
            return _adapter(rule).validate_python(value)
        except ValidationError as error:
            for item in error.errors():
                self.add(where, _message(item))
            return None

    def mapping(self, value: Any, where: str, allowed: tuple[str, ...] | None, required: tuple[str, ...] = ()) -> bool:
        """Whether ``value`` is a mapping with only ``allowed`` keys (any key when None) and every ``required`` one;
        an error for each problem."""
        if not isinstance(value, dict):
            keys = f" with keys {', '.join(allowed)}" if allowed else ""
            self.add(where, f"expected a mapping{keys}, got {show(value)}")
            return False
        ok = True
        for key in value:
            if allowed is not None and key not in allowed:
                self.add(
                    f"{where}.{key}" if where else str(key),
                    f"unknown key; allowed keys: {', '.join(allowed)}" + suggest(key, allowed),
                )
                ok = False
        for key in required:
            if key not in value:
                self.add(f"{where}.{key}" if where else key, "is required")
                ok = False
        return ok or not required or all(key in value for key in required)

    def string_list(self, value: Any, where: str) -> tuple[str, ...] | None:
        if not isinstance(value, list) or not value:
            self.add(where, f"expected a non-empty list of strings, got {show(value)}")
            return None
        items = [self.value(text(), item, f"{where}[{i}]") for i, item in enumerate(value)]
        return None if any(item is None for item in items) else tuple(items)


_ADAPTERS: dict = {}


def _adapter(kind) -> TypeAdapter:
    key = id(kind)
    if key not in _ADAPTERS:
        _ADAPTERS[key] = (kind, TypeAdapter(kind))
    return _ADAPTERS[key][1]


def _message(item: dict) -> str:
    """A pydantic error in this project's words (the rules' own messages pass through)."""
    kind, message = item["type"], item["msg"]
    if kind == "value_error":
        return message.removeprefix("Value error, ")
    if kind in ("missing", "missing_argument"):
        return "is required"
    if kind in ("dict_type", "dataclass_type", "dataclass_args_type"):
        return f"expected a mapping, got {show(item.get('input'))}"
    return message


def validate_section(errors: Errors, section: type, raw: Any, where: str, required: tuple[str, ...] = ()):
    """A spec section (a dataclass of typed fields) from its mapping: unknown keys and every field's rule checked,
    each problem an error; the section, or None when any field failed."""
    names = tuple(f.name for f in fields(section))
    if not errors.mapping(raw, where, names, required):
        if not isinstance(raw, dict):
            return None
        raw = {k: v for k, v in raw.items() if k in names}
    try:
        return _adapter(section).validate_python(raw)
    except ValidationError as error:
        for item in error.errors():
            loc = [str(part) for part in item["loc"]]
            errors.add(".".join([where, *loc[:1]]), _message(item))
        return None


def section_schema(section: type) -> dict:
    """The JSON Schema of a spec section (no unknown keys; the rules' bounds and choices; defaults)."""
    schema = TypeAdapter(section).json_schema()
    properties = schema.get("properties", {})
    for f in fields(section):
        if f.default is not MISSING and f.name in properties and f.default is not None:
            properties[f.name]["default"] = f.default
        properties.get(f.name, {}).pop("title", None)
    return {"type": "object", "additionalProperties": False, "properties": properties}


# --- YAML ----------------------------------------------------------------------------------------------------------


def read_yaml(path: str, what: str = "YAML file") -> Any:
    """A YAML file through :func:`safe_yaml`, each failure a one-line :class:`SpecError` naming the file."""
    try:
        with open(path) as stream:
            return safe_yaml(stream)
    except FileNotFoundError:
        raise SpecError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise SpecError(
            f"{path}: is a folder; expected a sweep spec (a YAML file, see search_spaces/); a sweep folder "
            f"is given to resume, results, status and export"
        ) from None
    except (PermissionError, UnicodeDecodeError) as error:
        raise SpecError(f"{path}: cannot be read as a YAML file ({type(error).__name__})") from None
    except yaml.YAMLError as error:
        raise SpecError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None


#: The largest spec file, and the most values its document may hold once every alias (``*name``) is expanded: a
#: document that expands an anchor exponentially (a "billion laughs" bomb) is refused as it is read, in well under
#: a second (the expanded size is counted over the parsed graph, each shared node once).
MAX_YAML_BYTES = 1_000_000
MAX_YAML_NODES = 100_000
#: The longest value an error message quotes, and the longest message (the rest is cut, with its length said).
MAX_SHOWN = 80
MAX_MESSAGE = 600


def shown(value: Any, limit: int = MAX_SHOWN) -> str:
    """``repr(value)`` cut to ``limit`` characters (``...`` and the full length after): an error never echoes a
    10 MB string back."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _expanded_size(root) -> int:
    """How many values a YAML node graph holds with every alias expanded; each shared node is counted once and its
    size reused, so a bomb is measured without being expanded (stops counting past :data:`MAX_YAML_NODES`)."""
    sizes: dict[int, int] = {}
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        value = node.value
        if isinstance(value, str):
            sizes[id(node)] = 1
            continue
        children = [child for pair in value for child in (pair if isinstance(pair, tuple) else (pair,))]
        if not children_done:
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
            continue
        sizes[id(node)] = min(MAX_YAML_NODES + 1, 1 + sum(sizes.get(id(child), 1) for child in children))
    return sizes[id(root)]


def safe_yaml(stream) -> Any:
    """``yaml.safe_load`` with three fixes: ``1e-4`` and ``5E+3`` are numbers (YAML 1.1 wants a dot in a float, so
    they would be strings); a key given twice in a mapping is an error (not the last one silently winning); at most
    :data:`MAX_YAML_BYTES` bytes and :data:`MAX_YAML_NODES` values with aliases expanded (a bomb is refused)."""
    text = stream if isinstance(stream, (str, bytes)) else stream.read(MAX_YAML_BYTES + 1)
    if len(text) > MAX_YAML_BYTES:
        raise yaml.YAMLError(f"larger than {MAX_YAML_BYTES:,} bytes; a spec is a short YAML file")
    if isinstance(text, str) and hasattr(stream, "name"):  # YAML's messages name the file, as they did
        named = io.StringIO(text)
        named.name = stream.name
        text = named

    class Loader(yaml.SafeLoader):
        def get_single_node(self):  # the document's node graph, before any value is built from it
            node = super().get_single_node()
            if node is not None and _expanded_size(node) > MAX_YAML_NODES:
                raise yaml.YAMLError(
                    f"more than {MAX_YAML_NODES:,} values once its aliases (*name) are expanded: "
                    f"refused (an anchor expanded again and again is a YAML bomb)"
                )
            return node

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )

    def mapping(loader, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"the key {key!r} is given twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return loader.construct_mapping(node, deep=deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass: no Python objects


def dataclass_fields(cls) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))
