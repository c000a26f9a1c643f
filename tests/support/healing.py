"""Self-healing requests for chaos tests, and the outcomes the router answers them with."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

import redis

from selfheal.bus.keys import Keys
from selfheal.core.events import SELF_HEALING_COMPLETED

COMPLETED_SUFFIX = "/completed"  # core/routing.py completed_key: "<request event id>/completed"


def retry_request(incident_id: str) -> dict[str, Any]:
    """A backup failure whose decision is a retry an hour away (none fires in a test)."""
    return {
        "sourceFunction": "system/backup.redis",
        "targetComponent": "redis",
        "problemSummary": "copy to NAS failed",
        "attempt": 0,
        "retryPolicy": {
            "maxRetries": 3,
            "sleepMinMs": 3_600_000,
            "sleepMaxMs": 3_600_000,
            "sleepStepMs": 0,
        },
        "evidence": [{"errno": "ETIMEDOUT"}, "ssh: connect to host nas: timed out"],
        "playbook": {"actions": ["retry"]},
        "incidentId": incident_id,
        "domain": "backup",
    }


@dataclass(frozen=True)
class Outcome:
    """One entry of `system/self.healing.completed`."""

    request_id: str  # the event id of the request it answers
    incident_id: str | None
    status: str


def outcomes(client: redis.Redis, namespace: str = "selfheal") -> list[Outcome]:
    """Every completion on the stream, oldest first."""
    raw = client.xrange(Keys(namespace).stream(SELF_HEALING_COMPLETED))
    found: list[Outcome] = []
    for _entry, fields in cast(list[tuple[bytes, dict[bytes, bytes]]], raw):
        key = fields[b"idempotencyKey"].decode()
        data = json.loads(fields[b"data"])
        found.append(
            Outcome(key.removesuffix(COMPLETED_SUFFIX), data.get("incidentId"), data["status"])
        )
    return found
