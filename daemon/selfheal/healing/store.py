"""Incidents and decisions in Redis: the source of truth for every retry budget.

An incident is one hash: the record (JSON), a version for optimistic locking, the
time until which a scheduled retry or pause is pending, the last request (for an
operator retry) and the last decision. A decision is stored once per incident
step with SET NX before it is applied, so a redelivery or a second daemon reuses
it (jitter and advice are never recomputed). Applying a decision — the new
record, the scheduled event, the completion, the escalation entry, the
notification — is one MULTI/EXEC guarded by WATCH: all of it happens, or none.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import WatchError

from selfheal.bus.streams import Bus, as_text, cast_entries
from selfheal.core.contracts import InvalidRequest, parse_request
from selfheal.core.events import Event, compact_json
from selfheal.core.incident import Incident
from selfheal.core.policy import Decision

# Stored decisions outlive any realistic incident (the recovery window is hours).
DECISION_TTL_S = 30 * 24 * 3600


def _text(value: bytes | str | None) -> str | None:
    return None if value is None else as_text(value)


class IncidentSnapshot(msgspec.Struct, frozen=True):
    """An incident as read, with the version its update must match (a Struct: quick to build)."""

    incident_id: str
    incident: Incident | None
    version: int = 0
    pending_until_ms: int = 0
    request_json: str | None = None  # parsed only when asked for (the router never is)
    last_decision: Decision | None = None
    acked: dict[str, Any] | None = None

    @property
    def request(self) -> dict[str, Any] | None:
        """The last request stored with the incident, as the contract writes it.

        The batch router stores a request as its event carried it, the per-entry path
        as the model writes it; read back, both are the same. Data that does not pass
        the contract is given as stored (routing it again names what is wrong).
        """
        if self.request_json is None:
            return None
        stored = cast(dict[str, Any], json.loads(self.request_json))
        try:
            return parse_request(stored).to_data()
        except InvalidRequest:
            return stored


@dataclass
class Commit:
    """Everything one decision writes, applied atomically."""

    incident: Incident
    decision: Decision
    request: dict[str, Any]
    pending_until_ms: int = 0
    publish: list[Event] = field(default_factory=list)
    publish_once: list[Event] = field(default_factory=list)  # deduplicated by idempotency key
    schedule: list[tuple[Event, int]] = field(default_factory=list)
    manual_entry: dict[str, str] | None = None


class IncidentStore:
    """Reads and atomically updates incidents in one namespace."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.keys = bus.keys
        self.client: aioredis.Redis = bus.client

    async def load(self, incident_id: str) -> IncidentSnapshot:
        """The incident's current state (an empty snapshot when unknown)."""
        raw = await self.client.hgetall(self.keys.incident(incident_id))
        return snapshot_from(incident_id, cast(dict[Any, Any], raw).items())

    def decision_key(self, incident: Incident) -> str:
        """The key of the decision stored for the incident's current step."""
        # Derived incident ids repeat once an incident is remediated and a new one opens
        # under the same id: the opening time tells the two apart.
        return self.keys.decision(f"{incident.decision_key}@{incident.first_seen_ms}")

    async def reserve_decision(self, incident: Incident, decision: Decision) -> Decision:
        """Store the decision for its step unless one exists; return the one that counts."""
        if decision.key != incident.decision_key:
            raise ValueError(f"decision {decision.key} is not for step {incident.decision_key}")
        key = self.decision_key(incident)
        stored = await self.client.set(
            key, compact_json(decision.to_dict()), nx=True, ex=DECISION_TTL_S
        )
        if stored:
            return decision
        existing = await self.stored_decision(incident)
        return existing if existing is not None else decision

    async def stored_decision(self, incident: Incident) -> Decision | None:
        """The decision already made for the incident's current step, if any."""
        raw = await self.client.get(self.decision_key(incident))
        return None if raw is None else Decision.from_json(_text(raw) or "{}")

    async def commit(self, snapshot: IncidentSnapshot, change: Commit) -> bool:
        """Apply a decision if the incident is still at `snapshot.version`; False if not."""
        key = self.keys.incident(snapshot.incident_id)
        async with self.client.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(key)
                current = _text(await pipe.hget(key, "version"))
                if int(current or 0) != snapshot.version:
                    return False
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.hset(
                    key,
                    mapping={
                        "record": compact_json(change.incident.to_dict()),
                        "version": snapshot.version + 1,
                        "pendingUntil": change.pending_until_ms,
                        "request": compact_json(change.request),
                        "lastDecision": compact_json(change.decision.to_dict()),
                    },
                )
                pipe.zadd(self.keys.incidents, {snapshot.incident_id: change.incident.updated_ms})
                for event in change.publish:
                    await self.bus.publish_in(pipe, event)
                for event in change.publish_once:
                    await self.bus.publish_in(pipe, event, dedupe=True)
                for event, due_ms in change.schedule:
                    await self.bus.send_at_in(pipe, event, due_ms)
                if change.manual_entry is not None:
                    pipe.xadd(
                        self.keys.manual_queue,
                        dict[Any, Any](change.manual_entry),
                        maxlen=self.bus.maxlen,
                        approximate=True,
                    )
                await pipe.execute()
            except WatchError:
                return False
        return True

    async def update_record(
        self, snapshot: IncidentSnapshot, incident: Incident, extra: dict[str, str] | None = None
    ) -> bool:
        """Replace just the record (operator actions); False if the version moved."""
        key = self.keys.incident(snapshot.incident_id)
        async with self.client.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(key)
                if int(_text(await pipe.hget(key, "version")) or 0) != snapshot.version:
                    return False
                pipe.multi()  # type: ignore[no-untyped-call]
                mapping: dict[Any, Any] = {
                    "record": compact_json(incident.to_dict()),
                    "version": snapshot.version + 1,
                    "pendingUntil": 0,
                    **(extra or {}),
                }
                pipe.hset(key, mapping=mapping)
                pipe.zadd(self.keys.incidents, {snapshot.incident_id: incident.updated_ms})
                await pipe.execute()
            except WatchError:
                return False
        return True

    async def recent(self, limit: int = 50) -> list[IncidentSnapshot]:
        """The most recently updated incidents, newest first."""
        ids = await self.client.zrevrange(self.keys.incidents, 0, max(0, limit - 1))
        snapshots = [await self.load(_text(i) or "") for i in cast(list[Any], ids)]
        return [s for s in snapshots if s.incident is not None]

    async def manual_queue(self, count: int = 100) -> list[dict[str, str]]:
        """Escalations waiting for an operator, newest first."""
        raw = await self.client.xrevrange(self.keys.manual_queue, count=count)
        return [{"entryId": entry_id, **fields} for entry_id, fields in cast_entries(raw)]

    async def clear_manual_entries(self, incident_id: str) -> int:
        """Delete the incident's manual-queue entries (an operator took it over); returns
        how many. The queue holds escalations only, so a paged scan is cheap."""
        found: list[str] = []
        start = "-"
        while True:
            page = cast_entries(
                await self.client.xrange(self.keys.manual_queue, min=start, count=1000)
            )
            found += [entry_id for entry_id, f in page if f.get("incidentId") == incident_id]
            if len(page) < 1000:
                break
            start = "(" + page[-1][0]
        if found:
            await self.client.xdel(self.keys.manual_queue, *found)
        return len(found)


def snapshot_from(
    incident_id: str, pairs: Iterable[tuple[bytes | str, bytes | str]]
) -> IncidentSnapshot:
    """Read an incident hash's fields (an empty snapshot when it has no record)."""
    fields: dict[str, str] = {_text(k) or "": _text(v) or "" for k, v in pairs}
    if not fields.get("record"):
        return IncidentSnapshot(incident_id=incident_id, incident=None)
    return IncidentSnapshot(
        incident_id=incident_id,
        incident=Incident.from_json(fields["record"]),
        version=int(fields.get("version") or 0),
        pending_until_ms=int(fields.get("pendingUntil") or 0),
        request_json=fields.get("request") or None,
        last_decision=(
            Decision.from_json(fields["lastDecision"]) if fields.get("lastDecision") else None
        ),
        acked=json.loads(fields["acked"]) if fields.get("acked") else None,
    )


def manual_entry(incident: Incident, decision: Decision, summary: str) -> dict[str, str]:
    """One manual-intervention queue entry (flat strings for the stream)."""
    return {
        "incidentId": incident.incident_id,
        "domain": incident.domain,
        "targetComponent": incident.target_component,
        "sourceFunction": incident.source_function,
        "failureClass": str(decision.failure_class),
        "rule": str(decision.rule),
        "reason": decision.reason,
        "retriesUsed": str(incident.retries_used),
        "problemSummary": summary[:2000],
        "atMs": str(decision.decided_at_ms),
    }


def latest(items: Sequence[IncidentSnapshot], state: str | None) -> list[IncidentSnapshot]:
    """Filter snapshots by incident state."""
    if state is None:
        return list(items)
    return [s for s in items if s.incident is not None and str(s.incident.state) == state]
