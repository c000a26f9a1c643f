"""The `selfheal` command line: the daemon itself and a client of its control socket.

Each command's module is imported only when that command runs (or when help or
completion lists it), so a quick call such as `selfheal status` loads the socket
client and little else.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import click

from selfheal import __version__
from selfheal.cli.context import CliState
from selfheal.logs import setup_logging

# name -> "module:attribute" of each top-level command, in the order help lists them.
COMMANDS = {
    "run": "selfheal.cli.daemon_cmds:run",
    "status": "selfheal.cli.daemon_cmds:status",
    "reload": "selfheal.cli.daemon_cmds:reload_cmd",
    "backup": "selfheal.cli.backup_cmds:backup",
    "incidents": "selfheal.cli.healing_cmds:incidents",
    "queue": "selfheal.cli.healing_cmds:queue",
    "events": "selfheal.cli.healing_cmds:events",
    "watchdog": "selfheal.cli.watchdog_cmds:watchdog",
    "nas": "selfheal.cli.config_cmds:nas",
    "doctor": "selfheal.cli.doctor_cmds:doctor",
    "launchd": "selfheal.cli.service_cmds:launchd",
    "systemd": "selfheal.cli.service_cmds:systemd",
    "completion": "selfheal.cli.completion_cmds:completion",
}


class LazyGroup(click.Group):
    """A group whose commands are imported when first looked up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attribute = target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):  # pragma: no cover - a wiring mistake
            raise TypeError(f"{target} is not a click command")
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="selfheal")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Config file (default: $SELFHEAL_CONFIG or ~/.joelclaw/system-bus.config.json).",
)
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Control socket of a running daemon (default: from the config).",
)
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, socket_path: Path | None) -> None:
    """Self-healing NAS backup orchestrator.

    \b
    Examples:
      selfheal run                 the daemon, in the foreground
      selfheal status --watch      a live view of the running daemon
      selfheal doctor              check every dependency and say how to fix it
    """
    ctx.obj = CliState(config_path=config_path, socket_path=socket_path, env=dict(os.environ))


def main() -> None:
    """Console-script entry point."""
    setup_logging(os.environ)
    cli(prog_name="selfheal")
