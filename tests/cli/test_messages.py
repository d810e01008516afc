"""Messages name what the user typed: an --out (or --json) under a file, or through a symlink
loop, is refused in one line naming the option and its value, for every command that writes;
never a hidden staging path (`.NAME.partial`), torch's internals or a bare strerror. Required
options are required (click 8.3+ took an explicit default of None as given)."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from kdstore.cli.main import cli

pytestmark = pytest.mark.slow  # subprocess-free, but builds a store


LEAKS = ("enforce fail", "inline_container", ".partial", "Traceback", "File exists", "Not a directory")


@pytest.fixture
def places(tmp_path):
    (tmp_path / "afile").write_text("x")
    os.symlink(tmp_path / "loopB", tmp_path / "loopA")
    os.symlink(tmp_path / "loopA", tmp_path / "loopB")
    return tmp_path


def _commands(store: str, under: str) -> dict[str, list[str]]:
    untrained = ["--dataset", "digits", "--allow-untrained", "--teacher", "cifar_resnet8"]
    return {
        "cache": ["cache", *untrained, "--out", f"{under}/s"],
        "train": ["train", "--store", store, "--out", f"{under}/run"],
        "teacher": ["teacher", "--model", "cifar_resnet8", "--dataset", "digits", "--out", f"{under}/t"],
        "sweep": ["sweep", "--store", store, "--out", f"{under}/sw"],
        "merge": ["merge", store, store, "--out", f"{under}/m"],
        "bench": ["bench", "--store", store, "--json", f"{under}/b.json"],
        "eval": ["eval", f"{store}/none.pt", "--dataset", "digits", "--json", f"{under}/e.json"],
    }


@pytest.mark.parametrize("command", list(_commands("s", "u")))
@pytest.mark.parametrize("under", ["afile", "loopA"])
def test_an_output_under_a_file_or_a_symlink_loop_is_named_as_typed(command, under, places, small_store):
    args = _commands(str(small_store), str(places / under))[command]
    result = CliRunner().invoke(cli, args)
    said = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(said) == 1, result.output
    option = next(a for a in args if a in ("--out", "--json"))
    given = args[args.index(option) + 1]
    assert said[0].startswith(f"error: {option} {given}"), said
    assert ("is a file, not a directory" if under == "afile" else "symlink loop") in said[0], said
    assert not [leak for leak in LEAKS if leak in said[0]], said


@pytest.mark.parametrize("args,missing", [(["teacher", "--dataset", "digits"], "--model"), (["bench"], "--store")])
def test_a_required_option_is_required(args, missing):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and f"Missing option '{missing}'" in result.output, result.output
