"""Every control method's params through the real daemon: checked, and refused by name."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from selfheal.cli import cli
from selfheal.control.params import MAX_ROWS
from selfheal.control.protocol import MAX_REQUEST_DEPTH
from selfheal.core.events import DATA_DEPTH_LIMIT, EVENT_DATA_LIMIT
from selfheal.core.limits import SLEEP_LIMIT_MS
from selfheal.errors import ControlError
from tests.support.daemon import DaemonProcess, Daemons

pytestmark = pytest.mark.slow

EVENT = "test/params.checked"
STREAM = "{selfheal}:stream:" + EVENT
STATES = "open, scheduled, paused, escalated, remediated"


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    """One daemon for every case here: none of them changes anything."""
    home = Path(tempfile.mkdtemp(prefix="sh-", dir="/tmp"))
    daemons = Daemons(home)
    try:
        yield daemons.start()
    finally:
        daemons.kill_all()
        shutil.rmtree(home, ignore_errors=True)


def refusal(daemon: DaemonProcess, method: str, params: dict[str, Any]) -> ControlError:
    with pytest.raises(ControlError) as caught:
        daemon.call(method, params)
    return caught.value


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


def ints(name: str, low: int, high: int) -> list[tuple[Any, str]]:
    rule = f"{name} must be an integer between {low} and {high}"
    return [
        ("abc", f'{rule} (got "abc")'),
        (1e300, f"{rule} (got 1e+300)"),
        (1e23, f"{rule} (got 1e+23)"),
        (-5, f"{rule} (got -5)"),
        ([1], f"{rule} (got [1])"),
        (True, f"{rule} (got true)"),
        (5.0, f"{rule} (got 5.0)"),
        (low - 1, f"{rule} (got {low - 1})"),
        (high + 1, f"{rule} (got {high + 1})"),
        (10**23, f"{rule} (got {10**23})"),
    ]


ID_RULE = "id must be an incident id (letters, digits, '_', '.', ':' or '-') of at most 128"
CASES: list[tuple[str, dict[str, Any], str]] = [
    *[("incidents.list", {"limit": v}, m) for v, m in ints("limit", 1, MAX_ROWS)],
    ("incidents.list", {"state": "bogus"}, f'state must be one of {STATES} (got "bogus")'),
    ("incidents.list", {"state": 5}, f"state must be one of {STATES} (got 5)"),
    *[("queue.dead", {"count": v}, m) for v, m in ints("count", 1, MAX_ROWS)],
    *[
        ("events.send", {"name": EVENT, "delayMs": v}, m)
        for v, m in ints("delayMs", 0, SLEEP_LIMIT_MS)
    ],
    ("events.send", {}, "name is required: it must be an event name"),
    ("events.send", {"name": "NoSlash"}, "name must be an event name (domain/name in lower"),
    ("events.send", {"name": "a/" + "b" * 199}, "name must be an event name"),
    ("events.send", {"name": EVENT, "data": [1]}, "data must be a JSON object (got [1])"),
    ("events.send", {"name": EVENT, "idempotencyKey": ""}, "idempotencyKey must be a string"),
    ("events.send", {"name": EVENT, "idempotencyKey": "k" * 257}, "idempotencyKey must be"),
    ("events.send", {"name": EVENT, "idempotencyKey": 7}, "idempotencyKey must be a string"),
    ("incidents.show", {}, "id is required: it must be an incident id"),
    ("incidents.show", {"id": 5}, f"{ID_RULE} characters (got 5)"),
    ("incidents.show", {"id": "a b"}, f'{ID_RULE} characters (got "a b")'),
    ("incidents.show", {"id": "i" * 129}, ID_RULE),
    ("incidents.ack", {"id": "x"}, "by is required: it must be a string of at most 256"),
    ("incidents.ack", {"id": "x", "by": " "}, "by must be a string of at most 256 characters"),
    ("incidents.ack", {"id": "x", "by": "ops", "note": 5}, "note must be a string of 0 to 500"),
    ("incidents.ack", {"id": "x", "by": "ops", "note": "n" * 501}, "note must be a string"),
    ("incidents.retry", {"id": "x", "by": ["ops"]}, "by must be a string of at most 256"),
    ("backup.run", {"target": "mysql"}, 'target must be one of typesense, redis (got "mysql")'),
    ("backup.run", {}, "target is required: it must be one of typesense, redis"),
    ("backup.run", {"target": "redis", "follow": "yes"}, "follow must be true or false"),
    ("backup.list", {"target": 5}, "target must be one of typesense, redis (got 5)"),
    ("backup.verify", {"artifact": 5}, "artifact must be a file name of at most 255"),
    ("backup.verify", {"artifact": "x" * 256}, "artifact must be a file name of at most 255"),
    ("backup.verify", {"artifact": "notes.txt"}, "artifact 'notes.txt' is not one of our"),
    ("backup.retention", {"target": "redis", "dryRun": "false"}, "dryRun must be true or false"),
    ("config.show", {"effective": "false"}, 'effective must be true or false (got "false")'),
]


@pytest.mark.parametrize(("method", "params", "message"), CASES)
def test_a_bad_param_is_refused_by_name(
    daemon: DaemonProcess, method: str, params: dict[str, Any], message: str
) -> None:
    error = refusal(daemon, method, params)
    assert (error.code, error.message[: len(message)]) == ("invalid_params", message)


def test_events_past_the_data_limits_are_refused_at_admission(daemon: DaemonProcess) -> None:
    bus = redis.Redis(unix_socket_path=str(daemon.state_dir / "redis" / "redis.sock"))
    # The case reported: a context 300 deep, refused naming it and the limit.
    deep = refusal(daemon, "events.send", {"name": EVENT, "data": {"context": nested(300)}})
    assert (deep.code, deep.message) == (
        "invalid_params",
        f"invalid event: data: member 'context' is nested too deeply (max {DATA_DEPTH_LIMIT}"
        " levels)",
    )
    # Deeper than a request line may nest at all: refused before it is parsed.
    deeper = refusal(daemon, "events.send", {"name": EVENT, "data": {"context": nested(600)}})
    assert (deeper.code, deeper.message) == (
        "bad_request",
        f"request is nested too deeply (max {MAX_REQUEST_DEPTH} levels)",
    )
    large = refusal(daemon, "events.send", {"name": EVENT, "data": {"x": "y" * EVENT_DATA_LIMIT}})
    assert large.code == "invalid_params"
    assert large.message == (
        f"invalid event: data: {EVENT_DATA_LIMIT + 8} characters of JSON, more than the"
        f" {EVENT_DATA_LIMIT} allowed"
    )
    assert bus.xlen(STREAM) == 0 and bus.zcard("{selfheal}:timers") == 0, "nothing was stored"
    # At the limits, it is published (or scheduled, at the longest delay).
    fits = {"context": nested(DATA_DEPTH_LIMIT - 1), "x": "y" * 1000}
    sent = daemon.call("events.send", {"name": EVENT, "data": fits, "force": True})
    assert sent["entryId"] and bus.xlen(STREAM) == 1
    later = daemon.call(
        "events.send", {"name": EVENT, "data": {}, "delayMs": SLEEP_LIMIT_MS, "force": True}
    )
    assert later["scheduledInMs"] == SLEEP_LIMIT_MS
    assert daemon.call("ping")["pong"] is True


def test_the_cli_bounds_what_it_sends_as_the_daemon_does(daemon: DaemonProcess) -> None:
    runner = CliRunner()
    too_late = runner.invoke(
        cli,
        ["events", "send", EVENT, "--data", "{}", "--delay-ms", str(SLEEP_LIMIT_MS + 1)],
        env=daemon.env(),
    )
    assert too_late.exit_code == 2 and "--delay-ms" in too_late.output
    no_data = runner.invoke(cli, ["events", "send", EVENT], env=daemon.env())
    assert no_data.exit_code == 2 and "Missing option '--data'" in no_data.output
    unread = runner.invoke(cli, ["events", "send", EVENT, "--data", "{}"], env=daemon.env())
    assert unread.exit_code == 4 and "nothing consumes test/params.checked" in unread.output
    forced = runner.invoke(
        cli, ["events", "send", EVENT, "--data", "{}", "--force"], env=daemon.env()
    )
    assert forced.exit_code == 0, forced.output
    known = runner.invoke(cli, ["events", "list"], env=daemon.env())
    assert "system/self.healing.requested" in known.output
    assert "system/self.healing.router" in known.output and "(nothing consumes it)" in known.output
    deep = runner.invoke(
        cli, ["events", "send", EVENT, "--data", "[" * 5000 + "]" * 5000], env=daemon.env()
    )
    assert deep.exit_code == 2 and "--data is nested too deeply" in deep.output
    listed = runner.invoke(cli, ["incidents", "list", "--limit", "1001"], env=daemon.env())
    assert listed.exit_code == 2 and "--limit" in listed.output
    shown = runner.invoke(cli, ["incidents", "list", "--json"], env=daemon.env())
    assert shown.exit_code == 0 and json.loads(shown.output) == {"incidents": []}
