"""`selfheal completion SHELL` prints click's script, and completion answers."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from selfheal.cli import cli


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_each_shell_gets_a_script_that_calls_back_selfheal(shell: str) -> None:
    result = CliRunner().invoke(cli, ["completion", shell])
    assert result.exit_code == 0, result.output
    assert "_SELFHEAL_COMPLETE" in result.output and "selfheal" in result.output


def test_completion_offers_the_commands_and_refuses_unknown_shells() -> None:
    env = {"COMP_WORDS": "selfheal wat", "COMP_CWORD": "1", "_SELFHEAL_COMPLETE": "bash_complete"}
    offered = CliRunner().invoke(cli, [], env=env, prog_name="selfheal")
    assert "plain,watchdog" in offered.output.splitlines()
    assert CliRunner().invoke(cli, ["completion", "tcsh"]).exit_code == 2


def test_the_script_is_also_given_as_json() -> None:
    import json

    result = CliRunner().invoke(cli, ["completion", "zsh", "--json"])
    found = json.loads(result.output)
    assert found["shell"] == "zsh" and "_SELFHEAL_COMPLETE" in found["script"]
