"""The router's one path on a real redis-server: batches of any size, rounds, races, replays.

A request routed in a batch of many and the same request routed alone (the
consumer's per-entry path) go the same way: the tests compare the two, and
stage the races the rounds exist for.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

import pytest
import redis.asyncio as aioredis

from selfheal.bus.consumer import ConsumerOptions, Delivery, Outcome, StreamConsumer, delivery_of
from selfheal.bus.keys import Keys
from selfheal.bus.streams import Bus
from selfheal.core.contracts import parse_request
from selfheal.core.events import (
    DATA_DEPTH_LIMIT,
    EVENT_DATA_LIMIT,
    SELF_HEALING_COMPLETED,
    SELF_HEALING_REQUESTED,
    Event,
    compact_json,
    new_event,
)
from selfheal.core.policy import Knobs
from selfheal.healing.router import NOTIFY_REQUESTED, ROUTER_GROUP, Router
from selfheal.spanfile import read_spans
from selfheal.telemetry import Telemetry
from tests.support.routing import backup_domains, request, stream_events

pytestmark = pytest.mark.anyio

START_MS = 1_900_000_000_000
OPTIONS = ConsumerOptions(batch=100, block_ms=20, reclaim_idle_ms=60_000)


def stepping_clock(step_ms: int) -> Callable[[], int]:
    """A clock that moves `step_ms` on every read (deterministic across both paths)."""
    now = [START_MS]

    def read() -> int:
        now[0] += step_ms
        return now[0]

    return read


def make(redis_client: aioredis.Redis, telemetry: Telemetry, namespace: str, **kw: Any) -> Router:
    kw.setdefault("jitter", lambda: 0.5)
    return Router(
        Bus(redis_client, Keys(namespace)), telemetry, knobs=Knobs, domains=backup_domains(), **kw
    )


SLOW_CALLS: dict[str, int] = {}


def consumer(router: Router, *, batched: bool) -> StreamConsumer:
    """A router consumer; SLOW_CALLS counts what took the per-entry path, per namespace."""
    namespace = router.bus.keys.namespace
    SLOW_CALLS[namespace] = 0

    async def slow(event: Event) -> None:
        SLOW_CALLS[namespace] += 1
        await router.handle(event)

    return StreamConsumer(
        router.bus,
        SELF_HEALING_REQUESTED,
        ROUTER_GROUP,
        "c",
        slow,
        options=OPTIONS,
        batch_handler=router.handle_batch if batched else None,
    )


async def publish(router: Router, payloads: list[dict[str, Any]]) -> list[Event]:
    await router.bus.ensure_group(SELF_HEALING_REQUESTED, ROUTER_GROUP)
    events = [new_event(SELF_HEALING_REQUESTED, p, now_ms=START_MS) for p in payloads]
    await router.bus.publish_many(events)
    return events


async def completions(router: Router) -> list[dict[str, Any]]:
    return [e.data for e in await stream_events(router.bus, SELF_HEALING_COMPLETED)]


async def pending(router: Router) -> int:
    info = await router.bus.client.xpending(
        router.bus.keys.stream(SELF_HEALING_REQUESTED), ROUTER_GROUP
    )
    return int(info["pending"])


def meaning(request_data: Any) -> dict[str, Any]:
    """A stored or re-sent request as the router reads it back."""
    return parse_request(json.dumps(request_data)).to_data()


def without_traces(incident: dict[str, Any]) -> dict[str, Any]:
    """An incident record without its steps' trace ids: each step names its own span's
    trace, the one thing two routings never share."""
    for step in incident["history"]:
        assert len(step.pop("traceId", "0" * 32)) == 32
    return incident


async def state(router: Router, incident_id: str) -> dict[str, Any]:
    """What one incident looks like in Redis, without the event ids and trace ids."""
    snap = await router.store.load(incident_id)
    assert snap.incident is not None and snap.last_decision is not None
    return {
        "incident": without_traces(snap.incident.to_dict()),
        "version": snap.version,
        "pendingUntil": snap.pending_until_ms,
        # The batch stores a request as it came, the slow path as the model writes it:
        # the same request either way.
        "request": meaning(snap.request),
        "decision": snap.last_decision.to_dict(),
        "stored": await router.store.stored_decision(snap.incident),
    }


async def timers(router: Router) -> list[dict[str, Any]]:
    """Scheduled events (name, data, idempotency key, due), ids and trace left out."""
    bus = router.bus
    due = dict(await bus.client.zrange(bus.keys.timers, 0, -1, withscores=True))
    out = []
    for event_id, payload in (await bus.client.hgetall(bus.keys.timer_payloads)).items():
        fields = json.loads(payload)["fields"]
        out.append(
            {
                "name": fields["name"],
                "data": (
                    parse_request(fields["data"]).to_data()
                    if fields["name"] == SELF_HEALING_REQUESTED
                    else json.loads(fields["data"])
                ),
                "key": fields["idempotencyKey"],
                "ts": fields["ts"],
                "due": int(due[event_id]),
            }
        )
    return sorted(out, key=lambda t: t["key"])


async def route_both_ways(
    redis_client: aioredis.Redis, telemetry: Telemetry, payloads: list[dict[str, Any]]
) -> tuple[Router, Router]:
    """The same requests routed one by one and as one batch, in two namespaces."""
    routers = []
    for name, batched in (("one", False), ("many", True)):
        router = make(redis_client, telemetry, name, clock_ms=lambda: START_MS)
        await publish(router, payloads)
        await consumer(router, batched=batched).poll_once()
        assert router.stats.decisions == len(payloads) and await pending(router) == 0
        routers.append(router)
    return routers[0], routers[1]


async def test_a_batch_writes_what_requests_routed_alone_write(
    redis_client: aioredis.Redis, telemetry: Telemetry
) -> None:
    payloads = [request(incident=f"inc:{i}") for i in range(6)]
    payloads.append(request(incident="inc:hard", evidence=[{"errno": "ENOSPC"}]))
    payloads.append(
        request(incident="inc:manual", evidence=[{"errno": "EACCES"}], fallbackAction="manual")
    )
    # Stored as it came by the batch, as the model writes it one by one: read back equal.
    payloads.append(request(incident="inc:bare", evidence=["Connection timed out"]))
    one, many = await route_both_ways(redis_client, telemetry, payloads)
    assert (SLOW_CALLS["one"], SLOW_CALLS["many"]) == (len(payloads), 0)
    for incident_id in [p["incidentId"] for p in payloads]:
        assert await state(many, incident_id) == await state(one, incident_id)
    assert await completions(many) == await completions(one)
    assert await timers(many) == await timers(one)
    assert await many.store.manual_queue() != []
    strip = [{k: v for k, v in e.items() if k != "entryId"} for e in await one.store.manual_queue()]
    assert [
        {k: v for k, v in e.items() if k != "entryId"} for e in await many.store.manual_queue()
    ] == strip
    notified = [e.data for e in await stream_events(many.bus, NOTIFY_REQUESTED)]
    alone = [e.data for e in await stream_events(one.bus, NOTIFY_REQUESTED)]
    for notice in [*notified, *alone]:
        without_traces(notice["incident"])
    assert notified == alone
    assert [n["incident"]["incidentId"] for n in notified] == ["inc:hard"], "manual does not notify"
    assert many.stats.escalations == one.stats.escalations == 2


async def test_events_of_one_incident_in_a_batch_spend_the_budget_as_one_by_one(
    redis_client: aioredis.Redis, telemetry: Telemetry
) -> None:
    # Each report comes after the previous retry was due: every one is a decision, so
    # one batch holds retries 1-3, the escalation and a report joining the escalation.
    payloads = [request(incident="inc:chain") for _ in range(5)]
    routers = {}
    for name, batched in (("one", False), ("many", True)):
        router = make(redis_client, telemetry, name, clock_ms=stepping_clock(10_000))
        routers[name] = router
        await publish(router, payloads)
        await consumer(router, batched=batched).poll_once()
        assert await pending(router) == 0
    one, many = routers["one"], routers["many"]
    assert SLOW_CALLS["many"] == 0, "the whole chain went through the batch"
    assert await state(many, "inc:chain") == await state(one, "inc:chain")
    statuses = [c["status"] for c in await completions(many)]
    assert statuses == ["scheduled", "scheduled", "scheduled", "exhausted", "escalated"]
    assert await completions(many) == await completions(one)
    assert await timers(many) == await timers(one)
    snap = await many.store.load("inc:chain")
    assert snap.incident is not None and snap.incident.retries_used == 3 and snap.version == 4
    assert len(await many.store.manual_queue()) == 1
    assert len(await stream_events(many.bus, NOTIFY_REQUESTED)) == 1, "latched"
    assert (many.stats.decisions, many.stats.joined) == (4, 1)


async def test_reports_while_a_retry_is_pending_join_it(
    redis_client: aioredis.Redis, telemetry: Telemetry
) -> None:
    router = make(redis_client, telemetry, "join", clock_ms=lambda: START_MS)
    await publish(router, [request(incident="inc:join") for _ in range(3)])
    await consumer(router, batched=True).poll_once()
    assert SLOW_CALLS["join"] == 0
    snap = await router.store.load("inc:join")
    assert snap.incident is not None and snap.incident.retries_used == 1
    done = await completions(router)
    assert [c["status"] for c in done] == ["scheduled"] * 3
    assert [c["reason"].startswith("joined pending step") for c in done] == [False, True, True]
    assert len(await timers(router)) == 1
    assert (router.stats.decisions, router.stats.joined) == (1, 2)


async def test_version_moved_between_load_and_commit_is_routed_again(
    redis_client: aioredis.Redis, telemetry: Telemetry
) -> None:
    router = make(redis_client, telemetry, "cas", clock_ms=stepping_clock(10_000))
    await publish(router, [request(incident="inc:cas")])
    await consumer(router, batched=True).poll_once()  # the incident exists, version 1
    await publish(router, [request(incident="inc:cas")])
    key = router.bus.keys.incident("inc:cas")
    decide = router.decide
    calls = []

    async def racing(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            await redis_client.hincrby(key, "version", 1)  # another daemon commits meanwhile
        return await decide(*args)

    router.decide = racing  # type: ignore[method-assign]
    entries = await read(router)
    assert await router.handle_batch(entries) == [Outcome.ACKED]
    assert len(calls) == 2, "the losing round wrote nothing; the next one decided again"
    snap = await router.store.load("inc:cas")
    assert snap.version == 3 and snap.incident is not None and snap.incident.retries_used == 2
    assert [c["status"] for c in await completions(router)] == ["scheduled", "scheduled"]
    assert len(await timers(router)) == 2 and await pending(router) == 0
    # The losing round's span was never ended, so never written; the retries that were
    # scheduled carry the spans that were.
    assert telemetry.force_flush()
    spans = [s for s in read_spans(telemetry.span_file) if s["name"] == "selfheal.route.decide"]
    assert len(spans) == 2
    payloads = (await redis_client.hgetall(router.bus.keys.timer_payloads)).values()
    carried = {json.loads(p)["fields"]["traceparent"].split("-")[2] for p in payloads}
    assert {"0x" + span_id for span_id in carried} == {s["context"]["span_id"] for s in spans}


async def test_decision_stored_by_another_daemon_is_reused(
    redis_client: aioredis.Redis, telemetry: Telemetry
) -> None:
    router = make(redis_client, telemetry, "nx", clock_ms=stepping_clock(10_000))
    await publish(router, [request(incident="inc:nx")])
    await consumer(router, batched=True).poll_once()
    await publish(router, [request(incident="inc:nx")])
    decide = router.decide
    theirs: list[Any] = []

    async def racing(request: Any, incident: Any, now: int, knobs: Knobs) -> Any:
        if not theirs:
            # Another daemon stores its own decision for this step meanwhile.
            decision = await decide(request, incident, now - 5, knobs)
            key = router.store.decision_key(incident)
            await redis_client.set(key, compact_json(decision.to_dict()))
            theirs.append(decision)
        return await decide(request, incident, now, knobs)

    router.decide = racing  # type: ignore[method-assign]
    entries = await read(router)
    assert await router.handle_batch(entries) == [Outcome.ACKED]
    snap = await router.store.load("inc:nx")
    assert snap.last_decision == theirs[0], "the stored decision counts, not ours"
    assert router.stats.reused == 1


async def test_redelivered_entries_are_acked_without_deciding_again(
    redis_client: aioredis.Redis, telemetry: Telemetry
) -> None:
    router = make(redis_client, telemetry, "dup", clock_ms=lambda: START_MS)
    [first, second] = await publish(router, [request(incident="a"), request(incident="b")])
    # `first` was handled before but its ack was lost; `second` is published twice.
    await router.bus.client.set(router.bus.keys.done(ROUTER_GROUP, first.id), "1")
    await router.bus.publish(second)
    member = consumer(router, batched=True)
    await member.poll_once()
    assert await pending(router) == 0
    assert member.stats.duplicates == 2 and member.stats.handled == 1
    assert SLOW_CALLS["dup"] == 0, "the replay in the batch was acked as done, not routed"
    assert router.stats.decisions == 1
    assert [c["incidentId"] for c in await completions(router)] == ["b"]
    assert (await router.store.load("a")).incident is None, "nothing decided for a"


async def test_invalid_request_in_a_batch_is_answered_and_dead_lettered(
    redis_client: aioredis.Redis, telemetry: Telemetry
) -> None:
    router = make(redis_client, telemetry, "bad")
    bad = request(incident="inc:bad")
    bad["retryPolicy"]["sleepMinMs"] = -5
    await publish(router, [request(incident="inc:ok"), bad])
    member = consumer(router, batched=True)
    await member.poll_once()
    statuses = sorted(c["status"] for c in await completions(router))
    assert statuses == ["invalid", "scheduled"]
    [dead] = await router.bus.dead_letters()
    assert "retryPolicy.sleepMinMs" in dead["reason"]
    assert await pending(router) == 0 and router.stats.invalid == 1


async def test_entries_whose_data_is_not_an_events_are_dead_lettered_by_the_batch(
    redis_client: aioredis.Redis, telemetry: Telemetry
) -> None:
    # Their envelopes are valid, so the consumer hands them to the batch with the data
    # unparsed; the batch leaves them to the per-entry path, which buries them.
    router = make(redis_client, telemetry, "rawbad")
    await publish(router, [request(incident="inc:good")])
    stream = router.bus.keys.stream(SELF_HEALING_REQUESTED)
    for n, data in enumerate(["not json", "[1, 2]", '{"a": NaN}', '{"n": 1e999}']):
        wire = new_event(SELF_HEALING_REQUESTED, {}, now_ms=START_MS + n).to_wire()
        await redis_client.xadd(stream, {**wire, "data": data})
    member = consumer(router, batched=True)
    await member.poll_once()
    dead = await router.bus.dead_letters()
    assert len(dead) == 4 and all("undecodable event: data" in d["reason"] for d in dead), dead
    assert member.stats.dead_lettered == 4 and SLOW_CALLS["rawbad"] == 0
    assert [c["incidentId"] for c in await completions(router)] == ["inc:good"]
    assert router.stats.decisions == 1 and await pending(router) == 0


def nested(levels: int) -> Any:
    """Objects nested `levels` deep."""
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


@pytest.mark.parametrize("batched", [True, False], ids=["batch", "one-by-one"])
@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        ({"context": nested(100)}, "context", f"nested too deeply (max {DATA_DEPTH_LIMIT} levels)"),
        ({"context": {"pad": "x" * EVENT_DATA_LIMIT}}, "request", "characters of JSON"),
    ],
    ids=["deep", "large"],
)
async def test_a_request_past_the_data_limits_is_answered_invalid_on_its_first_delivery(
    redis_client: aioredis.Redis,
    telemetry: Telemetry,
    batched: bool,
    change: dict[str, Any],
    field: str,
    problem: str,
) -> None:
    # Publishing refuses it now; a foreign producer (or an older daemon) writing straight
    # to the stream is how one still arrives. It used to fail serialisation in the router
    # on every delivery (breaking the batch each time) until dead-lettered for that.
    router = make(redis_client, telemetry, f"limit-{field}-{batched}")
    await publish(router, [request(incident="inc:fine")])
    wire = new_event(SELF_HEALING_REQUESTED, {}, now_ms=START_MS).to_wire()
    data = compact_json(request(incident="inc:past", **change))
    await redis_client.xadd(router.bus.keys.stream(SELF_HEALING_REQUESTED), {**wire, "data": data})
    member = consumer(router, batched=batched)
    await member.poll_once()
    assert await pending(router) == 0, "both entries settled on their first delivery"
    done = {c["incidentId"]: c for c in await completions(router)}
    assert done["inc:fine"]["status"] == "scheduled"
    assert done["inc:past"]["status"] == "invalid" and done["inc:past"]["field"] == field
    assert problem in done["inc:past"]["reason"]
    [dead] = await router.bus.dead_letters()
    assert dead["deliveries"] == "1" and problem in dead["reason"]
    assert router.stats.decisions == 1 and router.stats.invalid == 1
    if batched:
        assert SLOW_CALLS[router.bus.keys.namespace] == 1, "only the bad entry left the batch"


@pytest.mark.parametrize("batched", [True, False], ids=["batch", "one-by-one"])
async def test_a_request_nested_past_what_the_parser_reads_is_dead_lettered_on_its_first_delivery(
    redis_client: aioredis.Redis, telemetry: Telemetry, batched: bool
) -> None:
    # pydantic's JSON parser stops at 200 levels: such data is no event's, so there is
    # no request to answer; it is buried at once, the good entry routed.
    router = make(redis_client, telemetry, f"parser-depth-{batched}")
    await publish(router, [request(incident="inc:fine")])
    wire = new_event(SELF_HEALING_REQUESTED, {}, now_ms=START_MS).to_wire()
    data = compact_json(request(incident="inc:past", context=nested(300)))
    await redis_client.xadd(router.bus.keys.stream(SELF_HEALING_REQUESTED), {**wire, "data": data})
    await consumer(router, batched=batched).poll_once()
    assert await pending(router) == 0, "both entries settled on their first delivery"
    assert [c["incidentId"] for c in await completions(router)] == ["inc:fine"]
    [dead] = await router.bus.dead_letters()
    assert dead["deliveries"] == "1"
    assert "undecodable event: data: not valid JSON (recursion limit exceeded" in dead["reason"]


async def test_a_bad_entry_does_not_keep_a_good_one_of_its_id_out_of_the_batch(
    redis_client: aioredis.Redis, telemetry: Telemetry
) -> None:
    router = make(redis_client, telemetry, "twin")
    good = new_event(SELF_HEALING_REQUESTED, request(incident="inc:twin"), now_ms=START_MS)
    stream = router.bus.keys.stream(SELF_HEALING_REQUESTED)
    await router.bus.ensure_group(SELF_HEALING_REQUESTED, ROUTER_GROUP)
    await redis_client.xadd(stream, {**good.to_wire(), "data": "not json"})
    await redis_client.xadd(stream, good.to_wire())
    member = consumer(router, batched=True)
    await member.poll_once()
    assert SLOW_CALLS["twin"] == 0 and router.stats.decisions == 1
    [dead] = await router.bus.dead_letters()
    assert "not valid JSON" in dead["reason"]
    assert await pending(router) == 0


async def test_a_request_is_stored_as_it_came(
    redis_client: aioredis.Redis, telemetry: Telemetry
) -> None:
    # Written as the contract would not write it (an exponent, text unescaped): the text
    # the contract read is the text stored.
    router = make(redis_client, telemetry, "asis")
    event = new_event(SELF_HEALING_REQUESTED, request(incident="inc:asis"), now_ms=START_MS)
    text = event.to_wire()["data"][:-1] + ', "context": {"n": 1E2, "s": "\u00e9"}}'
    await router.bus.ensure_group(SELF_HEALING_REQUESTED, ROUTER_GROUP)
    await redis_client.xadd(
        router.bus.keys.stream(SELF_HEALING_REQUESTED), {**event.to_wire(), "data": text}
    )
    await consumer(router, batched=True).poll_once()
    assert SLOW_CALLS["asis"] == 0 and router.stats.decisions == 1
    stored = await redis_client.hget(router.bus.keys.incident("inc:asis"), "request")
    assert stored.decode() == text


async def test_spans_of_a_batch_match_those_of_requests_routed_alone(
    redis_client: aioredis.Redis, telemetry: Telemetry
) -> None:
    payloads = [request(incident="inc:span"), request(incident="inc:span")]
    for name, batched in (("s1", False), ("s2", True)):
        router = make(redis_client, telemetry, name, clock_ms=lambda: START_MS)
        await publish(router, payloads)
        await consumer(router, batched=batched).poll_once()
    telemetry.force_flush()
    spans = [s for s in read_spans(telemetry.span_file) if s["name"] == "selfheal.route.decide"]
    assert len(spans) == 4

    def shape(span: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in span["attributes"].items() if k != "selfheal.event_id"}

    assert [shape(s) for s in spans[2:]] == [shape(s) for s in spans[:2]]
    assert [list(s["attributes"]) for s in spans[2:]] == [list(s["attributes"]) for s in spans[:2]]
    # The retry carries the decision span's context: the incident stays one trace.
    s2 = Bus(redis_client, Keys("s2"))
    [payload] = (await s2.client.hgetall(s2.keys.timer_payloads)).values()
    traceparent = json.loads(payload)["fields"]["traceparent"]
    assert "0x" + traceparent.split("-")[2] == spans[2]["context"]["span_id"]
    assert "0x" + traceparent.split("-")[1] == spans[2]["context"]["trace_id"]


async def read(router: Router) -> list[Delivery]:
    """Read fresh entries as the consumer would hand them to the batch handler."""
    stream = router.bus.keys.stream(SELF_HEALING_REQUESTED)
    entries = await router.bus.read_group(stream, ROUTER_GROUP, "c", count=100, block_ms=None)
    deliveries = [delivery_of(eid, fields) for eid, fields in entries]
    assert all(isinstance(d, Delivery) for d in deliveries), deliveries
    return cast(list[Delivery], deliveries)


async def test_a_failing_batch_handler_leaves_every_entry_to_the_slow_path(
    redis_client: aioredis.Redis, telemetry: Telemetry
) -> None:
    router = make(redis_client, telemetry, "boom", clock_ms=lambda: START_MS)
    await publish(router, [request(incident="x"), request(incident="y")])

    async def broken(entries: list[Delivery]) -> list[Outcome]:
        raise RuntimeError("bug in the batch path")

    member = StreamConsumer(
        router.bus,
        SELF_HEALING_REQUESTED,
        ROUTER_GROUP,
        "c",
        router.handle,
        options=OPTIONS,
        batch_handler=broken,
    )
    await member.poll_once()
    assert member.stats.handled == 2 and router.stats.decisions == 2
    assert await pending(router) == 0


async def test_packed_commands_survive_errors_and_a_script_flush(
    redis_client: aioredis.Redis, telemetry: Telemetry
) -> None:
    router = make(redis_client, telemetry, "pk", clock_ms=lambda: START_MS)
    with pytest.raises(aioredis.ResponseError):
        await router.bus.execute_packed("NOSUCHCOMMAND", 1)
    assert await router.bus.execute_packed("PING") == b"PONG", "the connection is still in step"
    await publish(router, [request(incident="a")])
    await consumer(router, batched=True).poll_once()
    await redis_client.script_flush()  # e.g. a Redis restart: the scripts are loaded again
    await publish(router, [request(incident="b")])
    assert await router.handle_batch(await read(router)) == [Outcome.ACKED]
    assert router.stats.decisions == 2 and await pending(router) == 0
