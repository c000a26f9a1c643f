"""How `selfheal status` reads a daemon's status: what is shown, and when it is degraded."""

from __future__ import annotations

import time
from typing import Any

from selfheal.cli.daemon_cmds import degraded, render_status, shown_services


def status(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "version": "0.1.0",
        "pid": 42,
        "state": "running",
        "uptime_seconds": 3700,
        "config": {"path": "/c.json", "generation": 1, "exists": True, "present": True},
        "last_reload": None,
        "redis": {"mode": "url", "target": "redis://nas:6379/0", "connected": True},
        "backups": {
            "next_runs": {"redis": time.time() + 7300},
            "last_runs": {
                "redis": {
                    "status": "delivered",
                    "bytes": 3 << 20,
                    "seconds": 1.5,
                    "at": time.time() - 190,
                }
            },
        },
        "telemetry": {"exporter": "jsonl", "span_file": "/s.jsonl"},
        "services": [
            {"name": n, "state": "running", "restarts": 0, "since": time.time(), "last_error": None}
            for n in (
                "control",
                "embedded-redis",
                "redis",
                "backup:redis:requested",
                "backup:typesense:requested",
            )
        ],
    }
    base.update(changes)
    return base


def test_services_of_a_target_that_is_off_and_the_idle_embedded_slot_are_not_shown() -> None:
    names = [x["name"] for x in shown_services(status())]
    assert names == ["control", "redis", "backup:redis:requested"]


def test_a_healthy_status_is_short_and_human() -> None:
    text = render_status(status())
    assert "services    3/3 running" in text and "last error" not in text
    assert "backup      redis: delivered 3.0 MiB in 1.5s, verified, 3m ago; next in 2h01m" in text
    assert degraded(status()) == []


def test_degraded_names_each_reason() -> None:
    crashed = status()
    crashed["services"][2] = {**crashed["services"][2], "state": "restarting", "last_error": "boom"}
    crashed["redis"] = {"mode": "url", "connected": False, "last_error": "refused"}
    crashed["last_reload"] = {"ok": False, "error": "x", "trigger": "watch", "at": time.time()}
    reasons = degraded(crashed)
    assert reasons == [
        "Redis is not connected",
        "not running: redis",
        "the last config edit was rejected",
    ]
    assert "boom" in render_status(crashed)  # a service that is down is listed without -v


def test_uptime_and_ages_read_as_people_say_them() -> None:
    assert "up 1h01m" in render_status(status())
