"""Every command explains itself: --help with an example, --json for scripts."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from selfheal.cli import COMMANDS, cli


def leaves(group: click.Group, path: list[str]) -> list[tuple[list[str], click.Command]]:
    ctx = click.Context(group)
    found: list[tuple[list[str], click.Command]] = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        if isinstance(command, click.Group):
            found += leaves(command, [*path, name])
        else:
            found.append(([*path, name], command))
    return found


ALL = leaves(cli, [])


def test_the_lazy_table_lists_every_command_and_each_loads() -> None:
    assert [path[0] for path, _ in ALL if len(path) == 1] == [
        name
        for name in COMMANDS
        if not isinstance(cli.get_command(click.Context(cli), name), click.Group)
    ]
    assert len(ALL) >= 30


@pytest.mark.parametrize("path", [p for p, _ in ALL], ids=[" ".join(p) for p, _ in ALL])
def test_help_has_an_example(path: list[str]) -> None:
    shown = CliRunner().invoke(cli, [*path, "--help"])
    assert shown.exit_code == 0, shown.output
    examples = [line for line in shown.output.splitlines() if "Example" in line]
    # Each example runs this command (after any global option such as --config).
    assert examples and all(" ".join(path) in line for line in examples)
    assert all(": selfheal " in line for line in examples)


@pytest.mark.parametrize(
    "path", [p for p, c in ALL if p != ["run"]], ids=[" ".join(p) for p, c in ALL if p != ["run"]]
)
def test_every_command_but_the_daemon_has_json(path: list[str]) -> None:
    command = dict((" ".join(p), c) for p, c in ALL)[" ".join(path)]
    assert "--json" in [opt for param in command.params for opt in param.opts]


def test_an_unknown_command_is_refused_with_the_list() -> None:
    refused = CliRunner().invoke(cli, ["stauts"])
    assert refused.exit_code == 2 and "No such command 'stauts'" in refused.output
