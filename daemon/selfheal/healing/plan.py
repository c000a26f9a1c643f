"""Planning one batched routing step: Router._route's choices, written into a commit group.

Each incident of a batch is a `Chain`: the state as loaded, updated in memory
as its events are routed in order, and the guarded group that will write it.
A step computes everything first and touches the group last, so a step that
raises leaves the group as it was (and its event goes to the slow path).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final

import msgspec
from pydantic import TypeAdapter

from selfheal.bus.keys import DONE_TTL_S, PUBLISHED_TTL_S
from selfheal.bus.streams import timer_payload
from selfheal.core.contracts import Completion, CompletionStatus, RequestView
from selfheal.core.events import (
    SELF_HEALING_COMPLETED,
    SELF_HEALING_REQUESTED,
    Envelope,
    compact_json,
)
from selfheal.core.incident import Incident, IncidentState
from selfheal.core.policy import Action, Decision, Knobs, completion_for, completion_json
from selfheal.healing.commit import Group
from selfheal.healing.store import DECISION_TTL_S, IncidentSnapshot, manual_entry
from selfheal.healing.wire import (
    completed_key,
    escalated_key,
    escalation_notice,
    event_fields,
    recheck_key,
    retry_key,
    span_attributes,
)
from selfheal.telemetry import OpenSpan

if TYPE_CHECKING:
    from selfheal.healing.router import Router

SPAN_NAME: Final = "selfheal.route.decide"
# Stored records go straight to JSON in Rust (readers parse them; none compares text).
_INCIDENT_JSON: Final = TypeAdapter(Incident)
_DECISION_JSON: Final = TypeAdapter(Decision)


# The records below are msgspec Structs, built for every event of a batch: a Struct
# is several times quicker to build than a dataclass (frozen ones most of all).


class Chain(msgspec.Struct):
    """One incident while its events of a batch are routed in order."""

    snapshot: IncidentSnapshot
    key: str
    incident: Incident | None
    version: int
    pending_until_ms: int
    last_decision: Decision | None
    stored: Decision | None = None  # stored for the loaded step, until that step moves on
    group: Group | None = None
    applied: bool = False  # the commit applied the group
    broken: bool = False  # an event went to the slow path; the later ones follow it

    @classmethod
    def of(cls, snapshot: IncidentSnapshot, key: str) -> Chain:
        """A chain starting from the loaded snapshot."""
        return cls(
            snapshot=snapshot,
            key=key,
            incident=snapshot.incident,
            version=snapshot.version,
            pending_until_ms=snapshot.pending_until_ms,
            last_decision=snapshot.last_decision,
        )


class Step(msgspec.Struct):
    """A planned event waiting for its group's commit."""

    index: int
    chain: Chain
    span: OpenSpan
    attributes: dict[str, Any]
    decision: Decision | None
    joined: bool = False
    reused: bool = False


class Entry(msgspec.Struct, frozen=True):
    """One valid request of the batch."""

    index: int
    entry_id: str
    envelope: Envelope
    request: RequestView
    # The request as the event carried it: stored and re-sent as it came, since it
    # parses to the same request (no need to serialise the model again).
    request_json: str


class Planner:
    """Plans the steps of a batch into their incidents' groups."""

    def __init__(self, router: Router, notify_event: str) -> None:
        self.router = router
        keys = self.keys = router.bus.keys
        self._notify = notify_event
        self._requests = keys.stream(SELF_HEALING_REQUESTED)
        self._completed = keys.stream(SELF_HEALING_COMPLETED)
        # Key names built once per batch instead of once per event (a prefix plus an id
        # is the same name the Keys method gives).
        self._done_prefix = keys.done(router.group, "")
        self._completed_marker_prefix = keys.published(SELF_HEALING_COMPLETED, "")
        self._streams: dict[str, str] = {}

    def done_key(self, envelope: Envelope) -> str:
        """The router group's done marker for the event."""
        return self._done_prefix + envelope.id

    def stream(self, event_name: str) -> str:
        """The stream key of `event_name` (remembered for the batch)."""
        key = self._streams.get(event_name)
        if key is None:
            key = self._streams[event_name] = self.keys.stream(event_name)
        return key

    def ack(self, group: Group, entry: Entry) -> None:
        """Mark the entry handled and ack it (inside `group`)."""
        group.complete(
            self._done_prefix + entry.envelope.id,
            self._requests,
            self.router.group,
            entry.entry_id,
            DONE_TTL_S,
        )

    async def route(self, chain: Chain, entry: Entry, knobs: Knobs) -> Step:
        """Plan one event (the same choices as Router._route, in the same order)."""
        event, request = entry.envelope, entry.request
        span = self.router.telemetry.open_span(
            SPAN_NAME, traceparent=event.traceparent, start_ns=time.time_ns()
        )
        traceparent = span.traceparent
        now = self.router.now_ms()
        incident = chain.incident
        # The order Router.handle leaves them in (a key set again moves to the end).
        # Telemetry.close_spans redacts the attributes when it records the span.
        attributes: dict[str, Any] = {"selfheal.event_id": event.id}
        if incident is not None and incident.state == IncidentState.ESCALATED:
            completion = Completion(
                incident_id=chain.snapshot.incident_id,
                status=CompletionStatus.ESCALATED,
                reason="incident already escalated; waiting for an operator",
                source_function=request.source_function,
                target_component=request.target_component,
            )
            attributes["selfheal.incident_id"] = request.resolved_incident_id
            attributes["selfheal.status"] = str(CompletionStatus.ESCALATED)
            self._join(chain, entry, completion, now, traceparent)
            return Step(entry.index, chain, span, attributes, None, joined=True)
        last = chain.last_decision
        if (
            incident is not None
            and not incident.closed
            and last is not None
            and now < chain.pending_until_ms
        ):
            completion = completion_for(last, request).model_copy(
                update={"reason": f"joined pending step: {last.reason}"}
            )
            attributes["selfheal.status"] = str(completion.status)
            attributes.update(span_attributes(last))
            self._join(chain, entry, completion, now, traceparent)
            return Step(entry.index, chain, span, attributes, last, joined=True)
        reused = False
        if incident is None or incident.state == IncidentState.REMEDIATED:
            incident = Incident.new(request, now, knobs.recovery_window_ms)
        elif chain.stored is not None:
            decision, reused = chain.stored, True
        if not reused:
            plain = self.router.plain_decision(request, incident, now, knobs)
            decision = plain or await self.router.fresh_decision(request, incident, now, knobs)
        self._decide(chain, incident, decision, reused, entry, now, traceparent)
        attributes["selfheal.status"] = str(decision.completion_status)
        attributes.update(span_attributes(decision))
        return Step(entry.index, chain, span, attributes, decision, reused=reused)

    def _group(self, chain: Chain) -> Group:
        if chain.group is None:
            chain.group = Group()
            # Every step of the chain was planned from this version; joins included.
            chain.group.expect_version(chain.key, chain.snapshot.version)
        return chain.group

    def _completion(
        self, completion_json: str, entry: Entry, now: int, traceparent: str | None
    ) -> dict[str, str]:
        return event_fields(
            SELF_HEALING_COMPLETED,
            completion_json,
            now_ms=now,
            idempotency_key=completed_key(entry.envelope.id),
            traceparent=traceparent or entry.envelope.traceparent,
        )

    def _join(
        self,
        chain: Chain,
        entry: Entry,
        completion: Completion,
        now: int,
        traceparent: str | None,
    ) -> None:
        """Answer a report that joins the incident's step (deduplicated, like the slow path)."""
        fields = self._completion(
            completion.model_dump_json(by_alias=True), entry, now, traceparent
        )
        marker = self._completed_marker_prefix + fields["idempotencyKey"]
        group = self._group(chain)
        group.xadd_once(marker, PUBLISHED_TTL_S, self._completed, fields, self.keys.streams_index)
        self.ack(group, entry)

    def _decide(
        self,
        chain: Chain,
        incident: Incident,
        decision: Decision,
        reused: bool,
        entry: Entry,
        now: int,
        traceparent: str | None,
    ) -> None:
        """Store (unless reused) and apply a decision: Router._commit plus store.commit."""
        request = entry.request
        after = incident.after(decision, now)  # raises for a decision of another step
        decision_json = _DECISION_JSON.dump_json(decision, by_alias=True).decode()
        request_json = entry.request_json
        completion = self._completion(completion_json(decision, request), entry, now, traceparent)
        timer: dict[str, str] | None = None
        if decision.action == Action.RETRY and decision.route_event is not None:
            timer = event_fields(
                decision.route_event,
                compact_json(decision.route_data),
                now_ms=now,
                idempotency_key=retry_key(decision),
                traceparent=traceparent,
            )
        elif decision.action == Action.PAUSE:
            # The re-check is the same request, delivered to the router after the hold.
            timer = event_fields(
                SELF_HEALING_REQUESTED,
                request_json,
                now_ms=now,
                idempotency_key=recheck_key(decision),
                traceparent=traceparent,
            )
        notify: dict[str, str] | None = None
        if decision.action == Action.ESCALATE and decision.notify:
            notify = event_fields(
                self._notify,
                compact_json(escalation_notice(after, decision, request.problem_summary)),
                now_ms=now,
                idempotency_key=escalated_key(incident),
                traceparent=traceparent,
            )
        pending = decision.fire_at_ms if timer is not None else 0
        decision_key = self.router.store.decision_key(incident)
        # Everything is computed: only now does the group change.
        group = self._group(chain)
        if not reused:
            group.expect_absent(decision_key)
            group.set(decision_key, decision_json, DECISION_TTL_S)
        group.hset(
            chain.key,
            {
                "record": _INCIDENT_JSON.dump_json(after, by_alias=True).decode(),
                "version": str(chain.version + 1),
                "pendingUntil": str(pending),
                "request": request_json,
                "lastDecision": decision_json,
            },
        )
        group.zadd(self.keys.incidents, after.updated_ms, chain.snapshot.incident_id)
        # Marked published: a redelivery after a crash before the ack joins it, not repeats it.
        completed_marker = self._completed_marker_prefix + completion["idempotencyKey"]
        group.xadd_once(
            completed_marker, PUBLISHED_TTL_S, self._completed, completion, self.keys.streams_index
        )
        if notify is not None:
            marker = self.keys.published(self._notify, notify["idempotencyKey"])
            stream = self.stream(self._notify)
            group.xadd_once(marker, PUBLISHED_TTL_S, stream, notify, self.keys.streams_index)
        if timer is not None:
            payload = timer_payload(self.stream(timer["name"]), timer)
            group.schedule(
                self.keys.timers, self.keys.timer_payloads, timer["id"], pending, payload
            )
        if decision.action == Action.ESCALATE:
            entry_fields = manual_entry(incident, decision, request.problem_summary)
            group.xadd(self.keys.manual_queue, entry_fields, None)
        self.ack(group, entry)
        chain.incident = after
        chain.version += 1
        chain.pending_until_ms = pending
        chain.last_decision = decision
        chain.stored = None
