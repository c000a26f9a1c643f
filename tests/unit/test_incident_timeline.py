"""An incident's timeline: decisions, resets, notifications, the manual queue and the
acknowledgement, oldest first, each with what an operator needs to see why."""

from __future__ import annotations

from selfheal.healing.control import timeline


def test_the_timeline_merges_every_source_in_time_order() -> None:
    history = [
        {"atMs": 1000, "event": "opened", "requestAttempt": 0},
        {
            "atMs": 1000,
            "event": "retry",
            "attempt": 0,
            "delayMs": 300000,
            "failureClass": "transient_transport",
            "rule": "retry",
            "reason": "retry 1 of 5 in 300000 ms",
            "problem": "redis backup failed: connection timed out",
        },
        {
            "atMs": 5000,
            "event": "escalate",
            "attempt": 1,
            "delayMs": 0,
            "failureClass": "resource_exhausted",
            "rule": "hard_failure",
            "reason": "hard failure: disk full",
        },
        {"atMs": 9000, "event": "budget_reset", "by": "joel", "retriesUsed": 1},
    ]
    notices = [
        {"atMs": 5100, "kind": "escalated", "results": {"webhook": "ok", "ntfy": "HTTP 500"}}
    ]
    manual = [{"atMs": "5000", "reason": "hard failure: disk full"}]
    acked = {"by": "joel", "atMs": 8000, "note": "cleaned the share"}
    entries = timeline(history, notices, acked, manual)
    assert [e["event"] for e in entries] == [
        "opened",
        "retry",
        "escalate",
        "manual queue",
        "notified (escalated)",
        "acknowledged",
        "budget_reset",
    ]
    retry = entries[1]["detail"]
    assert "transient_transport, rule retry" in retry and "in 300000 ms" in retry
    assert "problem: redis backup failed" in retry
    assert entries[4]["detail"] == "webhook ok, ntfy HTTP 500"
    assert entries[5]["detail"] == "by joel: cleaned the share"
    assert entries[6]["detail"] == "by joel"
