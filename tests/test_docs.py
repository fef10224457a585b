"""The documentation is true to the code: every command shown exists and parses, every file named exists, the
generated reference pages are current, the site builds with warnings as errors, and the README stays short."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), ROOT / "cluster" / "README.md"]
COMMAND = re.compile(r"^(?:\$ )?(?:\.venv/bin/)?(l2d-sweep|make|python|\.venv/bin/python)\b(.*)$")


def _code_lines(text: str) -> list[str]:
    """The command lines of fenced code blocks, continuation lines joined: every line of a shell block (```bash,
    ```console, ```sh); in a plain block that shows a session (a line starting with ``$ ``), its ``$`` lines only;
    none of a ```text block (usage lines, output)."""
    lines, block, info, pending = [], None, "", ""
    for line in text.splitlines() + ["```"]:
        if line.strip().startswith("```"):
            if block is None:
                block, info = [], line.strip()[3:].strip()
                continue
            session = any(entry.startswith("$ ") for entry in block)
            if info in ("bash", "sh", "shell", "console") or (info == "" and not session):
                lines += [entry for entry in block if info != "" or COMMAND.match(entry)]
            elif info == "" and session:
                lines += [entry for entry in block if entry.startswith("$ ")]
            block, pending = None, ""
            continue
        if block is None:
            continue
        line = pending + line.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        block.append(line)
    return lines


def _commands() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for line in _code_lines(page.read_text()):
            if COMMAND.match(line):
                found.append((str(page.relative_to(ROOT)), line))
    return found


def test_every_l2d_sweep_command_in_the_docs_parses():
    from sweeps.cli import build_parser

    shown = [(page, line) for page, line in _commands() if COMMAND.match(line).group(1) == "l2d-sweep"]
    assert len(shown) > 30, shown  # the pages show many: a regex that matched none would pass vacuously
    bad = []
    for page, line in shown:
        words = shlex.split(COMMAND.match(line).group(0).removeprefix("$ "), comments=True)
        try:
            build_parser().parse_args(words[1:])
        except SystemExit as exit_:
            if exit_.code != 0:
                bad.append(f"{page}: {line}")
    assert not bad, "commands in the docs that l2d-sweep does not accept:\n" + "\n".join(bad)


def test_every_make_target_and_script_the_docs_run_exists():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    missing = []
    for page, line in _commands():
        kind = COMMAND.match(line).group(1)
        words = shlex.split(COMMAND.match(line).group(0).removeprefix("$ "), comments=True)
        if kind == "make":
            missing += [f"{page}: make {w}" for w in words[1:] if "=" not in w and w not in targets]
        elif len(words) > 1 and words[1].endswith(".py") and "/" in words[1]:  # a file of the repository
            if not (ROOT / words[1]).is_file():
                missing.append(f"{page}: {words[1]}")
    assert not missing, missing


def test_every_repository_file_the_docs_name_exists():
    pattern = re.compile(
        r"`((?:benchmarks|tests|search_spaces|cluster|docs|notebooks|sweeps|l2d)/[\w./-]+"
        r"\.(?:py|yaml|sh|md|json|txt))(?:::\w+)?`"
    )
    missing = []
    for page in PAGES:
        for name in pattern.findall(page.read_text()):
            if "*" not in name and "<" not in name and not (ROOT / name).exists():
                missing.append(f"{page.relative_to(ROOT)}: {name}")
    assert not missing, missing


def test_the_generated_reference_pages_are_current():
    done = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "gen_reference.py"), "--check"], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr


def test_the_readme_is_short_and_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target


def test_the_readme_s_spec_is_the_shipped_quickstart():
    # The README shows the spec `make sweep` runs: the file itself, comments included, not a version of it.
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    assert blocks, "the README has no yaml block"
    assert blocks[0] == (ROOT / "search_spaces" / "quickstart.yaml").read_text(), "README spec != quickstart.yaml"


def test_the_site_builds_with_warnings_as_errors(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs-material is in the docs extra: pip install -e '.[docs]'")
    pytest.importorskip("material", reason="mkdocs-material is in the docs extra: pip install -e '.[docs]'")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "site" / "cli" / "index.html").is_file() and (
        tmp_path / "site" / "reference" / "spec" / "index.html"
    ).is_file()


def test_every_extra_is_listed_on_the_install_page():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    page = (ROOT / "docs" / "getting-started.md").read_text()
    listed = set(re.findall(r"^\| `([a-z0-9-]+)`(?:, `([a-z0-9-]+)`)? \|", page, flags=re.M))
    names = {name for pair in listed for name in pair if name}
    assert set(extras) == names, (sorted(set(extras) - names), sorted(names - set(extras)))
