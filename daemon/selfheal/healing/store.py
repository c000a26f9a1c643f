"""Incidents and decisions in Redis: the source of truth for every retry budget.

An incident is one hash: the record (JSON), a version for optimistic locking, the
time until which a scheduled retry or pause is pending, the last request (for an
operator retry) and the last decision. A decision is stored once per incident
step, together with its effects, so a redelivery or a second daemon reuses it
(jitter and advice are never recomputed). Every write to an incident goes
through `apply`: guarded groups in one Lua call (healing/commit.py), each
applied whole or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, cast

import msgspec
import redis.asyncio as aioredis

from selfheal.bus.streams import Bus, as_text, cast_entries
from selfheal.core.contracts import InvalidRequest, parse_request
from selfheal.core.incident import Decision, Incident
from selfheal.healing.commit import COMMIT, LOAD, CommitBatch, Group, statuses

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

        The router stores a request as its event carried it; read back through the
        contract, it is written the one way. Data that does not pass the contract is
        given as stored (routing it again names what is wrong).
        """
        if self.request_json is None:
            return None
        try:
            return parse_request(self.request_json).to_data()
        except InvalidRequest:
            return cast(dict[str, Any], json.loads(self.request_json))


class IncidentStore:
    """Reads and atomically updates incidents in one namespace."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.keys = bus.keys
        self.client: aioredis.Redis = bus.client
        self._load = self.client.register_script(LOAD)
        self._commit = self.client.register_script(COMMIT)

    async def load(self, incident_id: str) -> IncidentSnapshot:
        """The incident's current state (an empty snapshot when unknown)."""
        raw = await self.client.hgetall(self.keys.incident(incident_id))
        return snapshot_from(incident_id, cast(dict[Any, Any], raw).items())

    def decision_key(self, incident: Incident) -> str:
        """The key of the decision stored for the incident's current step."""
        # Derived incident ids repeat once an incident is remediated and a new one opens
        # under the same id: the opening time tells the two apart.
        return self.keys.decision(f"{incident.decision_key}@{incident.first_seen_ms}")

    async def stored_decision(self, incident: Incident) -> Decision | None:
        """The decision already made for the incident's current step, if any."""
        raw = await self.client.get(self.decision_key(incident))
        return None if raw is None else Decision.from_json(_text(raw) or "{}")

    async def stored_decisions(self, incidents: Sequence[Incident]) -> list[Decision | None]:
        """stored_decision for several incidents in one round trip."""
        raw = await self.bus.execute_packed("MGET", *[self.decision_key(i) for i in incidents])
        return [None if value is None else Decision.from_json(as_text(value)) for value in raw]

    async def load_many(self, keys: list[str], markers: int) -> tuple[list[int], list[list[Any]]]:
        """The first `markers` keys' existence and the rest's hashes, in one call."""
        flags, hashes = await self.bus.eval_packed(self._load, keys, [markers])
        return flags, hashes

    async def apply(self, groups: Sequence[Group]) -> list[bool]:
        """Commit the groups in one call; per group, whether it applied (False: its guard
        failed, so nothing of it was written)."""
        if not groups:
            return []
        batch = CommitBatch(self.bus.maxlen)
        for group in groups:
            batch.add(group)
        reply = await self.bus.eval_packed(self._commit, batch.keys, batch.argv())
        return [status == 1 for status in statuses(reply)]

    def record_group(
        self, snapshot: IncidentSnapshot, incident: Incident, extra: dict[str, str] | None = None
    ) -> Group:
        """A group replacing just the record (operator actions, remediation), guarded by
        the version that was read; callers may add more to it."""
        group = Group()
        key = self.keys.incident(snapshot.incident_id)
        group.expect_version(key, snapshot.version)
        group.hset(
            key,
            {
                "record": incident.to_json(),
                "version": str(snapshot.version + 1),
                "pendingUntil": "0",
                **(extra or {}),
            },
        )
        group.zadd(self.keys.incidents, incident.updated_ms, snapshot.incident_id)
        return group

    async def update_record(
        self, snapshot: IncidentSnapshot, incident: Incident, extra: dict[str, str] | None = None
    ) -> bool:
        """Replace just the record; False if the version moved."""
        return (await self.apply([self.record_group(snapshot, incident, extra)]))[0]

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


def latest(items: Sequence[IncidentSnapshot], state: str | None) -> list[IncidentSnapshot]:
    """Filter snapshots by incident state."""
    if state is None:
        return list(items)
    return [s for s in items if s.incident is not None and str(s.incident.state) == state]
