"""The self-healing router: one consumer group, one budget per incident.

For each `system/self.healing.requested` it validates the contract, loads the
incident (the only source of truth for the attempt count), takes the decision
already stored for the incident's current step or computes and stores one, and
then applies it in one transaction: the incident update, the retry event or
re-check timer, the completion, the escalation entry and the (latched)
notification. A report that arrives while a retry is still pending joins the
incident without spending budget.

`handle_batch` does the same for a whole consumer batch in two round trips (see
healing/batch.py); whatever it cannot settle there comes back through `handle`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from selfheal.bus.consumer import Delivery, Outcome, PoisonEvent
from selfheal.bus.streams import Bus
from selfheal.core.classify import Classification, FailureClass
from selfheal.core.contracts import (
    Completion,
    CompletionStatus,
    InvalidRequest,
    RequestView,
    invalid_completion,
    parse_request,
)
from selfheal.core.events import SELF_HEALING_COMPLETED, SELF_HEALING_REQUESTED, Event, new_event
from selfheal.core.incident import Incident, IncidentState
from selfheal.core.policy import Action, Decision, Knobs, completion_for, decide
from selfheal.healing.store import Commit, IncidentSnapshot, IncidentStore, manual_entry
from selfheal.healing.wire import (
    all_clear_key,
    completed_key,
    escalated_key,
    escalation_notice,
    recheck_key,
    retry_key,
    span_attributes,
)
from selfheal.telemetry import Telemetry, context_from_traceparent, current_traceparent

if TYPE_CHECKING:
    from selfheal.healing.batch import BatchRouter

log = logging.getLogger("selfheal.router")

ROUTER_GROUP = "system/self.healing.router"
# Entries the router reads at a time. A backlog is routed a batch at a time (a few
# LOAD calls, then COMMIT calls written as incidents are planned): larger batches
# spread each batch's fixed costs thinner (measured: ~3-5% less CPU a decision at 500
# than at 200; no gain at 1000). bench/bench_router.py uses it.
ROUTER_BATCH = 500
# Requests the per-entry path handles at once (their round trips overlap).
ROUTER_CONCURRENCY = 16
# Internal event: an escalation to announce (consumed by the notification sink).
NOTIFY_REQUESTED = "system/self.healing.notify"
# Optimistic-lock retries when two daemons update the same incident at once.
COMMIT_ATTEMPTS = 8

Probe = Callable[[RequestView], Awaitable[bool]]


@dataclass
class RouterStats:
    """Counters for status."""

    decisions: int = 0
    reused: int = 0
    joined: int = 0
    invalid: int = 0
    escalations: int = 0


class Adviser:
    """What the router needs from the optional LLM advisor (see healing/advisor.py)."""

    async def advise_decision(
        self, request: RequestView, decision: Decision, incident: Incident, knobs: Knobs
    ) -> Decision:
        """Return the decision, possibly adjusted within the policy's clamps."""
        return decision


class Router:
    """Handles self-healing requests; plug `handle` into a StreamConsumer."""

    def __init__(
        self,
        bus: Bus,
        telemetry: Telemetry,
        *,
        knobs: Callable[[], Knobs],
        probes: Mapping[str, Probe] | None = None,
        adviser: Adviser | None = None,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        jitter: Callable[[], float] = random.random,
        group: str = ROUTER_GROUP,
    ) -> None:
        self.bus = bus
        self.store = IncidentStore(bus)
        self.telemetry = telemetry
        self._knobs = knobs
        self.probes = dict(probes or {})
        self.adviser = adviser or Adviser()
        self._clock_ms = clock_ms
        self._jitter = jitter
        self.stats = RouterStats()
        self.group = group  # the consumer group whose entries handle_batch acks
        self._batch: BatchRouter | None = None

    def now_ms(self) -> int:
        """The router's clock (epoch milliseconds)."""
        return self._clock_ms()

    async def handle_batch(self, entries: list[Delivery]) -> list[Outcome]:
        """Route a batch of fresh entries; plug into StreamConsumer(batch_handler=...)."""
        if self._batch is None:
            from selfheal.healing.batch import BatchRouter  # batch.py builds on this module

            self._batch = BatchRouter(self, NOTIFY_REQUESTED)
        return await self._batch.handle(entries)

    def knobs(self) -> Knobs:
        """Current knobs, with the domains that have a registered probe."""
        base = self._knobs()
        return Knobs(
            recovery_window_ms=base.recovery_window_ms,
            max_pause_ms=base.max_pause_ms,
            pause_classes=base.pause_classes,
            domains_with_probe=frozenset(self.probes) | base.domains_with_probe,
            allowed_routes=base.allowed_routes,
        )

    async def handle(self, event: Event) -> None:
        """Route one request event (raises PoisonEvent for an invalid contract)."""
        parent = context_from_traceparent(event.traceparent)
        with self.telemetry.decision_span(
            "selfheal.route.decide", {"event_id": event.id}, context=parent
        ) as span:
            try:
                request = parse_request(event.data)
            except InvalidRequest as exc:
                self.stats.invalid += 1
                span.set_attribute("selfheal.action", "invalid")
                span.set_attribute("selfheal.field", exc.field)
                await self._complete(invalid_completion(exc, event.data), event, dedupe=True)
                raise PoisonEvent(f"invalid request: {exc}") from None
            span.set_attribute("selfheal.incident_id", request.resolved_incident_id)
            decision, status = await self._route(request, event)
            span.set_attribute("selfheal.status", str(status))
            if decision is not None:
                span.set_attributes(span_attributes(decision))

    async def _route(
        self, request: RequestView, event: Event
    ) -> tuple[Decision | None, CompletionStatus]:
        for _ in range(COMMIT_ATTEMPTS):
            now = self._clock_ms()
            snapshot = await self.store.load(request.resolved_incident_id)
            incident = snapshot.incident
            if incident is not None and incident.state == IncidentState.ESCALATED:
                return await self._join_closed(request, snapshot, event)
            if (
                incident is not None
                and not incident.closed
                and snapshot.last_decision is not None
                and now < snapshot.pending_until_ms
            ):
                return await self._join_pending(request, snapshot, event)
            if incident is None or incident.state == IncidentState.REMEDIATED:
                incident = Incident.new(request, now, self.knobs().recovery_window_ms)
            decision = await self._decision_for(request, incident, now)
            applied = await self.store.commit(
                snapshot, self._commit(request, incident, decision, event, now)
            )
            if applied:
                self.stats.decisions += 1
                if decision.action == Action.ESCALATE:
                    self.stats.escalations += 1
                return decision, decision.completion_status
        raise RuntimeError(f"incident {request.resolved_incident_id}: too much contention")

    async def _decision_for(self, request: RequestView, incident: Incident, now: int) -> Decision:
        stored = await self.store.stored_decision(incident)
        if stored is not None:
            self.stats.reused += 1
            return stored
        decision = await self.fresh_decision(request, incident, now, self.knobs())
        return await self.store.reserve_decision(incident, decision)

    def plain_decision(
        self, request: RequestView, incident: Incident, now: int, knobs: Knobs
    ) -> Decision | None:
        """fresh_decision without awaiting, when there is no probe to run and no advisor
        to ask (the usual case); None when there is."""
        if type(self.adviser) is not Adviser or (
            incident.state == IncidentState.PAUSED and incident.domain in self.probes
        ):
            return None
        return decide(request, incident, now, knobs, self._jitter())

    async def fresh_decision(
        self, request: RequestView, incident: Incident, now: int, knobs: Knobs
    ) -> Decision:
        """Probe, policy and advice for the incident's current step (not stored yet)."""
        plain = self.plain_decision(request, incident, now, knobs)
        if plain is not None:
            return plain
        classification = await self._probe_classification(request, incident)
        decision = decide(
            request, incident, now, knobs, self._jitter(), classification=classification
        )
        if type(self.adviser) is Adviser:  # no advisor configured: nothing to ask
            return decision
        return await self.adviser.advise_decision(request, decision, incident, knobs)

    async def _probe_classification(
        self, request: RequestView, incident: Incident
    ) -> Classification | None:
        """A paused incident's re-check: a healthy probe turns the hold into a retry."""
        probe = self.probes.get(incident.domain)
        if probe is None or incident.state != IncidentState.PAUSED:
            return None
        try:
            healthy = await probe(request)
        except Exception as exc:  # a broken probe counts as "still down"
            log.warning("probe for %s failed: %s", incident.domain, exc)
            healthy = False
        if healthy:
            return Classification(FailureClass.TRANSIENT_TRANSPORT, "re-check: target healthy")
        return None

    def _commit(
        self,
        request: RequestView,
        incident: Incident,
        decision: Decision,
        event: Event,
        now: int,
    ) -> Commit:
        traceparent = current_traceparent()
        change = Commit(
            incident=incident.after(decision, now),
            decision=decision,
            request=request.to_data(),
        )
        # Marked published: a redelivery after a crash before the ack joins it, not repeats it.
        change.publish_once.append(
            self._completion_event(completion_for(decision, request), event, now, traceparent)
        )
        if decision.action == Action.RETRY and decision.route_event is not None:
            retry = new_event(
                decision.route_event,
                decision.route_data,
                now_ms=now,
                idempotency_key=retry_key(decision),
                traceparent=traceparent,
            )
            change.schedule.append((retry, decision.fire_at_ms))
            change.pending_until_ms = decision.fire_at_ms
        elif decision.action == Action.PAUSE:
            # The re-check is the same request, delivered to the router after the hold.
            recheck = new_event(
                SELF_HEALING_REQUESTED,
                request.to_data(),
                now_ms=now,
                idempotency_key=recheck_key(decision),
                traceparent=traceparent,
            )
            change.schedule.append((recheck, decision.fire_at_ms))
            change.pending_until_ms = decision.fire_at_ms
        elif decision.action == Action.ESCALATE:
            change.manual_entry = manual_entry(incident, decision, request.problem_summary)
            if decision.notify:
                change.publish_once.append(
                    new_event(
                        NOTIFY_REQUESTED,
                        escalation_notice(change.incident, decision, request.problem_summary),
                        now_ms=now,
                        idempotency_key=escalated_key(incident),
                        traceparent=traceparent,
                    )
                )
        return change

    def _completion_event(
        self, completion: Completion, cause: Event, now: int, traceparent: str | None
    ) -> Event:
        return new_event(
            SELF_HEALING_COMPLETED,
            completion.to_data(),
            now_ms=now,
            idempotency_key=completed_key(cause.id),
            traceparent=traceparent or cause.traceparent,
        )

    async def _complete(self, completion: Completion, cause: Event, *, dedupe: bool) -> None:
        now = self._clock_ms()
        event = self._completion_event(completion, cause, now, current_traceparent())
        await self.bus.publish(event, dedupe=dedupe)

    async def remediate(self, incident_id: str, *, cause: Event) -> bool:
        """Close an incident as fixed (its target succeeded); announce the all-clear."""
        for _ in range(COMMIT_ATTEMPTS):
            snapshot = await self.store.load(incident_id)
            incident = snapshot.incident
            if incident is None or incident.state == IncidentState.REMEDIATED:
                return False
            now = self._clock_ms()
            fixed = incident.remediated(now)
            if not await self.store.update_record(snapshot, fixed):
                continue
            await self._complete(
                Completion(
                    incident_id=incident_id,
                    status=CompletionStatus.REMEDIATED,
                    reason=f"{cause.name} after {incident.retries_used} retries",
                    source_function=incident.source_function,
                    target_component=incident.target_component,
                ),
                cause,
                dedupe=True,
            )
            announced = self.bus.keys.published(NOTIFY_REQUESTED, escalated_key(incident))
            if await self.bus.client.exists(announced):
                await self.bus.publish(
                    new_event(
                        NOTIFY_REQUESTED,
                        {"kind": "all_clear", "incident": fixed.to_dict(), "decision": {}},
                        now_ms=now,
                        idempotency_key=all_clear_key(incident),
                        traceparent=cause.traceparent,
                    ),
                    dedupe=True,
                )
            return True
        raise RuntimeError(f"incident {incident_id}: too much contention")

    async def _join_pending(
        self, request: RequestView, snapshot: IncidentSnapshot, event: Event
    ) -> tuple[Decision | None, CompletionStatus]:
        """Another report while a retry is pending: same loop, no budget spent."""
        self.stats.joined += 1
        decision = snapshot.last_decision
        assert decision is not None
        completion = completion_for(decision, request)
        await self._complete(
            completion.model_copy(update={"reason": f"joined pending step: {decision.reason}"}),
            event,
            dedupe=True,
        )
        return decision, completion.status

    async def _join_closed(
        self, request: RequestView, snapshot: IncidentSnapshot, event: Event
    ) -> tuple[Decision | None, CompletionStatus]:
        """A report for an escalated incident waits with it for the operator (no new alert)."""
        self.stats.joined += 1
        await self._complete(
            Completion(
                incident_id=snapshot.incident_id,
                status=CompletionStatus.ESCALATED,
                reason="incident already escalated; waiting for an operator",
                source_function=request.source_function,
                target_component=request.target_component,
            ),
            event,
            dedupe=True,
        )
        return None, CompletionStatus.ESCALATED


__all__ = [
    "NOTIFY_REQUESTED",
    "ROUTER_BATCH",
    "ROUTER_CONCURRENCY",
    "ROUTER_GROUP",
    "Adviser",
    "Router",
]
