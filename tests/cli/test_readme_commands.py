"""The README's commands are real: every `kdstore ...` line of its shell blocks names an existing
command, and every option it passes is one that command's --help lists (fast: no command runs)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from kdstore.cli.main import cli

README = Path(__file__).resolve().parents[2] / "README.md"


def _command_lines() -> list[str]:
    """The README's indented `kdstore ...` lines, continuation lines (ending in \\) joined."""
    lines, joined = README.read_text().splitlines(), []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("    kdstore "):
            text = line.strip()
            while text.endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text[:-1] + " " + lines[i].strip()
            joined.append(text.split("  #")[0].strip())
        i += 1
    return joined


def test_the_readme_has_commands_to_check():
    assert len(_command_lines()) >= 5


@pytest.mark.parametrize("line", _command_lines())
def test_a_readme_command_takes_the_options_it_is_given(line):
    words = shlex.split(line)
    command = words[1]
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0, f"`kdstore {command}` is not a command: {result.output}"
    listed = set(re.findall(r"--[a-z0-9-]+", result.output))
    given = [w.split("=")[0] for w in words[2:] if w.startswith("--")]
    assert [g for g in given if g not in listed] == [], f"{line}: options its --help does not list"
