"""`selfheal events`, `queue` and `incidents`: the self-healing plane through the socket."""

from __future__ import annotations

import getpass
import json
import time
from typing import Any

import click

from selfheal.cli.context import EXIT_CONFIG, CliState
from selfheal.cli.output import emit_json, fail, table
from selfheal.control.params import MAX_ROWS
from selfheal.core.limits import SLEEP_LIMIT_MS

pass_state = click.make_pass_decorator(CliState)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _when(ms: int | None) -> str:
    if not ms:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


@click.group()
def events() -> None:
    """Publish events on the bus."""


@events.command("send")
@click.argument("name")
@click.option(
    "--data",
    "data_text",
    required=True,
    help='Event data as a JSON object (`--data "{}"` for none).',
)
@click.option("--idempotency-key", help="Publish at most once per key.")
@click.option("--force", is_flag=True, help="Send it even if nothing consumes that event.")
@click.option(
    "--delay-ms", type=click.IntRange(0, SLEEP_LIMIT_MS), default=0, help="Deliver later."
)
@json_option
@pass_state
def send(
    state: CliState,
    name: str,
    data_text: str,
    idempotency_key: str | None,
    delay_ms: int,
    force: bool,
    as_json: bool,
) -> None:
    """Publish event NAME (e.g. system/self.healing.requested).

    \b
    Example: selfheal events send system/backup.requested --data '{"target": "redis"}'
    """
    try:
        data = json.loads(data_text)
    except json.JSONDecodeError as exc:
        fail(f"--data is not JSON: {exc}", EXIT_CONFIG)
    except RecursionError:
        fail("--data is nested too deeply", EXIT_CONFIG)
    if not isinstance(data, dict):
        fail("--data must be a JSON object", EXIT_CONFIG)
    params: dict[str, Any] = {"name": name, "data": data, "delayMs": delay_ms, "force": force}
    if idempotency_key:
        params["idempotencyKey"] = idempotency_key
    result = state.call("events.send", params)
    if as_json:
        emit_json(result)
    elif result.get("deduplicated"):
        click.echo(f"not sent: idempotency key {idempotency_key!r} was already published")
    elif "scheduledInMs" in result:
        click.echo(f"scheduled {result['name']} {result['id']} in {result['scheduledInMs']} ms")
    else:
        click.echo(f"published {result['name']} {result['id']} ({result['entryId']})")


@events.command("list")
@json_option
@pass_state
def list_events(state: CliState, as_json: bool) -> None:
    """The events on the bus and the consumer groups that read each.

    \b
    Example: selfheal events list
    """
    result = state.call("queue.stats")
    known = [
        {"event": s["event"], "groups": [g["group"] for g in s["groups"]], "length": s["length"]}
        for s in result["streams"]
    ]
    if as_json:
        emit_json({"events": known})
        return
    rows = [
        [k["event"], ", ".join(k["groups"]) or "(nothing consumes it)", k["length"]] for k in known
    ]
    click.echo(table(["event", "consumed by", "length"], rows))


@click.group()
def queue() -> None:
    """Inspect the durable queue."""


@queue.command("stats")
@json_option
@pass_state
def stats(state: CliState, as_json: bool) -> None:
    """Stream lengths, pending entries, lag, dead letters and timers.

    \b
    Example: selfheal queue stats --json
    """
    result = state.call("queue.stats")
    if as_json:
        emit_json(result)
        return
    rows = []
    for stream in result["streams"]:
        groups = stream["groups"] or [{"group": "-", "pending": 0, "lag": None, "consumers": 0}]
        for g in groups:
            lag = "-" if g["lag"] is None else g["lag"]
            rows.append([stream["event"], stream["length"], g["group"], g["pending"], lag])
    click.echo(table(["event", "length", "group", "pending", "lag"], rows))
    timers = result["timers"]
    click.echo(
        f"\ndead letters {result['deadLetters']}  timers scheduled {timers['scheduled']}"
        f" (due {timers['due']})  namespace {result['namespace']}"
    )


@queue.command("dead")
@click.option("--count", type=click.IntRange(1, MAX_ROWS), default=20, show_default=True)
@click.option(
    "--requeue",
    "requeue_id",
    metavar="ID",
    help="Put dead letter ID back on its stream (after a fix); the group that failed "
    "handles it again, others skip it as done.",
)
@json_option
@pass_state
def dead(state: CliState, count: int, requeue_id: str | None, as_json: bool) -> None:
    """The newest dead letters, with the reason each was set aside.

    \b
    Example: selfheal queue dead --requeue 1764820000000-0
    """
    if requeue_id is not None:
        done = state.call("queue.requeue", {"id": requeue_id})
        if as_json:
            emit_json(done)
        else:
            click.echo(f"requeued {done['deadLetter']} as {done['entryId']} on {done['stream']}")
        return
    result = state.call("queue.dead", {"count": count})
    if as_json:
        emit_json(result)
        return
    rows = [
        [d["id"], d.get("event", "?"), d.get("group", "?"), d.get("deliveries", "?"), d["reason"]]
        for d in result["deadLetters"]
    ]
    click.echo(table(["id", "event", "group", "deliveries", "reason"], rows))


@click.group()
def incidents() -> None:
    """The incidents behind every retry budget, and the manual-intervention queue."""


@incidents.command("list")
@click.option(
    "--state",
    "incident_state",
    type=click.Choice(["open", "scheduled", "paused", "escalated", "remediated"]),
    help="Only incidents in this state.",
)
@click.option("--limit", type=click.IntRange(1, MAX_ROWS), default=50, show_default=True)
@json_option
@pass_state
def list_cmd(state: CliState, incident_state: str | None, limit: int, as_json: bool) -> None:
    """Incidents, most recently updated first.

    \b
    Example: selfheal incidents list --state escalated
    """
    params: dict[str, Any] = {"limit": limit}
    if incident_state:
        params["state"] = incident_state
    result = state.call("incidents.list", params)
    if as_json:
        emit_json(result)
        return
    rows = [
        [
            i["incidentId"],
            i["state"] + (" (acked)" if i.get("acked") else ""),
            i["retriesUsed"],
            i["lastClass"] or "-",
            _when(i["updatedMs"]),
            i["lastReason"] or "",
        ]
        for i in result["incidents"]
    ]
    click.echo(table(["incident", "state", "retries", "class", "updated", "reason"], rows))


@incidents.command("show")
@click.argument("incident_id")
@json_option
@pass_state
def show(state: CliState, incident_id: str, as_json: bool) -> None:
    """One incident: budget, history, last decision, manual-queue entries.

    \b
    Example: selfheal incidents show backup:redis:nas-backup
    """
    result = state.call("incidents.show", {"id": incident_id})
    if as_json:
        emit_json(result)
        return
    click.echo(
        f"{result['incidentId']}  {result['state']}  domain {result['domain']}  "
        f"target {result['targetComponent']}\n"
        f"retries used {result['retriesUsed']}  pauses {result['pauses']}  "
        f"operator resets {result['operatorResets']}  deadline {_when(result['deadlineMs'])}"
    )
    if result.get("acked"):
        acked = result["acked"]
        note = f": {acked['note']}" if acked.get("note") else ""
        click.echo(f"acknowledged by {acked['by']} at {_when(acked['atMs'])}{note}")
    decision = result.get("lastDecision")
    if decision:
        click.echo(
            f"last decision: {decision.get('action')} ({decision.get('failureClass')}, "
            f"rule {decision.get('rule')}): {decision.get('reason')}"
        )
    request = result.get("request") or {}
    if request.get("problemSummary"):
        click.echo(f"problem: {request['problemSummary']}")
    playbook = request.get("playbook") or {}
    for label, key in (("runbook", "runbook"), ("links", "links"), ("actions", "actions")):
        value = playbook.get(key)
        if value:
            click.echo(f"{label}: {value if isinstance(value, str) else ', '.join(value)}")
    for entry in result.get("manualQueue") or []:
        click.echo(f"waiting for an operator since {_when(int(entry.get('atMs', 0)))}")
    rows = [[_when(t["atMs"]), t["event"], t["detail"]] for t in result.get("timeline", [])]
    click.echo("\ntimeline\n" + table(["at", "event", "detail"], rows))


@incidents.command("ack")
@click.argument("incident_id")
@click.option("--by", default=getpass.getuser, show_default="current user")
@click.option("--note", default="", help="Why, for the record.")
@json_option
@pass_state
def ack(state: CliState, incident_id: str, by: str, note: str, as_json: bool) -> None:
    """Acknowledge an escalated incident (it stays escalated).

    \b
    Example: selfheal incidents ack backup:redis:nas-backup --note 'NAS fan replaced'
    """
    result = state.call("incidents.ack", {"id": incident_id, "by": by, "note": note})
    if as_json:
        emit_json(result)
    else:
        click.echo(f"acknowledged {incident_id} as {by}")


@incidents.command("retry")
@click.argument("incident_id")
@click.option("--by", default=getpass.getuser, show_default="current user")
@click.option(
    "--reroute",
    is_flag=True,
    help="Send the last request to the router again instead of running the work now.",
)
@json_option
@pass_state
def retry(state: CliState, incident_id: str, by: str, reroute: bool, as_json: bool) -> None:
    """Give the incident a fresh retry budget and run the failed work again now (for a
    backup incident: the backup), recorded in its timeline.

    \b
    Example: selfheal incidents retry backup:redis:nas-backup --by alice
    """
    params = {"id": incident_id, "by": by, "reroute": reroute}
    result = state.call("incidents.retry", params)
    if as_json:
        emit_json(result)
    elif result["mode"] == "rerun":
        click.echo(f"budget reset by {by}; ran again as {result['event']} ({result['eventId']})")
    else:
        click.echo(f"budget reset by {by}; request routed again as {result['eventId']}")
