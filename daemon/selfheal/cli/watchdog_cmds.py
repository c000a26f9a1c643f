"""`selfheal watchdog`: the worker watchdog through the socket."""

from __future__ import annotations

from typing import Any

import click

from selfheal.cli.context import EXIT_DAEMON_ERROR, CliState
from selfheal.cli.output import ago, emit_json, table

pass_state = click.make_pass_decorator(CliState)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@click.group()
def watchdog() -> None:
    """Probe workers and restart them, guarded."""


@watchdog.command("status")
@json_option
@pass_state
def status(state: CliState, as_json: bool) -> None:
    """Each worker: last probes, failures in a row, last restart, cooldown, restarts in window.

    \b
    Example: selfheal watchdog status --json
    """
    result = state.call("watchdog.status")
    if as_json:
        emit_json(result)
        return
    click.echo(f"watchdog {'on' if result['enabled'] else 'off (watchdog.enabled is false)'}")
    rows = []
    for worker in result["workers"]:
        probes = worker["probes"]
        last = probes[-1] if probes else None
        restart = worker["last_restart"]
        rows.append(
            [
                worker["name"],
                ("ok" if last["ok"] else "FAIL") + f" {last['detail']} ({ago(last['at'])})"
                if last
                else "-",
                f"{worker['consecutive_failures']}/{worker['failure_threshold']}",
                f"{restart['outcome']} {ago(restart['at'])}: {restart['detail']}"
                if restart
                else "-",
                "-"
                if not worker["cooldown_left_seconds"]
                else f"{worker['cooldown_left_seconds']:.0f}s",
                f"{worker['restarts_in_window']}/{worker['max_restarts_per_window']}",
            ]
        )
    headers = ["worker", "last probe", "failing", "last restart", "cooldown", "restarts"]
    click.echo(table(headers, rows))


def _print_restart(result: dict[str, Any]) -> None:
    click.echo(f"{result['outcome']}: {result['detail']}")
    if result.get("action"):
        click.echo(f"action: {result['action']}")


@watchdog.command("restart")
@click.argument("name")
@click.option("--force", is_flag=True, help="Restart inside the cooldown (other guards apply).")
@json_option
@pass_state
def restart(state: CliState, name: str, force: bool, as_json: bool) -> None:
    """Restart worker NAME now through its service manager, with the guards.

    \b
    Example: selfheal watchdog restart system-bus-worker --force
    """
    result = state.call("watchdog.restart", {"name": name, "force": force}, timeout=3900)
    if as_json:
        emit_json(result)
    else:
        _print_restart(result)
    if result["outcome"] != "remediated":
        raise SystemExit(EXIT_DAEMON_ERROR)


@watchdog.command("investigate")
@click.argument("name")
@json_option
@pass_state
def investigate(state: CliState, name: str, as_json: bool) -> None:
    """Probe worker NAME and read its logs now (a failing worker is reported).

    \b
    Example: selfheal watchdog investigate system-bus-worker
    """
    result = state.call("watchdog.investigate", {"name": name}, timeout=180)
    if as_json:
        emit_json(result)
        return
    probe = result["probe"]
    click.echo(
        f"{name}: probe {'ok' if probe['ok'] else 'FAILED'} ({probe['detail']}, "
        f"{probe['ms']} ms); {result['consecutive_failures']} failing in a row"
    )
    for line in result["log_matches"]:
        click.echo(f"  log: {line}")
    if result["requested"]:
        click.echo("self-healing requested")
    elif result["failing"]:
        click.echo("failing; self-healing was already requested for this failure")
