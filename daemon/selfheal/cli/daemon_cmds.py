"""`selfheal run`, `status` and `reload`."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from selfheal.cli.context import EXIT_CONFIG, EXIT_DEGRADED, CliState
from selfheal.cli.output import ago, due_in, emit_json, fail, format_value, human_size, span, table
from selfheal.logs import LOG_FORMATS, use_log_format

pass_state = click.make_pass_decorator(CliState)


@click.command()
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    help="text (one line per record) or json (one object per line); "
    "default $SELFHEAL_LOG_FORMAT, else text.",
)
@pass_state
def run(state: CliState, log_format: str | None) -> None:
    """Run the daemon in the foreground (what launchd/systemd start).

    \b
    Example: selfheal run --log-format json
    """
    from selfheal.daemon import run_daemon
    from selfheal.errors import ConfigError

    if log_format is not None:
        use_log_format(log_format)

    try:
        code = run_daemon(state.resolved_config_path(), state.env)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
        return
    sys.exit(code)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--watch", is_flag=True, help="Refresh in place until Ctrl-C (with --json: a line each)."
)
@click.option(
    "--interval",
    type=click.FloatRange(0.1, 3600),
    default=2.0,
    show_default=True,
    help="Seconds between refreshes with --watch.",
)
@click.option(
    "--count", type=click.IntRange(0), default=0, help="Stop after N refreshes (0: never)."
)
@click.option("-v", "--verbose", is_flag=True, help="List every service.")
@pass_state
def status(
    state: CliState, as_json: bool, watch: bool, interval: float, count: int, verbose: bool
) -> None:
    """Show the running daemon's state, backups, workers, services, Redis and last reload;
    exit 5 when degraded (--watch: live, with open incidents and the queue).

    \b
    Example: selfheal status --watch --interval 5
    """
    if not watch:
        result = state.call("status")
        if as_json:
            emit_json(result)
        else:
            click.echo(render_status(result, verbose=verbose))
        reasons = degraded(result)
        if reasons:
            if not as_json:
                click.echo(f"\nDEGRADED: {'; '.join(reasons)}")
            sys.exit(EXIT_DEGRADED)
        return
    live = sys.stdout.isatty() and not as_json
    shown = 0
    try:
        while True:
            view = {
                "status": state.call("status"),
                "queue": state.call("queue.stats"),
                "incidents": state.call("incidents.list", {"limit": 20})["incidents"],
            }
            if as_json:
                click.echo(json.dumps(view, default=str))
            else:
                if live:
                    click.clear()
                elif shown:
                    click.echo("")
                click.echo(render_live(view, interval, verbose))
            shown += 1
            if count and shown >= count:
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        return


@click.command("reload")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def reload_cmd(state: CliState, as_json: bool) -> None:
    """Ask the running daemon to reload its config file now.

    \b
    Example: selfheal reload
    """
    result = state.call("config.reload")
    if as_json:
        emit_json(result)
    elif result["ok"]:
        changed = "applied" if result["changed"] else "unchanged"
        click.echo(f"config reloaded: {changed}")
        if result.get("restarted"):
            click.echo(f"restarted: {', '.join(result['restarted'])}")
        if result.get("restart_required"):
            click.echo(f"needs a daemon restart: {', '.join(result['restart_required'])}")
    else:
        fail(
            f"config rejected, the last good config stays in force:\n{result['error']}", EXIT_CONFIG
        )


def render_live(view: dict[str, Any], interval: float, verbose: bool = False) -> str:
    """The `status --watch` screen: status, next and last backups, open incidents, queue."""
    lines = [render_status(view["status"], verbose=verbose), ""]
    open_incidents = [
        i for i in view["incidents"] if i["state"] not in ("remediated",) and not i.get("acked")
    ]
    lines.append(f"incidents   {len(open_incidents)} open")
    for incident in open_incidents[:10]:
        lines.append(
            f"  {incident['incidentId']}: {incident['state']}, {incident['retriesUsed']} "
            f"retries, {incident.get('lastReason') or ''}".rstrip()
        )
    queue = view["queue"]
    pending = sum(g["pending"] for st in queue["streams"] for g in st["groups"] or [])
    timers = queue["timers"]
    lines.append(
        f"queue       {pending} pending, {queue['deadLetters']} dead letters, "
        f"{timers['scheduled']} timers ({timers['due']} due)"
    )
    lines.append(f"\n(refreshing every {interval:g}s; Ctrl-C to stop)")
    return "\n".join(lines)


def shown_services(s: dict[str, Any]) -> list[dict[str, Any]]:
    """The services worth showing: not the runners of a target that is off, and not the
    embedded Redis's placeholder when the bus is an external Redis."""
    enabled = set((s.get("backups") or {}).get("next_runs") or {})
    external = (s.get("redis") or {}).get("mode") != "embedded"
    shown = []
    for service in s.get("services", []):
        name = str(service["name"])
        target = name.split(":")[1] if name.startswith("backup:") else None
        if target in ("typesense", "redis") and target not in enabled:
            continue
        if external and name == "embedded-redis":
            continue
        shown.append(service)
    return shown


def degraded(s: dict[str, Any]) -> list[str]:
    """Why the daemon is not healthy (empty when it is)."""
    reasons = []
    if not (s.get("redis") or {}).get("connected"):
        reasons.append("Redis is not connected")
    down = [x["name"] for x in shown_services(s) if x["state"] != "running"]
    if down:
        reasons.append(f"not running: {', '.join(down)}")
    reload = s.get("last_reload")
    if reload and not reload["ok"]:
        reasons.append("the last config edit was rejected")
    if not (s.get("config") or {}).get("present", True):
        reasons.append("the config file is missing")
    return reasons


def render_status(s: dict[str, Any], *, verbose: bool = False) -> str:
    """The human form of `status`."""
    redis = s.get("redis", {})
    embedded = redis.get("embedded")
    lines = [
        f"selfheal {s['version']}  pid {s['pid']}  state {s['state']}  "
        f"up {span(s['uptime_seconds'])}",
        f"config      {s['config']['path']} (generation {s['config']['generation']}"
        f"{'' if s['config']['exists'] else ', file missing: defaults'})",
    ]
    reload = s.get("last_reload")
    if reload:
        outcome = "ok" if reload["ok"] else f"REJECTED: {reload['error']}"
        lines.append(f"last reload {outcome} ({reload['trigger']}, {ago(reload['at'])})")
    lines.append(
        f"redis       {redis.get('mode')} {redis.get('target', '')} "
        f"{'connected' if redis.get('connected') else 'DISCONNECTED'}"
        + (f" to {redis['master']}" if redis.get("connected") and redis.get("master") else "")
        + (
            f" ({redis['last_error']})"
            if not redis.get("connected") and redis.get("last_error")
            else ""
        )
    )
    if embedded:
        lines.append(
            f"embedded    pid {format_value(embedded.get('pid'))}  {embedded.get('binary')}"
        )
    backups = s.get("backups") or {}
    next_runs, last_runs = backups.get("next_runs") or {}, backups.get("last_runs") or {}
    for target in sorted(set(next_runs) | set(last_runs)):
        run = last_runs.get(target)
        last = "no run yet"
        if run:
            last = str(run["status"])
            if run.get("bytes") is not None:
                last += f" {human_size(run['bytes'])} in {run.get('seconds', 0):.1f}s, verified"
            elif run.get("detail"):
                last += f" ({run['detail']})"
            if run.get("at"):
                last += f", {ago(run['at'])}"
        upcoming = f"; next {due_in(next_runs[target])}" if target in next_runs else "; off"
        lines.append(f"backup      {target}: {last}{upcoming}")
    watchdog = s.get("watchdog") or {}
    for worker in watchdog.get("workers", []) if watchdog.get("enabled") else []:
        probes = worker.get("probes") or []
        probe = probes[-1] if probes else None
        restart = worker.get("last_restart")
        lines.append(
            f"worker      {worker['name']}: "
            + (
                f"{'ok' if probe['ok'] else 'FAILING'} ({probe['detail']})"
                if probe
                else "not probed"
            )
            + f", {worker['consecutive_failures']} failing in a row"
            + (f", last restart {restart['outcome']} {ago(restart['at'])}" if restart else "")
        )
    tel = s.get("telemetry", {})
    lines.append(f"telemetry   {tel.get('exporter')} {tel.get('span_file') or ''}".rstrip())
    services = shown_services(s)
    running = [x for x in services if x["state"] == "running"]
    lines.append(f"services    {len(running)}/{len(services)} running")
    listed = services if verbose else [x for x in services if x["state"] != "running"]
    if listed:
        lines.append("")
        lines.append(
            table(
                ["service", "state", "restarts", "since", "last error"],
                [
                    [x["name"], x["state"], x["restarts"], ago(x["since"]), x["last_error"] or ""]
                    for x in listed
                ],
            )
        )
    return "\n".join(lines)
