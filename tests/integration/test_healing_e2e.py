"""End to end through the real daemon: retries, escalation, one webhook call, the CLI."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from selfheal.cli import cli
from selfheal.core.contracts import parse_request
from selfheal.healing.router import SPAN_NAME
from selfheal.spanfile import read_spans
from tests.support.daemon import Daemons
from tests.support.http import PlayedService, played_service
from tests.support.servers import wait_until

pytestmark = pytest.mark.slow

RETRY_STREAM = "{selfheal}:stream:system/backup.retry.requested"
COMPLETED_STREAM = "{selfheal}:stream:system/self.healing.completed"


@pytest.fixture
def receiver() -> Iterator[PlayedService]:
    """The webhook endpoint."""
    with played_service() as service:
        yield service


def failure(attempt: int) -> dict[str, Any]:
    return {
        "sourceFunction": "system/backup.redis",
        "targetComponent": "redis",
        "problemSummary": "copy to NAS failed",
        "attempt": attempt,
        "retryPolicy": {"maxRetries": 3, "sleepMinMs": 100, "sleepMaxMs": 3000, "sleepStepMs": 50},
        # As producers often send it: a log line as a bare string next to structured evidence.
        "evidence": [{"errno": "ETIMEDOUT"}, "ssh: connect to host nas: timed out"],
        "playbook": {
            "actions": ["retry"],
            "links": ["https://wiki.example/nas-down"],
            "runbook": "runbooks/nas-copy.md",
        },
        "incidentId": "backup:redis:e2e",
        "domain": "backup",
    }


def test_three_retries_then_escalation_with_one_notification(
    daemon_factory: Daemons, receiver: PlayedService
) -> None:
    config = {
        "selfheal": {
            "notifiers": {
                "webhook": {
                    "url": f"{receiver.base}/hook",
                    "headers": {"X-Token": "hook-secret-123"},
                }
            }
        }
    }
    daemon = daemon_factory.start(config=config)
    env = daemon.env()
    runner = CliRunner()

    def send(attempt: int) -> None:
        result = runner.invoke(
            cli,
            [
                "events",
                "send",
                "system/self.healing.requested",
                "--data",
                json.dumps(failure(attempt)),
                "--json",
            ],
            env=env,
        )
        assert result.exit_code == 0, result.output

    bus = redis.Redis(unix_socket_path=str(daemon.state_dir / "redis" / "redis.sock"))
    send(0)
    # Play the backup domain: every retry that fires fails again and is reported.
    seen = 0
    last_id = "0-0"
    while seen < 3:
        reply = bus.xread({RETRY_STREAM: last_id}, count=10, block=15_000)
        assert reply, f"retry {seen + 1} never fired:\n{daemon.log()[-3000:]}"
        for entry_id, fields in reply[0][1]:
            last_id = entry_id
            seen += 1
            data = json.loads(fields[b"data"])
            assert data["attempt"] == seen and data["incidentId"] == "backup:redis:e2e"
            send(data["attempt"])

    def escalated() -> bool:
        result = runner.invoke(cli, ["incidents", "list", "--json"], env=env)
        rows = json.loads(result.output)["incidents"]
        return bool(rows) and rows[0]["state"] == "escalated"

    wait_until(escalated, 20, "the incident to escalate")
    wait_until(lambda: len(receiver.posts) >= 1, 20, "the webhook notification")

    completions = [json.loads(f[b"data"]) for _id, f in bus.xrange(COMPLETED_STREAM)]
    assert [c["status"] for c in completions] == ["scheduled"] * 3 + ["exhausted"]
    delays = [c["delayMs"] for c in completions[:3]]
    assert delays[0] < delays[1] < delays[2], delays
    assert bus.xlen(RETRY_STREAM) == 3, "no fourth retry"

    [post] = receiver.posts
    assert post.path == "/hook" and post.headers.get("X-Token") == "hook-secret-123"
    assert post.body["incidentId"] == "backup:redis:e2e"
    assert post.body["kind"] == "escalated"

    listing = runner.invoke(cli, ["incidents", "list"], env=env)
    assert listing.exit_code == 0 and "backup:redis:e2e" in listing.output
    shown = runner.invoke(cli, ["incidents", "show", "backup:redis:e2e", "--json"], env=env)
    detail = json.loads(shown.output)
    assert detail["retriesUsed"] == 3 and len(detail["manualQueue"]) == 1
    # The last request, as the contract writes it (the router may store it as it came).
    assert detail["request"] == parse_request(json.dumps(failure(3))).to_data()
    assert detail["request"]["evidence"][1]["message"] == "ssh: connect to host nas: timed out"

    stats = json.loads(runner.invoke(cli, ["queue", "stats", "--json"], env=env).output)
    assert stats["deadLetters"] == 0
    assert "hook-secret-123" not in json.dumps(daemon.status())

    text = runner.invoke(cli, ["incidents", "show", "backup:redis:e2e"], env=env).output
    assert "runbook: runbooks/nas-copy.md" in text
    assert "links: https://wiki.example/nas-down" in text
    assert "last decision: escalate" in text and "waiting for an operator" in text

    acked = runner.invoke(
        cli,
        ["incidents", "ack", "backup:redis:e2e", "--note", "NAS fan swapped", "--json"],
        env=env,
    )
    assert json.loads(acked.output)["manualEntriesCleared"] == 1
    shown = runner.invoke(cli, ["incidents", "show", "backup:redis:e2e", "--json"], env=env)
    assert json.loads(shown.output)["manualQueue"] == [], "acked: no longer in the queue"

    # Each decision's history entry names its span's trace; the ack note is kept.
    timeline = runner.invoke(cli, ["incidents", "show", "backup:redis:e2e"], env=env).output
    assert "acknowledged by" in timeline and ": NAS fan swapped" in timeline
    traces = re.findall(r"trace ([0-9a-f]{32})", timeline)
    assert len(traces) == 4  # three retries and the escalation
    span_file = Path(daemon.status()["telemetry"]["span_file"])

    def decision_traces() -> set[str]:
        spans = read_spans(span_file)
        return {s["context"]["trace_id"][2:] for s in spans if s["name"] == SPAN_NAME}

    wait_until(lambda: set(traces) <= decision_traces(), 15, "the decisions' spans")

    # An operator gives it a fresh budget: the failed work (the backup retry) runs at
    # once, as the first attempt of the new budget, and the timeline says so.
    retried = runner.invoke(
        cli, ["incidents", "retry", "backup:redis:e2e", "--by", "ops", "--json"], env=env
    )
    assert retried.exit_code == 0, retried.output
    answer = json.loads(retried.output)
    assert answer["mode"] == "rerun" and answer["event"] == "system/backup.retry.requested"
    assert bus.xlen(RETRY_STREAM) == 4, "published at once, not after a delay"
    _, fields = bus.xrevrange(RETRY_STREAM, count=1)[0]
    rerun = json.loads(fields[b"data"])
    assert rerun["attempt"] == 1 and rerun["incidentId"] == "backup:redis:e2e"
    shown = json.loads(
        runner.invoke(cli, ["incidents", "show", "backup:redis:e2e", "--json"], env=env).output
    )
    assert shown["state"] == "open" and shown["retriesUsed"] == 0
    [reset] = [t for t in shown["timeline"] if t["event"] == "budget_reset"]
    assert "by ops" in reset["detail"] and answer["eventId"] in reset["detail"]

    # --reroute: the last request goes back through the router, which schedules a retry.
    rerouted = runner.invoke(
        cli, ["incidents", "retry", "backup:redis:e2e", "--by", "ops", "--reroute"], env=env
    )
    assert rerouted.exit_code == 0, rerouted.output
    assert "routed again" in rerouted.output
    wait_until(lambda: bus.xlen(RETRY_STREAM) == 5, 15, "the rerouted retry to be scheduled")
    assert len(receiver.posts) == 1, "still one notification for this incident"
    assert daemon.stop() == 0
