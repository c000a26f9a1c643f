"""The self-healing router: one consumer group, one budget per incident, one path.

Every request — a batch of fresh entries, a reclaimed one, one left over by a
batch — goes the same way, in rounds:

1. one LOAD call reads each event's done marker and each incident hash, and one
   MGET the decisions already stored for open incidents' current steps;
2. the events are routed in order, each incident's against its state as updated
   by the earlier ones (core/routing.py says what each step writes; the policy,
   a probe and the advisor make the decisions);
3. one COMMIT call applies every incident's steps as a guarded group
   (healing/commit.py): the incident still at the version that was read, the
   decisions to store not stored yet. A group applies whole or not at all.

Incidents whose guard failed (another daemon moved them) and replays of an event
already in the round go through another round. The incident record in Redis —
never the request's `attempt` — is the budget, and a decision is stored with its
effects, so a redelivery or a second daemon reuses it instead of deciding again.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Final, Protocol

import anyio
import msgspec
from opentelemetry.trace import Span, use_span

from selfheal.bus.consumer import Delivery, Outcome, PoisonEvent
from selfheal.bus.keys import DONE_TTL_S, PUBLISHED_TTL_S
from selfheal.bus.streams import Bus, timer_payload
from selfheal.core.classify import Classification, FailureClass
from selfheal.core.contracts import (
    Completion,
    CompletionStatus,
    InvalidRequest,
    SelfHealingRequest,
    invalid_completion,
    parse_request,
)
from selfheal.core.events import (
    SELF_HEALING_COMPLETED,
    Envelope,
    Event,
    compact_json,
    envelope_of,
    new_event,
    wire_fields,
)
from selfheal.core.incident import Action, Decision, Incident, IncidentState
from selfheal.core.policy import Knobs, decide
from selfheal.core.routing import (
    Effects,
    Meets,
    Publish,
    Standing,
    Timer,
    all_clear_key,
    completed_key,
    decided,
    deciding_for,
    escalated_key,
    joined,
    meet,
)
from selfheal.healing.commit import Group
from selfheal.healing.domains import Domains, Probe
from selfheal.healing.store import (
    DECISION_TTL_S,
    IncidentSnapshot,
    IncidentStore,
    snapshot_from,
)
from selfheal.taskgroups import first_error
from selfheal.telemetry import Telemetry, current_traceparent, trace_id_of

log = logging.getLogger("selfheal.router")

ROUTER_GROUP = "system/self.healing.router"
# Entries the router reads at a time: each batch's fixed costs (three round trips)
# are spread over this many decisions. bench/bench_router.py uses it.
ROUTER_BATCH = 500
# Entries the consumer's per-entry path handles at once (their round trips overlap).
ROUTER_CONCURRENCY = 16
# Internal event: an escalation to announce (consumed by the notification sink).
NOTIFY_REQUESTED = "system/self.healing.notify"
# Rounds before an incident other daemons keep moving is left to a later delivery.
COMMIT_ATTEMPTS = 8
# Steps per commit within a round (see Router._round): small enough that the last
# chunk's commit is a short wait, big enough that a round is few calls.
COMMIT_CHUNK = 100
SPAN_NAME: Final = "selfheal.route.decide"


@dataclass
class RouterStats:
    """Counters for status."""

    decisions: int = 0
    reused: int = 0
    joined: int = 0
    invalid: int = 0
    escalations: int = 0


class Advice(Protocol):
    """A second opinion on the policy's decision (healing/advice.py asks the model);
    the router takes None for "no advice"."""

    async def revise(
        self, request: SelfHealingRequest, decision: Decision, incident: Incident, knobs: Knobs
    ) -> Decision:
        """Return the decision, possibly adjusted within the policy's clamps."""
        ...


class Arrival(msgspec.Struct, frozen=True):
    """One valid request to route."""

    index: int  # its position in what the caller passed
    entry_id: str | None  # acked with its effects; None when the consumer acks it
    envelope: Envelope
    request: SelfHealingRequest  # read from envelope.data, which is stored and re-sent as it came


class Track(msgspec.Struct):
    """One incident while its requests of a round are routed in order."""

    snapshot: IncidentSnapshot
    key: str
    standing: Standing
    version: int
    stored: Decision | None = None  # stored for the loaded step, until that step moves on
    group: Group | None = None
    broken: bool = False  # a step raised: its later requests are left to `handle`


class Step(msgspec.Struct):
    """A routed request waiting for its incident's commit."""

    arrival: Arrival
    track: Track
    span: Span  # started, ended once its incident's group is applied
    effects: Effects
    reused: bool


class _Chunk:
    """Incidents of a round committed together, with their steps (and the round's plain
    acks, in its last chunk)."""

    __slots__ = ("extra", "steps", "tracks")

    def __init__(self) -> None:
        self.tracks: list[Track] = []
        self.steps: list[Step] = []
        self.extra = Group()


class Router:
    """Routes self-healing requests (plug `handle_batch` and `handle` into a StreamConsumer)."""

    def __init__(
        self,
        bus: Bus,
        telemetry: Telemetry,
        *,
        knobs: Callable[[], Knobs],
        domains: Domains | None = None,
        advice: Advice | None = None,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        jitter: Callable[[], float] = random.random,
        group: str = ROUTER_GROUP,
        on_timers: Callable[[], None] | None = None,
    ) -> None:
        self.bus = bus
        self.keys = bus.keys
        self.store = IncidentStore(bus)
        self.telemetry = telemetry
        self._knobs = knobs
        self.domains = domains or Domains()
        self.advice = advice
        self._clock_ms = clock_ms
        self._jitter = jitter
        self.stats = RouterStats()
        self.group = group  # the consumer group whose entries the router acks
        # Told when a commit scheduled a retry or re-check (the timer pump then looks
        # again instead of sleeping on until its next known due time).
        self._on_timers = on_timers
        self._requests = self.keys.stream("system/self.healing.requested")
        self._done_prefix = self.keys.done(group, "")

    def now_ms(self) -> int:
        """The router's clock (epoch milliseconds)."""
        return self._clock_ms()

    def knobs(self) -> Knobs:
        """Current knobs, with the registered domains' routes and probes."""
        base = self._knobs()
        return Knobs(
            recovery_window_ms=base.recovery_window_ms,
            max_pause_ms=base.max_pause_ms,
            pause_classes=base.pause_classes,
            domains_with_probe=frozenset(self.domains.probes()) | base.domains_with_probe,
            allowed_routes={**base.allowed_routes, **self.domains.routes()},
        )

    # -- entry points -------------------------------------------------------------------

    async def handle_batch(self, deliveries: list[Delivery]) -> list[Outcome]:
        """Route fresh entries; each is ACKED (effects and ack written together),
        DUPLICATE (handled before), or SLOW (for `handle`: an invalid request, or one
        whose routing raised or kept meeting other daemons' writes)."""
        arrivals: list[Arrival] = []
        for index, delivery in enumerate(deliveries):
            try:
                request = parse_request(delivery.envelope.data)
            except InvalidRequest:
                continue  # `handle` answers it
            arrivals.append(Arrival(index, delivery.entry_id, delivery.envelope, request))
        outcomes = [Outcome.SLOW] * len(deliveries)
        for index, outcome in (await self._route(arrivals, raise_errors=False)).items():
            outcomes[index] = outcome
        return outcomes

    async def handle(self, event: Event) -> None:
        """Route one event; the consumer acks it. Raises PoisonEvent for an invalid
        request (answered with completed{invalid} first)."""
        envelope = envelope_of(event)
        try:
            request = parse_request(envelope.data)
        except InvalidRequest as exc:
            self.stats.invalid += 1
            completion = invalid_completion(exc, event.data)
            await self._publish_completion(completion, event)
            raise PoisonEvent(f"invalid request: {exc}") from None
        arrival = Arrival(0, None, envelope, request)
        outcome = (await self._route([arrival], raise_errors=True)).get(0)
        if outcome is None:
            raise RuntimeError(f"incident {request.resolved_incident_id}: too much contention")

    # -- the one path -------------------------------------------------------------------

    async def _route(
        self, arrivals: Sequence[Arrival], *, raise_errors: bool
    ) -> dict[int, Outcome]:
        """Route in rounds until every arrival is settled (or the attempts run out)."""
        outcomes: dict[int, Outcome] = {}
        todo = list(arrivals)
        for _ in range(COMMIT_ATTEMPTS):
            if not todo:
                break
            todo = await self._round(todo, outcomes, raise_errors=raise_errors)
        if todo:
            log.warning("%d request(s) left for a later delivery: incidents kept moving", len(todo))
        return outcomes

    async def _round(
        self, arrivals: list[Arrival], outcomes: dict[int, Outcome], *, raise_errors: bool
    ) -> list[Arrival]:
        """One round; returns the arrivals for the next one.

        The round's incidents are routed in chunks, and each chunk's commit runs in
        Redis while the next chunk is decided here: chunks share no incident, so none
        waits for another's writes, and a big round costs its decisions plus one
        chunk's commit instead of plus all of them.
        """
        now_round, later = _first_of_each_event(arrivals)
        done, tracks = await self._load(now_round)
        acks = Group()
        knobs = self.knobs()
        by_incident: dict[str, list[Arrival]] = {}
        for arrival in now_round:
            by_incident.setdefault(arrival.request.resolved_incident_id, []).append(arrival)
        try:
            async with anyio.create_task_group() as commits:
                chunk = _Chunk()
                for incident_id, queue in by_incident.items():
                    track = tracks[incident_id]
                    chunk.tracks.append(track)
                    for arrival in queue:
                        if done[arrival.index]:
                            if arrival.entry_id is not None:
                                self._ack(acks, arrival)  # handled before; the ack was lost
                            outcomes[arrival.index] = Outcome.DUPLICATE
                            continue
                        if track.broken:
                            continue  # after a request that raised, the rest go one by one
                        try:
                            chunk.steps.append(await self._step(track, arrival, knobs))
                        except Exception as exc:
                            if raise_errors:
                                raise
                            log.info(
                                "request %s left for one-by-one handling: %s",
                                arrival.envelope.id,
                                exc,
                            )
                            track.broken = True
                    if len(chunk.steps) >= COMMIT_CHUNK:
                        commits.start_soon(self._commit, chunk, outcomes, later)
                        chunk = _Chunk()
                chunk.extra = acks
                commits.start_soon(self._commit, chunk, outcomes, later)
        except BaseExceptionGroup as group:
            raise first_error(group) from None  # what a caller would meet without the chunks
        return later

    async def _commit(
        self, chunk: _Chunk, outcomes: dict[int, Outcome], later: list[Arrival]
    ) -> None:
        """Commit a chunk's groups; steps whose group's guard failed go to `later`, the
        rest are settled and their spans ended."""
        groups = [track.group for track in chunk.tracks if track.group is not None]
        if not chunk.extra.empty:
            groups.append(chunk.extra)
        applied = await self.store.apply(groups)
        moved = {id(g) for g, ok in zip(groups, applied, strict=True) if not ok}
        end_ns = time.time_ns()
        timers = False
        for step in chunk.steps:
            if id(step.track.group) in moved:
                # Nothing it wrote was applied, so nothing carries its span: the span is
                # never ended, so never recorded, and the next round starts another.
                later.append(step.arrival)
                continue
            outcomes[step.arrival.index] = Outcome.ACKED
            self._count(step)
            step.span.end(end_time=end_ns)
            timers = timers or step.effects.timer is not None
        if timers and self._on_timers is not None:
            self._on_timers()

    async def _load(self, arrivals: list[Arrival]) -> tuple[dict[int, bool], dict[str, Track]]:
        """Done flags (by arrival index) and a track per incident, in two round trips."""
        incident_ids = list(dict.fromkeys(a.request.resolved_incident_id for a in arrivals))
        keys = [self._done_prefix + a.envelope.id for a in arrivals]
        keys += [self.keys.incident(i) for i in incident_ids]
        flags, hashes = await self.store.load_many(keys, len(arrivals))
        done = {a.index: bool(flag) for a, flag in zip(arrivals, flags, strict=True)}
        tracks: dict[str, Track] = {}
        for incident_id, flat in zip(incident_ids, hashes, strict=True):
            snapshot = snapshot_from(incident_id, zip(flat[::2], flat[1::2], strict=True))
            standing = Standing(
                snapshot.incident, snapshot.pending_until_ms, snapshot.last_decision
            )
            tracks[incident_id] = Track(
                snapshot, self.keys.incident(incident_id), standing, snapshot.version
            )
        # Decisions already stored for open incidents' current steps (a crash mid-way,
        # or another daemon that decided first).
        open_tracks = [
            t for t in tracks.values() if t.standing.incident and not t.standing.incident.closed
        ]
        if open_tracks:
            stored = await self.store.stored_decisions(
                [t.standing.incident for t in open_tracks if t.standing.incident]
            )
            for track, decision in zip(open_tracks, stored, strict=True):
                track.stored = decision
        return done, tracks

    async def _step(self, track: Track, arrival: Arrival, knobs: Knobs) -> Step:
        """Route one request against its incident's current state, into the track's group."""
        envelope, request = arrival.envelope, arrival.request
        span = self.telemetry.start_span(
            SPAN_NAME, traceparent=envelope.traceparent, start_ns=time.time_ns()
        )
        # The events the step writes carry its span: the incident stays one trace.
        traceparent = current_traceparent(span) or envelope.traceparent
        now = self.now_ms()
        meets = meet(track.standing, now)
        reused = False
        decision_key: str | None = None
        if meets != Meets.DECISION:
            effects = joined(track.standing, meets, request, envelope.id)
        else:
            incident = deciding_for(track.standing, request, now, knobs.recovery_window_ms)
            decision_key = self.store.decision_key(incident)
            if incident is track.standing.incident and track.stored is not None:
                decision, reused = track.stored, True
            else:
                # With an advisor the span is current while deciding, so the model calls
                # are its children (making it current costs a few µs: only then). A
                # step that raises leaves its span never ended, so never recorded.
                current = (
                    use_span(
                        span,
                        end_on_exit=False,
                        record_exception=False,
                        set_status_on_exception=False,
                    )
                    if self.advice is not None
                    else nullcontext()
                )
                with current:
                    decision = await self.decide(request, incident, now, knobs)
            effects = decided(
                incident,
                request,
                decision,
                stored=reused,
                now_ms=now,
                cause_id=envelope.id,
                request_json=envelope.data,
                notify_event=NOTIFY_REQUESTED,
                trace_id=trace_id_of(traceparent),
            )
        effects.attributes["selfheal.event_id"] = envelope.id
        span.set_attributes(effects.attributes)
        self._write(track, arrival, effects, decision_key, now, traceparent)
        return Step(arrival, track, span, effects, reused)

    async def decide(
        self, request: SelfHealingRequest, incident: Incident, now: int, knobs: Knobs
    ) -> Decision:
        """The policy's decision for the incident's current step: a paused incident's
        probe is asked first, and the advisor (if any) may adjust it within the clamps."""
        classification: Classification | None = None
        probe = self.domains.probes().get(incident.domain)
        if probe is not None and incident.state == IncidentState.PAUSED:
            classification = await _recheck(probe, request, incident.domain)
        decision = decide(
            request, incident, now, knobs, self._jitter(), classification=classification
        )
        if self.advice is None:
            return decision
        return await self.advice.revise(request, decision, incident, knobs)

    def _group(self, track: Track) -> Group:
        if track.group is None:
            track.group = Group()
            # Every step of the track was routed from this version; joins included.
            track.group.expect_version(track.key, track.snapshot.version)
        return track.group

    def _write(
        self,
        track: Track,
        arrival: Arrival,
        effects: Effects,
        decision_key: str | None,
        now: int,
        traceparent: str | None,
    ) -> None:
        """Add the step's effects to its incident's group and move the track on."""
        # Everything is built before the group changes: a step that raises leaves it whole.
        completion = self._fields(effects.completion, now, traceparent)
        notice = self._fields(effects.notify, now, traceparent) if effects.notify else None
        timed = self._fields(effects.timer, now, traceparent) if effects.timer else None
        record, decision = effects.record, effects.decision
        stored_json = decision.to_json() if decision is not None else ""
        record_json = record.to_json() if record is not None else ""
        group = self._group(track)
        self._publish_once(group, effects.completion, completion)
        if record is not None and decision is not None:
            if effects.store_decision:
                assert decision_key is not None
                group.expect_absent(decision_key)  # another daemon's decision wins; we reload
                group.set(decision_key, stored_json, DECISION_TTL_S)
            group.hset(
                track.key,
                {
                    "record": record_json,
                    "version": str(track.version + 1),
                    "pendingUntil": str(effects.pending_until_ms),
                    "request": arrival.envelope.data,
                    "lastDecision": stored_json,
                },
            )
            group.zadd(self.keys.incidents, record.updated_ms, track.snapshot.incident_id)
        if effects.notify is not None and notice is not None:
            self._publish_once(group, effects.notify, notice)
        if effects.timer is not None and timed is not None:
            payload = timer_payload(self.keys.stream(effects.timer.name), timed)
            group.schedule(
                self.keys.timers,
                self.keys.timer_payloads,
                timed["id"],
                effects.timer.due_ms,
                payload,
            )
        if effects.manual_entry is not None:
            group.xadd(self.keys.manual_queue, effects.manual_entry, None)
        if arrival.entry_id is not None:
            self._ack(group, arrival)
        if record is not None:
            track.standing = Standing(record, effects.pending_until_ms, decision)
            track.version += 1
            track.stored = None

    @staticmethod
    def _fields(event: Publish | Timer, now: int, traceparent: str | None) -> dict[str, str]:
        """The stream fields of an event a step or a remediation writes."""
        return wire_fields(
            event.name,
            event.data_json,
            now_ms=now,
            idempotency_key=event.once_key,
            traceparent=traceparent,
        )

    def _publish_once(self, group: Group, event: Publish, fields: dict[str, str]) -> None:
        """XADD the event inside `group`, at most once per its idempotency key."""
        group.xadd_once(
            self.keys.published(event.name, event.once_key),
            PUBLISHED_TTL_S,
            self.keys.stream(event.name),
            fields,
            self.keys.streams_index,
        )

    def _ack(self, group: Group, arrival: Arrival) -> None:
        """Mark the entry handled and ack it (inside `group`)."""
        assert arrival.entry_id is not None
        group.complete(
            self._done_prefix + arrival.envelope.id,
            self._requests,
            self.group,
            arrival.entry_id,
            DONE_TTL_S,
        )

    def _count(self, step: Step) -> None:
        stats = self.stats
        effects = step.effects
        if effects.record is None:
            stats.joined += 1
        elif effects.decision is not None:
            stats.decisions += 1
            stats.reused += int(step.reused)
            stats.escalations += int(effects.decision.action == Action.ESCALATE)

    async def _publish_completion(self, completion: Completion, cause: Event) -> None:
        answer = new_event(
            SELF_HEALING_COMPLETED,
            completion.to_data(),
            now_ms=self.now_ms(),
            idempotency_key=completed_key(cause.id),
            traceparent=cause.traceparent,
        )
        await self.bus.publish(answer, dedupe=True)

    # -- remediation ----------------------------------------------------------------------

    async def remediate(self, incident_id: str, *, cause: Event) -> bool:
        """Close an incident as fixed (its target succeeded); announce the all-clear."""
        for _ in range(COMMIT_ATTEMPTS):
            snapshot = await self.store.load(incident_id)
            incident = snapshot.incident
            if incident is None or incident.state == IncidentState.REMEDIATED:
                return False
            now = self.now_ms()
            fixed = incident.remediated(now)
            group = self.store.record_group(snapshot, fixed)
            completion = Completion(
                incident_id=incident_id,
                status=CompletionStatus.REMEDIATED,
                reason=f"{cause.name} after {incident.retries_used} retries",
                source_function=incident.source_function,
                target_component=incident.target_component,
            )
            answer = Publish(
                SELF_HEALING_COMPLETED,
                completion.model_dump_json(by_alias=True),
                completed_key(cause.id),
            )
            self._publish_once(group, answer, self._fields(answer, now, cause.traceparent))
            announced = self.keys.published(NOTIFY_REQUESTED, escalated_key(incident))
            if await self.bus.client.exists(announced):
                notice = {"kind": "all_clear", "incident": fixed.to_dict(), "decision": {}}
                all_clear = Publish(NOTIFY_REQUESTED, compact_json(notice), all_clear_key(incident))
                fields = self._fields(all_clear, now, cause.traceparent)
                self._publish_once(group, all_clear, fields)
            if (await self.store.apply([group]))[0]:
                return True
        raise RuntimeError(f"incident {incident_id}: too much contention")


async def _recheck(probe: Probe, request: SelfHealingRequest, domain: str) -> Classification | None:
    """A paused incident's re-check: a healthy probe turns the hold into a retry."""
    try:
        healthy = await probe(request)
    except Exception as exc:  # a broken probe counts as "still down"
        log.warning("probe for %s failed: %s", domain, exc)
        healthy = False
    if healthy:
        return Classification(FailureClass.TRANSIENT_TRANSPORT, "re-check: target healthy")
    return None


def _first_of_each_event(arrivals: list[Arrival]) -> tuple[list[Arrival], list[Arrival]]:
    """Split off replays of an event already in the round (they follow, as duplicates)."""
    seen: set[str] = set()
    first: list[Arrival] = []
    later: list[Arrival] = []
    for arrival in arrivals:
        if arrival.envelope.id in seen:
            later.append(arrival)
        else:
            seen.add(arrival.envelope.id)
            first.append(arrival)
    return first, later


__all__ = [
    "NOTIFY_REQUESTED",
    "ROUTER_BATCH",
    "ROUTER_CONCURRENCY",
    "ROUTER_GROUP",
    "Advice",
    "Router",
]
