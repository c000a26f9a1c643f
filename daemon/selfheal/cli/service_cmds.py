"""`selfheal launchd` and `selfheal systemd`: install the daemon as a service."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from selfheal import service_install as si
from selfheal.cli.context import CliState
from selfheal.cli.output import emit_json, fail

pass_state = click.make_pass_decorator(CliState)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
dry_run_option = click.option(
    "--dry-run", is_flag=True, help="Print the job file and the commands; change nothing."
)
config_option = click.option(
    "--config",
    "config_override",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Config the service runs with (default: the global --config, $SELFHEAL_CONFIG, "
    "or ~/.joelclaw/system-bus.config.json).",
)


def _home(state: CliState) -> Path:
    return Path(state.env.get("HOME") or Path.home())


def _config(state: CliState, override: Path | None) -> tuple[Path, float]:
    """The absolute config path the service will use, and its drain deadline; an
    invalid config is refused here rather than at the service's first start."""
    if override is not None:
        state = CliState(override, state.socket_path, state.env)
    loaded = state.load()
    if not loaded.exists:
        click.echo(
            f"selfheal: note: {loaded.path} does not exist; the service starts on defaults",
            err=True,
        )
    return Path(os.path.abspath(loaded.path)), loaded.settings.drain_timeout_seconds


def _print(report: si.Report, *, dry_run: bool, as_json: bool, verb: str) -> None:
    if as_json:
        emit_json({**report.public(), "dry_run": dry_run, "content": report.content})
        return
    if dry_run:
        click.echo(f"# {report.path}")
        click.echo(report.content)
        for command in report.commands:
            click.echo("would run: " + " ".join(command))
        return
    for command in report.commands:
        click.echo("ran: " + " ".join(command))
    for note in report.notes:
        click.echo(note)
    click.echo(f"{verb} {report.path}")


def _job_lines(job: Any, path: Path) -> list[str]:
    if not job.loaded:
        return [f"not loaded ({path} {'exists' if path.exists() else 'is not there'})"]
    bound = si.bound_to_this_install(job)
    return [
        f"loaded, {job.state or 'state unknown'}" + (f", pid {job.pid}" if job.pid else ""),
        f"program {job.program}"
        + ("" if bound else f" (NOT this install: {si.python_executable()})"),
    ]


def _guard(action: Any) -> Any:
    try:
        return action()
    except si.InstallError as exc:
        fail(str(exc), 1)


@click.group()
def launchd() -> None:
    """Install the daemon as a launchd agent (macOS)."""


@launchd.command("install")
@config_option
@dry_run_option
@json_option
@pass_state
def launchd_install(
    state: CliState, config_override: Path | None, dry_run: bool, as_json: bool
) -> None:
    """Write ~/Library/LaunchAgents/com.joelclaw.selfheal.plist, check it, load it.

    \b
    Example: selfheal launchd install --dry-run
    """
    config, drain = _config(state, config_override)
    report = _guard(
        lambda: si.install_launchd(
            config=config, home=_home(state), drain_timeout_s=drain, dry_run=dry_run
        )
    )
    _print(report, dry_run=dry_run, as_json=as_json, verb="installed and loaded")


@launchd.command("uninstall")
@json_option
@pass_state
def launchd_uninstall(state: CliState, as_json: bool) -> None:
    """Unload the agent and remove its plist.

    \b
    Example: selfheal launchd uninstall
    """
    report = _guard(lambda: si.uninstall_launchd(home=_home(state)))
    _print(report, dry_run=False, as_json=as_json, verb="uninstalled")


@launchd.command("status")
@json_option
@pass_state
def launchd_status(state: CliState, as_json: bool) -> None:
    """The agent's state as `launchctl print` shows it.

    \b
    Example: selfheal launchd status
    """
    job = _guard(si.launchd_job)
    path, _ = si.launchd_paths(_home(state))
    if as_json:
        emit_json({**job.public(), "plist": str(path), "bound": si.bound_to_this_install(job)})
        return
    click.echo("\n".join(_job_lines(job, path)))


@click.group()
def systemd() -> None:
    """Install the daemon as a systemd user unit (Linux)."""


@systemd.command("install")
@config_option
@dry_run_option
@json_option
@pass_state
def systemd_install(
    state: CliState, config_override: Path | None, dry_run: bool, as_json: bool
) -> None:
    """Write ~/.config/systemd/user/selfheal.service, enable and (re)start it.

    \b
    Example: selfheal systemd install --config ~/selfheal.json
    """
    config, drain = _config(state, config_override)
    report = _guard(
        lambda: si.install_systemd(
            config=config,
            home=_home(state),
            env=state.env,
            drain_timeout_s=drain,
            dry_run=dry_run,
        )
    )
    _print(report, dry_run=dry_run, as_json=as_json, verb="installed and started")


@systemd.command("uninstall")
@json_option
@pass_state
def systemd_uninstall(state: CliState, as_json: bool) -> None:
    """Stop and disable the unit, remove it.

    \b
    Example: selfheal systemd uninstall
    """
    report = _guard(lambda: si.uninstall_systemd(home=_home(state), env=state.env))
    _print(report, dry_run=False, as_json=as_json, verb="uninstalled")


@systemd.command("status")
@json_option
@pass_state
def systemd_status(state: CliState, as_json: bool) -> None:
    """The unit's state as `systemctl --user show` gives it.

    \b
    Example: selfheal systemd status --json
    """
    job = _guard(si.systemd_job)
    path = si.systemd_unit_path(state.env, _home(state))
    if as_json:
        emit_json({**job.public(), "unit": str(path), "bound": si.bound_to_this_install(job)})
        return
    click.echo("\n".join(_job_lines(job, path)))
