"""The command line: help, one-line errors, the methods listing."""

import subprocess
import sys

import pytest

from sweeps.cli import main


def test_methods_lists_every_method(capsys):
    from l2d.losses import METHODS

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in METHODS:
        assert f"\n{name} " in out
    assert "lambda_mld=10, lambda_cd=100, lambda_id=1000" in out


def test_bad_command_is_a_one_line_error():
    result = subprocess.run([sys.executable, "-m", "sweeps.cli", "bogus"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "invalid choice: 'bogus'" in result.stderr


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "methods" in capsys.readouterr().out
