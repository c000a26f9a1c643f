"""`selfheal completion bash|zsh|fish`: the shell completion script, through click's own."""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

from selfheal.cli.output import emit_json

PROG = "selfheal"
COMPLETE_VAR = "_SELFHEAL_COMPLETE"


@click.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
@click.option("--json", "as_json", is_flag=True, help='{"shell", "script"} instead of the script.')
@click.pass_context
def completion(ctx: click.Context, shell: str, as_json: bool) -> None:
    """Print the completion script for SHELL.

    \b
    Example (bash): selfheal completion bash > ~/.local/share/bash-completion/completions/selfheal
    Example (zsh): selfheal completion zsh > "${fpath[1]}/_selfheal"
    Example (fish): selfheal completion fish > ~/.config/fish/completions/selfheal.fish
    """
    root = ctx.find_root().command
    complete = get_completion_class(shell)
    assert complete is not None  # the three choices are click's own
    script = complete(root, {}, PROG, COMPLETE_VAR).source()
    if as_json:
        emit_json({"shell": shell, "script": script})
    else:
        click.echo(script)
