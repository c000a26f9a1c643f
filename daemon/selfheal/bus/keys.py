"""Every Redis key the bus uses, in one place.

All keys carry one hash tag, `{<namespace>}`, so they live in one Cluster slot and
the Lua scripts that touch several of them stay valid on Redis Cluster; the
namespace lets several installations share one Redis.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

# How long a consumer group remembers that it handled an event (idempotent effects).
DONE_TTL_S = 7 * 24 * 3600
# How long a publish idempotency key blocks a second publish of the same key.
PUBLISHED_TTL_S = 7 * 24 * 3600


@dataclass(frozen=True)
class Keys:
    """Key names for one namespace (the fixed ones are built once per instance)."""

    namespace: str

    @cached_property
    def tag(self) -> str:
        """The hash tag shared by every key."""
        return "{" + self.namespace + "}"

    def stream(self, event_name: str) -> str:
        """One stream per event name."""
        return f"{self.tag}:stream:{event_name}"

    @cached_property
    def dead_letters(self) -> str:
        """Entries that could not be handled, with the reason (a stream)."""
        return f"{self.tag}:dead"

    @cached_property
    def timers(self) -> str:
        """Delayed events: sorted set of event id scored by due time (ms)."""
        return f"{self.tag}:timers"

    @cached_property
    def timer_payloads(self) -> str:
        """Delayed events' bodies: hash of event id -> JSON {stream, fields}."""
        return f"{self.tag}:timers:payload"

    def done(self, group: str, event_id: str) -> str:
        """Marker: `group` has durably handled event `event_id`."""
        return f"{self.tag}:done:{group}:{event_id}"

    def last_failure(self, group: str, entry_id: str) -> str:
        """The last handler error for a pending entry (read when it is dead-lettered)."""
        return f"{self.tag}:failure:{group}:{entry_id}"

    def published(self, event_name: str, idempotency_key: str) -> str:
        """Marker: an event with this idempotency key was already published."""
        return f"{self.tag}:published:{event_name}:{idempotency_key}"

    @cached_property
    def streams_index(self) -> str:
        """Set of every stream key the bus has written to (for stats)."""
        return f"{self.tag}:streams"

    def incident(self, incident_id: str) -> str:
        """Incident hash: record JSON, version, pendingUntil, last request and decision."""
        return f"{self.tag}:incident:{incident_id}"

    def decision(self, decision_key: str) -> str:
        """One stored decision per incident step (reused on redelivery)."""
        return f"{self.tag}:decision:{decision_key}"

    @cached_property
    def incidents(self) -> str:
        """Sorted set of incident ids by last update (ms)."""
        return f"{self.tag}:incidents"

    @cached_property
    def manual_queue(self) -> str:
        """The manual-intervention queue: a stream of escalations."""
        return f"{self.tag}:manual"

    def notified(self, incident_id: str) -> str:
        """Latch: this incident was announced within the quiet window (holds the event id)."""
        return f"{self.tag}:notified:{incident_id}"

    def notices(self, incident_id: str) -> str:
        """List of the notifications sent for an incident, newest first (its timeline)."""
        return f"{self.tag}:notices:{incident_id}"

    def delivered(self, event_id: str, notifier: str) -> str:
        """Marker: one notifier has delivered one notification event."""
        return f"{self.tag}:delivered:{event_id}:{notifier}"

    def worker(self, name: str, part: str) -> str:
        """A watchdog key of one worker: its restart lock, cooldown, restarts in the
        window (sorted set of times), last restart (hash), when a restart last made it
        answer."""
        return f"{self.tag}:worker:{name}:{part}"
