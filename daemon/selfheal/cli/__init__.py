"""The `selfheal` command line: the daemon itself and a client of its control socket."""

from __future__ import annotations

import os
from pathlib import Path

import click

from selfheal import __version__
from selfheal.cli.backup_cmds import backup
from selfheal.cli.completion_cmds import completion
from selfheal.cli.config_cmds import nas
from selfheal.cli.context import CliState
from selfheal.cli.daemon_cmds import reload_cmd, run, status
from selfheal.cli.doctor_cmds import doctor
from selfheal.cli.healing_cmds import events, incidents, queue
from selfheal.cli.service_cmds import launchd, systemd
from selfheal.cli.watchdog_cmds import watchdog
from selfheal.logs import setup_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
    """Self-healing NAS backup orchestrator."""
    ctx.obj = CliState(config_path=config_path, socket_path=socket_path, env=dict(os.environ))


cli.add_command(run)
cli.add_command(status)
cli.add_command(reload_cmd)
cli.add_command(nas)
cli.add_command(events)
cli.add_command(queue)
cli.add_command(incidents)
cli.add_command(backup)
cli.add_command(watchdog)
cli.add_command(launchd)
cli.add_command(systemd)
cli.add_command(doctor)
cli.add_command(completion)


def main() -> None:
    """Console-script entry point."""
    setup_logging(os.environ)
    cli(prog_name="selfheal")
