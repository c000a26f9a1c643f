"""A delayed event survives a daemon restart (embedded Redis with AOF) and fires once."""

from __future__ import annotations

import json
import time

import pytest
import redis
from click.testing import CliRunner

from selfheal.cli import cli
from tests.support.daemon import Daemons
from tests.support.servers import wait_until

pytestmark = pytest.mark.slow

STREAM = "{selfheal}:stream:test/timer.fired"


def test_timer_scheduled_before_a_restart_fires_once_after_it(daemon_factory: Daemons) -> None:
    daemon = daemon_factory.start()
    sent = CliRunner().invoke(
        cli,
        [
            "events",
            "send",
            "test/timer.fired",
            "--data",
            '{"n": 1}',
            "--delay-ms",
            "4000",
            "--force",  # nothing consumes test/timer.fired: only its stream is read here
            "--json",
        ],
        env=daemon.env(),
    )
    assert sent.exit_code == 0, sent.output
    event_id = json.loads(sent.output)["id"]
    scheduled_at = time.monotonic()
    assert daemon.stop() == 0  # the timer is only in Redis now

    again = daemon_factory.start()
    bus = redis.Redis(unix_socket_path=str(again.state_dir / "redis" / "redis.sock"))
    wait_until(lambda: bus.xlen(STREAM) >= 1, 20, "the timer to fire after the restart")
    assert time.monotonic() - scheduled_at >= 3.5, "not before it was due"
    time.sleep(1.5)  # a second firing would have happened by now (the pump checks each 1 s)
    entries = bus.xrange(STREAM)
    assert len(entries) == 1
    assert entries[0][1][b"id"].decode() == event_id
    assert again.stop() == 0
