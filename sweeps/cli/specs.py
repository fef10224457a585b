"""``l2d-sweep validate`` and ``l2d-sweep spec``: check spec files without starting anything, and the JSON Schema of
the spec language (for editors with a YAML language server)."""

from __future__ import annotations

import argparse
import json
import sys

from l2d.data import DatasetError, check_declared
from l2d.storage import Location, StorageError, redact
from l2d.weights import WeightsError
from sweeps.specs import SpecError, check_adopted_teachers, json_schema, load_spec


def _cmd_validate(args: argparse.Namespace) -> int:
    status = 0
    for path in args.specs:
        try:
            spec = load_spec(path)
        except SpecError as error:
            for line in error.errors:
                print(f"l2d-sweep validate: error: {line}", file=sys.stderr)
            status = 2
            continue

        try:
            declared = check_declared(spec.dataset.name, spec.dataset.root, dict(spec.dataset.options))
            if declared is not None:
                check_adopted_teachers(spec, list(declared.class_names))
        except DatasetError as error:
            print(f"l2d-sweep validate: error: {path}: dataset: {error}", file=sys.stderr)
            status = 2
            continue
        except WeightsError as error:
            print(f"l2d-sweep validate: error: {path}: teacher: {error}", file=sys.stderr)
            status = 2
            continue
        pairs = sum(len(p.students) for p in spec.pairings)
        searched = sorted(k for k, v in spec.search_space.items() if not isinstance(v, float))
        print(
            f"{path}: valid: sweep {spec.name!r} on {spec.dataset.name}, {len(spec.pairings)} teacher(s) and {pairs} "
            f"pairing(s), methods {', '.join(spec.methods)}, {spec.budget.num_samples} trials of up to "
            f"{spec.budget.max_epochs} epochs{spec.selection_cost()}, searching {', '.join(searched) or 'nothing'}; "
            f"folder {spec.sweep_dir}"
        )
        if declared is not None:
            sizes = ", ".join(f"{split} {len(images)}" for split, (images, _) in declared.splits.items())
            print(f"  dataset: {len(declared.class_names)} classes (from the {declared.classes_from}), images: {sizes}")
            for warning in declared.warnings:
                print(f"  warning: dataset: {warning}")
    return status


def _cmd_spec(args: argparse.Namespace) -> int:
    schema = json_schema()
    text = json.dumps(schema, indent=2) + "\n"
    if args.out:
        target = Location.parse(args.out, "--out")
        # The output-target rule for one file: a new file, or a schema this tool wrote (its title says so).
        if target.exists():
            previous = None
            if target.is_file():
                try:
                    previous = json.loads(target.read_bytes()[:10_000_000])
                except (ValueError, UnicodeDecodeError):
                    previous = None
            if not (isinstance(previous, dict) and previous.get("title") == schema["title"] and "$schema" in previous):
                raise StorageError(
                    f"--out {redact(str(target))}: exists and is not a spec schema this tool wrote; "
                    f"refusing to replace it: give a new file"
                )
        target.write_text(text)
        print(f"wrote the spec's JSON Schema to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def add_commands(commands) -> None:
    """Add ``validate`` and ``spec``."""
    validate = commands.add_parser(
        "validate",
        help="check spec files: every error at once, nothing started",
        description="Check sweep specs as `run` would (every field, the methods, datasets and timm backbones they "
        "name), print every error of each, start nothing and write nothing. Exit status 2 when one is "
        "invalid.",
    )
    validate.add_argument("specs", nargs="+", metavar="SPEC", help="spec files (YAML)")
    validate.set_defaults(func=_cmd_validate)
    spec = commands.add_parser(
        "spec",
        help="the spec language: its JSON Schema",
        description="Print the JSON Schema of a sweep spec (draft 2020-12). Point a YAML language server at it (e.g. "
        "`# yaml-language-server: $schema=l2d-sweep.schema.json` at the top of a spec) to get completion "
        "and checks in an editor.",
    )
    spec.add_argument("--schema", action="store_true", required=True, help="print the JSON Schema")
    spec.add_argument("--out", help="write it to this file instead of stdout (a new file, or a schema this tool wrote)")
    spec.set_defaults(func=_cmd_spec)
