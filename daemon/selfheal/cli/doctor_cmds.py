"""`selfheal doctor`: check the set-up, with the fix for each problem."""

from __future__ import annotations

import anyio
import click

from selfheal.cli.context import CliState
from selfheal.cli.output import emit_json
from selfheal.config import load_config
from selfheal.errors import ConfigError

pass_state = click.make_pass_decorator(CliState)

MARKS = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--send-test", is_flag=True, help="Send a test notification through each notifier.")
@pass_state
def doctor(state: CliState, as_json: bool, send_test: bool) -> None:
    """Check config, Redis, Typesense, the NAS (mount and SSH), space, schedules,
    notifiers, watched workers and the service job; exit 1 on any failure.

    \b
    Example: selfheal doctor --send-test
    """
    from selfheal import doctor as checks_module

    path = state.resolved_config_path()
    try:
        loaded = load_config(path, state.env)
    except ConfigError as exc:
        found = [checks_module.fail("config", str(exc), "fix the key the message names")]
    else:
        found = anyio.run(lambda: checks_module.run_checks(loaded, state.env, send_test=send_test))
    if as_json:
        emit_json(
            {"ok": all(c.status != "fail" for c in found), "checks": checks_module.report(found)}
        )
    else:
        width = max(len(c.name) for c in found)
        for check in found:
            click.echo(f"{MARKS[check.status]}  {check.name:{width}}  {check.detail}")
            if check.fix and check.status != "ok":
                click.echo(f"      {'':{width}}  fix: {check.fix}")
        fails = sum(c.status == "fail" for c in found)
        warns = sum(c.status == "warn" for c in found)
        click.echo(f"\n{len(found)} checks: {fails} failed, {warns} warnings")
    if any(c.status == "fail" for c in found):
        raise SystemExit(1)
