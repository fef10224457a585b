"""docs/your-data.md's worked example, run as the page shows it: the example's files, `validate`, `dataset --spec`, a
sweep, `results` and `export --best`; every output line the page shows is one the commands print."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "your-data.md"
SHOWN_FOLDER = "/home/me/my-data"


def _console_blocks() -> dict[str, list[str]]:
    """Each ``$ command`` of the page's console blocks, with the output lines the page shows under it."""
    blocks: dict[str, list[str]] = {}
    for block in re.findall(r"```console\n(.*?)```", PAGE.read_text(), flags=re.S):
        command = None
        for line in block.splitlines():
            if line.startswith("$ "):
                command = line[2:]
                blocks[command] = []
            elif command is not None and line != "...":
                blocks[command].append(line)
    return blocks


def _run(command: str, cwd: Path) -> str:
    argv = command.split()
    if argv[0] == "l2d-sweep":
        argv = [sys.executable, "-m", "sweeps.cli", *argv[1:]]
    elif argv[0] == "python":
        argv = [sys.executable, str(ROOT / argv[1]), *argv[2:]]
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-2000:])
    return done.stdout


def test_the_spec_on_the_page_is_the_one_the_example_writes(tmp_path):
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        from your_data_example import SPEC
    finally:
        sys.path.remove(str(ROOT / "docs"))
    shown = re.search(r"```yaml\n(name: my-digits.*?)```", PAGE.read_text(), flags=re.S).group(1)
    assert shown == SPEC.format(folder=SHOWN_FOLDER, storage=f"{SHOWN_FOLDER}/sweeps")


@pytest.mark.ray
@pytest.mark.timeout(1200)
def test_the_worked_example_runs_as_the_page_shows(tmp_path):
    blocks = _console_blocks()
    assert list(blocks)[:4] == [
        "python docs/your_data_example.py my-data",
        "head -3 my-data/train.csv",
        "l2d-sweep validate my-data/spec.yaml",
        "l2d-sweep dataset --spec my-data/spec.yaml",
    ]
    folder = str(tmp_path / "my-data")
    for command, shown in blocks.items():
        if command.startswith("head "):
            output = "".join((tmp_path / "my-data" / "train.csv").open().readlines()[:3])
        else:
            output = _run(command, tmp_path)
        printed = output.replace(folder, SHOWN_FOLDER).replace("\r\n", "\n").splitlines()
        for line in shown:
            assert line in printed, (command, line, printed[:20])
    assert (tmp_path / "my-student" / "student.safetensors").is_file()
