"""Events the router writes itself, built straight into stream fields, and its span attributes.

The batch path builds its completion, retry, re-check and notification events
from data it has already validated or produced, so it skips the Event model
(whose construction re-validates and re-serialises the data) and writes the
same six wire fields `Event.to_wire` would.
"""

from __future__ import annotations

import os
from typing import Any, Final

from selfheal.core.incident import Incident
from selfheal.core.policy import Decision

_ALPHABET: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32, as ULIDs use
# Two characters (ten bits) per lookup. A ULID's 26 characters are 10 for the 48-bit
# time (the top two of its 50 bits are zero) and 16 for the 80 random bits.
_PAIRS: Final = tuple(a + b for a in _ALPHABET for b in _ALPHABET)
_ENTROPY_CHUNK: Final = 4096


class _Entropy:
    """os.urandom fetched in chunks: one syscall per ~400 ids instead of one each."""

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def take80(self) -> int:
        if self._at + 10 > len(self._pool):
            self._pool = os.urandom(_ENTROPY_CHUNK)
            self._at = 0
        start = self._at
        self._at += 10
        return int.from_bytes(self._pool[start : self._at], "big")

    def reset(self) -> None:
        # A forked child must not hand out the parent's remaining random bytes again.
        self._pool = b""
        self._at = 0


_ENTROPY: Final = _Entropy()
os.register_at_fork(after_in_child=_ENTROPY.reset)


class _TimePrefix:
    """The time characters of the last millisecond asked for (a batch shares its clock)."""

    def __init__(self) -> None:
        self._last = (-1, "")  # one tuple, so a reader never pairs one ms with another's text

    def of(self, now_ms: int) -> str:
        ms, text = self._last
        if ms != now_ms:
            text = "".join([_PAIRS[(now_ms >> shift) & 1023] for shift in (40, 30, 20, 10, 0)])
            self._last = (now_ms, text)
        return text


_TIME_PREFIX: Final = _TimePrefix()


def new_ulid(now_ms: int) -> str:
    """A ULID for `now_ms` (48-bit time, 80 random bits), like ULID.from_timestamp."""
    r = _ENTROPY.take80()
    p = _PAIRS
    return (
        f"{_TIME_PREFIX.of(now_ms)}{p[r >> 70]}{p[(r >> 60) & 1023]}{p[(r >> 50) & 1023]}"
        f"{p[(r >> 40) & 1023]}{p[(r >> 30) & 1023]}{p[(r >> 20) & 1023]}"
        f"{p[(r >> 10) & 1023]}{p[r & 1023]}"
    )


def event_fields(
    name: str,
    data_json: str,
    *,
    now_ms: int,
    idempotency_key: str | None,
    traceparent: str | None,
) -> dict[str, str]:
    """The stream fields of a new event (what new_event(...).to_wire() gives)."""
    event_id = new_ulid(now_ms)
    return {
        "id": event_id,
        "name": name,
        "data": data_json,
        "ts": str(now_ms),
        "idempotencyKey": idempotency_key if idempotency_key is not None else event_id,
        "traceparent": traceparent or "",
    }


# Idempotency keys of the events the router writes. Both routing paths (Router.handle
# and the batch planner) use these, so a redelivered request that takes the other path
# joins what the first one published instead of publishing it again.


def completed_key(cause_id: str) -> str:
    """The `completed` answer to one request event."""
    return f"{cause_id}/completed"


def retry_key(decision: Decision) -> str:
    """The retry event a decision schedules."""
    return f"{decision.key}/retry"


def recheck_key(decision: Decision) -> str:
    """The re-check a pause schedules."""
    return f"{decision.key}/recheck"


def _notice_latch(incident: Incident) -> str:
    # One escalation notice (and one all-clear) per incident and operator reset.
    return f"{incident.incident_id}/r{incident.operator_resets}"


def escalated_key(incident: Incident) -> str:
    """The escalation notice of an incident."""
    return f"{_notice_latch(incident)}/escalated"


def all_clear_key(incident: Incident) -> str:
    """The all-clear that follows an escalation notice once the incident is remediated."""
    return f"{_notice_latch(incident)}/all_clear"


def escalation_notice(after: Incident, decision: Decision, summary: str) -> dict[str, Any]:
    """Data of the notification request an escalation sends."""
    return {
        "kind": "escalated",
        "incident": after.to_dict(),
        "decision": decision.to_dict(),
        "problemSummary": summary,
    }


def span_attributes(decision: Decision) -> dict[str, Any]:
    """The `selfheal.*` attributes describing a decision on its span."""
    attributes: dict[str, Any] = {
        "selfheal.incident_id": decision.incident_id,
        "selfheal.attempt": decision.attempt,
        "selfheal.action": str(decision.action),
        "selfheal.delay_ms": decision.delay_ms,
        "selfheal.failure_class": str(decision.failure_class),
        "selfheal.reason": decision.reason,
        "selfheal.rule": str(decision.rule),
    }
    if decision.route_event:
        attributes["selfheal.route_event"] = decision.route_event
    for key, value in (decision.advisor or {}).items():
        if isinstance(value, str | int | float | bool):
            attributes[f"selfheal.advisor.{key}"] = value
    return attributes
