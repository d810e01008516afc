"""The README's commands are real: every `kdstore ...` line of its shell blocks names an existing
command, and every option it passes is one that command's --help lists (fast: no command runs;
test_quick_start.py runs the quick start)."""

from __future__ import annotations

import re
import shlex

import pytest
from click.testing import CliRunner

from kdstore.cli.main import cli
from tests.helpers import readme_commands


def test_the_readme_has_commands_to_check():
    assert len(readme_commands()) >= 5


@pytest.mark.parametrize("line", readme_commands())
def test_a_readme_command_takes_the_options_it_is_given(line):
    words = shlex.split(line)
    command = words[1]
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0, f"`kdstore {command}` is not a command: {result.output}"
    listed = set(re.findall(r"--[a-z0-9-]+", result.output))
    given = [w.split("=")[0] for w in words[2:] if w.startswith("--")]
    assert [g for g in given if g not in listed] == [], f"{line}: options its --help does not list"
