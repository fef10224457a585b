"""``l2d-sweep completion bash|zsh``: a shell completion script made from the parser itself (commands, their
flags, the choices of a flag; files and folders for everything else), so it never lags the commands."""

from __future__ import annotations

import argparse
import shlex
import sys


def _table(parser: argparse.ArgumentParser) -> dict[str, dict[str, list[str]]]:
    """``{command path: {"flags": [...], "choices:<flag>": [...], "commands": [...]}}`` ("" is the top level)."""
    table: dict[str, dict[str, list[str]]] = {}

    def walk(node: argparse.ArgumentParser, path: str) -> None:
        entry = table.setdefault(path, {"flags": [], "commands": []})
        for action in node._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    entry["commands"].append(name)
                    walk(child, f"{path} {name}".strip())
            elif action.option_strings:
                entry["flags"] += [o for o in action.option_strings if o.startswith("--") or len(o) == 2]
                if action.choices:
                    for option in action.option_strings:
                        entry[f"choices:{option}"] = [str(c) for c in action.choices]

    walk(parser, "")
    return table


def bash_script(parser: argparse.ArgumentParser) -> str:
    table = _table(parser)
    cases = []
    for path, entry in sorted(table.items()):
        words = " ".join(entry["commands"] + entry["flags"])
        choices = "".join(
            f"            {shlex.quote(key[8:])}) COMPREPLY=($(compgen -W {shlex.quote(' '.join(v))} "
            f'-- "$cur")); return;;\n'
            for key, v in entry.items()
            if key.startswith("choices:")
        )
        cases.append(
            f'        {shlex.quote(path)})\n          case "$prev" in\n{choices}'
            f"          esac\n          words_={shlex.quote(words)};;\n"
        )
    return f"""# bash completion for l2d-sweep (made by `l2d-sweep completion bash`); zsh: autoload bashcompinit first.
_l2d_sweep() {{
    local cur prev path_ words_ i
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    path_=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
            -*) ;;
            *) if [[ " $(_l2d_sweep_commands "$path_") " == *" ${{COMP_WORDS[i]}} "* ]]; then
                   path_="${{path_:+$path_ }}${{COMP_WORDS[i]}}"; fi;;
        esac
    done
    case "$path_" in
{"".join(cases)}        *) words_="";;
    esac
    if [[ "$cur" == -* || -n "$(_l2d_sweep_commands "$path_")" && "$cur" != */* ]]; then
        COMPREPLY=($(compgen -W "$words_" -- "$cur"))
    fi
    if [[ ${{#COMPREPLY[@]}} -eq 0 ]]; then
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}}
_l2d_sweep_commands() {{
    case "$1" in
{
        "".join(
            f"        {shlex.quote(path)}) echo {shlex.quote(' '.join(entry['commands']))};;{chr(10)}"
            for path, entry in sorted(table.items())
            if entry["commands"]
        )
    }        *) echo "";;
    esac
}}
complete -o filenames -F _l2d_sweep l2d-sweep
"""


def _cmd_completion(args: argparse.Namespace) -> int:
    script = bash_script(args.root_parser)  # the whole parser, handed down by sweeps.cli.build_parser
    if args.shell == "zsh":
        script = "autoload -U +X bashcompinit && bashcompinit\n" + script
    sys.stdout.write(script)
    return 0


def add_commands(commands) -> None:
    """Add ``completion``."""
    completion = commands.add_parser(
        "completion",
        help="print a shell completion script (bash or zsh)",
        description="Print a completion script for bash or zsh, made from the parser (commands, flags, choices). "
        "Install: `l2d-sweep completion bash > ~/.local/share/bash-completion/completions/l2d-sweep`, "
        "or `source <(l2d-sweep completion zsh)` in ~/.zshrc.",
    )
    completion.add_argument("shell", choices=["bash", "zsh"], help="the shell")
    completion.set_defaults(func=_cmd_completion)
