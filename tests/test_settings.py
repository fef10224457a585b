"""A run's settings are defined once (:mod:`l2d.settings`): a setting added in one place, a field of the run config,
shows in the run config's checks, the spec's typed section and JSON Schema, a sweep's base run, the CLI's flags and
the generated reference pages, with the same bounds, default and help everywhere."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
from pathlib import Path

import pytest

from l2d import settings as settings_module
from l2d.run import RunConfig, resolve
from l2d.settings import setting, settings
from sweeps.cli._common import add_setting_options, run_config
from sweeps.core.checks import Errors, section_class, section_schema, validate_section

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class WithProbe(RunConfig):
    """The run config with one setting more, added the one way a setting is added."""

    probe_passes: int | None = setting(
        None,
        int,
        "passes of a probe this test adds",
        minimum=1,
        maximum=9,
        default_text="none",
        spec="recipe.probe_passes",
        flags={"train": "--probe-passes"},
    )


def _reference():
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "docs" / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_setting_added_once_is_in_the_run_config_the_spec_the_cli_and_the_reference():
    declared = settings(WithProbe)["probe_passes"]
    assert declared.name == "probe_passes" and declared.default is None and declared.optional

    # 1. the run config: its value is checked against the declaration
    assert resolve(WithProbe(probe_passes=4)).probe_passes == 4
    with pytest.raises(ValueError, match=r"probe_passes: 10 is out of range; allowed: an integer >= 1 and <= 9"):
        resolve(WithProbe(probe_passes=10))

    # 2. the spec: its section has the field with the same bounds and help, and a sweep's base run reads it back
    recipe = section_class("RecipeSpec", "recipe", [], __name__, WithProbe)
    assert "probe_passes" in [f.name for f in dataclasses.fields(recipe)]
    errors = Errors("spec.yaml")
    assert validate_section(errors, recipe, {"probe_passes": 10}, "recipe") is None
    assert errors.lines == ["spec.yaml: recipe.probe_passes: 10 is too large; allowed: an integer >= 1 and <= 9"]
    parsed = validate_section(Errors("spec.yaml"), recipe, {"probe_passes": 3, "batch_size": 8}, "recipe")
    assert parsed.probe_passes == 3 and parsed.batch_size == 8
    schema = section_schema(recipe)["properties"]["probe_passes"]
    (bounded,) = [s for s in schema["anyOf"] if s.get("type") == "integer"]
    assert bounded["minimum"] == 1 and bounded["maximum"] == 9
    assert schema["description"] == "passes of a probe this test adds (default: none)"

    from sweeps.specs import parse_spec
    from tests.sweeps.conftest import TINY_SPEC

    spec = dataclasses.replace(parse_spec({**TINY_SPEC, "seed": 7}, "x.yaml"), recipe=parsed)
    values = settings_module.spec_values(spec, WithProbe)
    assert values["probe_passes"] == 3 and values["batch_size"] == 8 and values["seed"] == 7

    # 3. the CLI: the command the setting names gets the flag, typed and bounded; others do not
    parser = argparse.ArgumentParser(prog="l2d-sweep train", exit_on_error=False)
    parser.add_argument("--dataset", default="mosaic-digits")
    parser.add_argument("--data-root")
    parser.add_argument("--dataset-option", action="append", default=[])
    add_setting_options(parser, "train", config_class=WithProbe)
    args = parser.parse_args(["--probe-passes", "5", "--batch-size", "16"])
    args.command = "train"
    config = run_config(args, WithProbe)
    assert isinstance(config, WithProbe) and config.probe_passes == 5 and config.batch_size == 16
    with pytest.raises(argparse.ArgumentError, match=r"0 is out of range; allowed: an integer >= 1 and <= 9"):
        parser.parse_args(["--probe-passes", "0"])
    other = argparse.ArgumentParser()
    add_setting_options(other, "teacher", config_class=WithProbe)
    assert "--probe-passes" not in other.format_help()

    # 4. the reference pages: drawn from the same section and parser
    reference = _reference()
    assert any(
        "`probe_passes`" in row and "passes of a probe this test adds" in row
        for row in reference._fields(section_schema(recipe))
    )
    assert any("--probe-passes" in row and "(default: none)" in row for row in reference._arguments(parser))


def test_every_setting_of_the_run_config_is_the_same_in_the_spec_and_the_cli():
    """The shipped settings: a spec field for each spec path and a flag for each command named, with the
    declaration's default; the spec's sections hold nothing a setting holds under another rule."""
    from sweeps.cli import build_parser
    from sweeps.specs import Budget, DatasetSpec, RecipeSpec, json_schema

    sections = {"recipe": RecipeSpec, "budget": Budget, "dataset": DatasetSpec}
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, declared in settings(RunConfig).items():
        if declared.spec_section:
            (holder,) = [f for f in dataclasses.fields(sections[declared.spec_section]) if f.name == declared.spec_key]
            assert holder.default == declared.default, name
        elif declared.spec:
            assert declared.spec in json_schema()["properties"], name
        for command, flag in declared.flags.items():
            (action,) = [a for a in commands[command]._actions if flag in a.option_strings]
            assert action.dest == name and action.default is None, (name, command)
            assert declared.help in action.help, (name, command)


def test_a_value_outside_a_setting_is_refused_the_same_way_by_the_run_config_and_the_cli(capsys):
    from sweeps.cli import main

    with pytest.raises(ValueError, match=r"embed_dim: 12 is not allowed; allowed: a multiple of 8"):
        resolve(RunConfig(embed_dim=12))
    with pytest.raises(SystemExit) as exited:
        main(["train", "--embed-dim", "12"])
    assert exited.value.code == 2
    assert "argument --embed-dim: 12 is not allowed; allowed: a multiple of 8" in capsys.readouterr().err
