"""Write the generated reference pages of the docs site from the code, so that they cannot drift from it:

- ``docs/cli.md`` (the one command-line page): its table of commands and the reference of every command and flag
  (between ``<!-- cli:commands/reference:start/end -->``), from the argument parser;
- ``docs/reference/spec.md``: the sweep spec's fields, from its JSON Schema (``l2d-sweep spec --schema``);
- the trials table's columns in ``docs/results.md`` (between ``<!-- schema:trials:start/end -->``), from
  :data:`sweeps.results.schema.TRIAL_COLUMNS`.

``python docs/gen_reference.py`` rewrites them; ``--check`` exits 1 naming each page that is out of date (``make
docs`` and ``tests/test_docs.py`` run it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DOCS = ROOT / "docs"


def _flag(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    names = ", ".join(f"`{o}`" for o in action.option_strings)
    takes = action.nargs != 0
    metavar = action.metavar or (action.dest.upper() if takes else "")
    if takes and action.choices:
        metavar = "{" + ",".join(str(c) for c in action.choices) + "}"
    return f"{names} {metavar}".strip() if takes else names


def _escape(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _help(action: argparse.Action) -> str:
    text = _escape(action.help or "")
    if action.default not in (None, False, argparse.SUPPRESS) and action.nargs != 0 and "default" not in text:
        text += f" (default: `{action.default}`)"
    return text


def _arguments(parser: argparse.ArgumentParser) -> list[str]:
    rows = [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
    if not rows:
        return []
    lines = ["| argument | meaning |", "|---|---|"]
    lines += [f"| {_flag(a)} | {_help(a)} |" for a in rows]
    return lines


def _commands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def commands_table() -> str:
    """The overview at the top of ``docs/cli.md``: each command and its one-line help, from the parser."""
    from sweeps.cli import build_parser

    sub = _commands(build_parser())
    lines = ["| command | what it does |", "|---|---|"]
    lines += [
        f"| [`l2d-sweep {choice.dest}`](#l2d-sweep-{choice.dest}) | {_escape(choice.help or '')} |"
        for choice in sub._choices_actions
    ]
    return "\n".join(lines)


def cli_reference() -> str:
    """Every command and flag (the second half of ``docs/cli.md``), from the parser."""
    from sweeps.cli import build_parser

    parser = build_parser()
    lines = [
        "### Global flags",
        "",
        "Given before or after the command: `l2d-sweep -q results runs/quickstart`.",
        "",
        *_arguments(parser),
        "",
    ]
    sub = _commands(parser)
    helps = {choice.dest: choice.help for choice in sub._choices_actions}
    for name, command in sub.choices.items():
        lines += [
            f"### `l2d-sweep {name}`",
            "",
            _escape(command.description or helps.get(name) or ""),
            "",
            "```text",
            command.format_usage().strip().replace("usage: ", ""),
            "```",
            "",
        ]
        lines += _arguments(command)
        inner = [a for a in command._actions if isinstance(a, argparse._SubParsersAction)]
        for group in inner:
            for child_name, child in group.choices.items():
                lines += [
                    "",
                    f"#### `l2d-sweep {name} {child_name}`",
                    "",
                    _escape(child.description or ""),
                    "",
                    "```text",
                    child.format_usage().strip().replace("usage: ", ""),
                    "```",
                    "",
                    *_arguments(child),
                ]
        lines.append("")
    return "\n".join(lines).rstrip()


def _type(schema: dict) -> str:
    if "enum" in schema:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    if "anyOf" in schema:
        return " or ".join(_type(s) for s in schema["anyOf"])
    if "$ref" in schema:
        return f"[{schema['$ref'].rsplit('/', 1)[-1]}](#{schema['$ref'].rsplit('/', 1)[-1].lower()})"
    kind = schema.get("type", "any")
    if kind == "array" and "items" in schema:
        return f"list of {_type(schema['items'])}"
    if kind == "object" and "additionalProperties" in schema and isinstance(schema["additionalProperties"], dict):
        return f"map to {_type(schema['additionalProperties'])}"
    return str(kind)


def _fields(schema: dict) -> list[str]:
    props = schema.get("properties", {})
    required = set(schema.get("required", []))
    lines = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for name, prop in props.items():
        default = f"`{json.dumps(prop['default'])}`" if "default" in prop else ("required" if name in required else "")
        lines.append(f"| `{name}` | {_type(prop)} | {default} | {_escape(prop.get('description', ''))} |")
    return lines


def _section(prop: dict) -> dict | None:
    """The object schema with named fields inside a property (itself, a list's items, one branch of anyOf)."""
    for candidate in [prop, prop.get("items") or {}, *prop.get("anyOf", [])]:
        if isinstance(candidate, dict) and candidate.get("properties"):
            return candidate
        if (
            isinstance(candidate, dict)
            and candidate.get("type") == "array"
            and isinstance(candidate.get("items"), dict)
            and candidate["items"].get("properties")
        ):
            return candidate["items"]
    return None


def spec_page() -> str:
    from sweeps.specs import json_schema

    schema = json_schema()
    lines = [
        "# Sweep spec reference",
        "",
        "Generated from the spec's JSON Schema by `docs/gen_reference.py`. `l2d-sweep spec --schema` prints "
        "the schema itself (for an editor's completion and validation); `l2d-sweep validate SPEC` checks a "
        "file against it and reports every mistake at once.",
        "",
        "## The spec",
        "",
        *_fields(schema),
        "",
    ]
    for name, prop in schema.get("properties", {}).items():
        section = _section(prop)
        if section is not None:
            lines += [
                f"## `{name}`",
                "",
                _escape(prop.get("description", "") or section.get("description", "")),
                "",
                *_fields(section),
                "",
            ]
    return "\n".join(lines).rstrip() + "\n"


def _block(text: str, name: str, content: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    head, rest = text.split(start, 1)
    return f"{head}{start}\n{content.strip()}\n{end}{rest.split(end, 1)[1]}"


def pages() -> dict[Path, str]:
    from sweeps.results.schema import markdown_table

    results, cli = DOCS / "results.md", DOCS / "cli.md"
    return {
        cli: _block(_block(cli.read_text(), "cli:commands", commands_table()), "cli:reference", cli_reference()),
        DOCS / "reference" / "spec.md": spec_page(),
        results: _block(results.read_text(), "schema:trials", markdown_table()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write (or --check) the generated reference pages")
    parser.add_argument("--check", action="store_true", help="exit 1 when a page is out of date; write nothing")
    args = parser.parse_args(argv)
    stale = []
    for path, text in pages().items():
        if path.is_file() and path.read_text() == text:
            continue
        if args.check:
            stale.append(str(path.relative_to(ROOT)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(f"out of date: {', '.join(stale)}; run python docs/gen_reference.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
