"""The request contract, the completion payload and the event envelope."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ulid import ULID

from selfheal.core import events
from selfheal.core.contracts import (
    EVIDENCE_LIMIT,
    INCIDENT_ID_PATTERN,
    CompletionStatus,
    Evidence,
    InvalidRequest,
    SelfHealingRequest,
    derive_incident_id,
    invalid_completion,
    parse_request,
)
from selfheal.core.events import (
    DATA_DEPTH_LIMIT,
    EVENT_DATA_LIMIT,
    Event,
    EventDecodeError,
    InvalidEvent,
    compact_json,
    new_event,
)
from tests.support.events import wire_entry

# The seed ADR's contract, filled in the way the backup failure adapter sends it.
SEED_EXAMPLE: dict[str, Any] = {
    "sourceFunction": "system/backup.redis",
    "targetComponent": "redis",
    "problemSummary": "Redis backup copy to NAS failed",
    "attempt": 2,
    "retryPolicy": {
        "maxRetries": 5,
        "sleepMinMs": 300_000,
        "sleepMaxMs": 14_400_000,
        "sleepStepMs": 30_000,
    },
    "evidence": [
        "ssh: connect to host three-body port 22: Operation timed out",
        {"kind": "redis-key", "key": "backup:redis:last", "eventId": "01J0000000000000000000000A"},
        {"kind": "log", "path": "/tmp/backup.log", "snippet": "rsync error", "lines": 40},
    ],
    "playbook": {
        "skills": ["nas-backup"],
        "actions": ["restart", "defer", "notify"],
        "links": ["https://example.invalid/runbook"],
        "runbook": "docs/runbooks/nas.md",
    },
    "context": {"target": "redis", "transport": "ssh"},
    "owner": "joel",
    "deadlineAt": "2026-02-25T12:00:00Z",
    "fallbackAction": "manual",
    "incidentId": "backup:redis:2026-02-25",
    "domain": "backup",
    "routeTo": {"event": "system/backup.retry.requested", "data": {"target": "redis"}},
}


def parse(data: Any) -> SelfHealingRequest:
    """The contract's reading of `data` sent as an event's data (JSON text)."""
    return parse_request(json.dumps(data))


def _without(key: str) -> dict[str, Any]:
    data = copy.deepcopy(SEED_EXAMPLE)
    del data[key]
    return data


def _with(path: str, value: Any) -> dict[str, Any]:
    return _with_in(SEED_EXAMPLE, path, value)


def _with_in(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(base)
    *parents, last = path.split(".")
    target: Any = data
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    target[int(last) if last.isdigit() else last] = value
    return data


def test_seed_example_parses_and_round_trips() -> None:
    request = parse(SEED_EXAMPLE)
    assert request.retry_policy.sleep_min_ms == 300_000
    assert request.deadline_at == datetime(2026, 2, 25, 12, tzinfo=UTC)
    assert request.fallback_action == "manual"
    assert request.evidence[0] == Evidence(message=SEED_EXAMPLE["evidence"][0])
    assert request.evidence[1].event_id == "01J0000000000000000000000A"
    assert request.evidence[2].model_extra == {"lines": 40}  # free-form keys are kept
    assert parse(request.to_data()) == request


def test_optional_fields_default() -> None:
    minimal = {k: SEED_EXAMPLE[k] for k in ("sourceFunction", "targetComponent", "problemSummary")}
    minimal |= {k: SEED_EXAMPLE[k] for k in ("attempt", "retryPolicy", "evidence", "playbook")}
    request = parse(minimal | {"evidence": [], "playbook": {}})
    assert (request.domain, request.incident_id, request.route_to) == ("backup", None, None)
    assert request.evidence == []
    assert request.resolved_incident_id == derive_incident_id(
        "backup", "redis", "system/backup.redis"
    )


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (_without("sourceFunction"), "sourceFunction"),
        (_without("playbook"), "playbook"),
        (_without("retryPolicy"), "retryPolicy"),
        (_with("targetComponent", ""), "targetComponent"),
        (_with("problemSummary", "   "), "problemSummary"),
        (_with("problemSummary", "x" * 2001), "problemSummary"),
        (_with("attempt", -1), "attempt"),
        (_with("attempt", True), "attempt"),
        (_with("attempt", "1"), "attempt"),
        (_with("attempt", 1.5), "attempt"),
        (_with("retryPolicy.maxRetries", 101), "retryPolicy.maxRetries"),
        (_with("retryPolicy.maxRetries", True), "retryPolicy.maxRetries"),
        (_with("retryPolicy.sleepMinMs", 0), "retryPolicy.sleepMinMs"),
        (_with("retryPolicy.sleepMinMs", "300000"), "retryPolicy.sleepMinMs"),
        (_with("retryPolicy.sleepMaxMs", 604_800_001), "retryPolicy.sleepMaxMs"),
        (_with("retryPolicy.sleepMaxMs", 299_999), "retryPolicy.sleepMaxMs"),
        (_with("retryPolicy.sleepStepMs", -1), "retryPolicy.sleepStepMs"),
        (_with("retryPolicy.extra", 1), "retryPolicy.extra"),
        (_with("evidence", "not a list"), "evidence"),
        (_with("evidence.1", 7), "evidence[1]"),
        (_with("evidence.1.errno", 1.5), "evidence[1].errno"),
        (_with("evidence.1.errno", False), "evidence[1].errno"),
        (_with("playbook.skills", "nas"), "playbook.skills"),
        (_with("deadlineAt", "2026-02-25T12:00:00"), "deadlineAt"),
        (_with("deadlineAt", 1_772_020_800_000), "deadlineAt"),
        (_with("deadlineAt", "tomorrow"), "deadlineAt"),
        (_with("fallbackAction", "ignore"), "fallbackAction"),
        (_with("incidentId", "has space"), "incidentId"),
        (_with("incidentId", "x" * 129), "incidentId"),
        (_with("domain", "Backup"), "domain"),
        (_with("routeTo.event", "Any Event!"), "routeTo.event"),
        (_with("routeTo.url", "http://x"), "routeTo.url"),
        (_with("surprise", 1), "surprise"),
        ([SEED_EXAMPLE], "request"),
        (None, "request"),
    ],
)
def test_invalid_request_names_the_field(data: Any, field: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse(data)
    assert caught.value.field == field
    assert caught.value.problems[0].startswith(f"{field}: ")
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("context", {"b": {"\udc00": 1}}),
        ("context", {"b": "\udc00"}),
        ("routeTo", {"event": "system/backup.retry.requested", "data": {"x": {"\ud800": 1}}}),
    ],
)
def test_a_lone_surrogate_makes_the_request_invalid(field: str, value: Any) -> None:
    # Not Unicode text: such a request could never be stored or re-sent. pydantic's JSON
    # parser refuses it with the text, so it is answered completed{invalid} once.
    with pytest.raises(InvalidRequest) as caught:
        parse({**copy.deepcopy(SEED_EXAMPLE), field: value})
    assert caught.value.field == "request"
    assert caught.value.problems[0].startswith("request: Invalid JSON: ")


def _at(path: str, value: Any) -> dict[str, Any]:
    """The seed example with the field at `path` (dotted; a number is a list index) set."""
    return _with_in(_with("evidence", [{"message": "x"}]), path, value)


def _route_event(length: int) -> str:
    return "system/" + "r" * (length - len("system/"))


# (field, value at the contract's limit, value just past it)
LIMITS = [
    ("sourceFunction", "x" * 256, "x" * 257),
    ("targetComponent", "x" * 256, "x" * 257),
    ("owner", "x" * 256, "x" * 257),
    ("problemSummary", "x" * 2000, "x" * 2001),
    ("evidence.0.message", "x" * 65_536, "x" * 65_537),
    ("evidence.0.snippet", "x" * 65_536, "x" * 65_537),
    ("evidence.0.kind", "x" * 4096, "x" * 4097),
    ("evidence.0.exception", "x" * 4096, "x" * 4097),
    ("evidence.0.path", "x" * 4096, "x" * 4097),
    ("evidence.0.eventId", "x" * 4096, "x" * 4097),
    ("evidence.0.errno", "E" * 64, "E" * 65),
    ("evidence.0.errno", 99_999, 100_000),
    ("playbook.runbook", "x" * 4096, "x" * 4097),
    ("incidentId", "i" * 128, "i" * 129),
    ("domain", "d" * 32, "d" * 33),
    ("routeTo.event", _route_event(200), _route_event(201)),
    ("attempt", 1_000_000_000, 1_000_000_001),
    ("retryPolicy.maxRetries", 100, 101),
    ("retryPolicy.sleepStepMs", 86_400_000, 86_400_001),
    ("retryPolicy.sleepMaxMs", 604_800_000, 604_800_001),
    ("evidence", ["x"] * EVIDENCE_LIMIT, ["x"] * (EVIDENCE_LIMIT + 1)),
]


@pytest.mark.parametrize(("path", "at_limit", "past_limit"), LIMITS, ids=[x[0] for x in LIMITS])
def test_each_limit_holds_and_the_next_value_is_refused_by_name(
    path: str, at_limit: Any, past_limit: Any
) -> None:
    parse(_at(path, at_limit))
    with pytest.raises(InvalidRequest) as caught:
        parse(_at(path, past_limit))
    assert caught.value.field == re.sub(r"\.([0-9]+)", r"[\1]", path)  # evidence[0].kind


@pytest.mark.parametrize(
    ("path", "value"),
    [
        # The contract's patterns are whole-text: a final newline is not allowed by `$`.
        ("incidentId", "a:b\n"),
        ("domain", "backup\n"),
        ("routeTo.event", "system/backup.retry.requested\n"),
        # Blank means every character is whitespace, Unicode's included.
        ("problemSummary", "\u00a0\u2003"),
        ("targetComponent", "\x1c\x1f"),
        ("owner", "\t"),
        # Whole numbers only, in the JSON too.
        ("attempt", 1.0),
        ("attempt", 10**30),
    ],
)
def test_near_misses_are_refused_by_name(path: str, value: Any) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse(_at(path, value))
    assert caught.value.field == path


def test_a_repeated_key_reads_as_its_last_value() -> None:
    text = json.dumps(SEED_EXAMPLE)[:-1] + ', "attempt": 7}'
    assert parse_request(text).attempt == 7


def lists(levels: int) -> Any:
    """Lists nested `levels` deep."""
    return json.loads("[" * levels + "]" * levels)


@pytest.mark.parametrize(
    ("member", "place"),
    [
        # The request is level 1; each place's value sits this many levels below it.
        ("context", lambda inner: {"context": {"x": inner}}),
        ("routeTo", lambda inner: {"routeTo": {"event": "a/b", "data": {"x": inner}}}),
        ("evidence", lambda inner: {"evidence": [{"message": "m", "extra": inner}]}),
        ("playbook", lambda inner: {"playbook": {"extra": inner}}),
    ],
)
def test_free_form_values_nest_within_the_event_data_limit(member: str, place: Any) -> None:
    depth_of_value = {"context": 3, "routeTo": 4, "evidence": 4, "playbook": 3}[member]
    room = DATA_DEPTH_LIMIT - depth_of_value + 1
    parse({**SEED_EXAMPLE, **place(lists(room))})
    with pytest.raises(InvalidRequest) as caught:
        parse({**SEED_EXAMPLE, **place(lists(room + 1))})
    assert caught.value.problems == [f"{member}: nested too deeply (max {DATA_DEPTH_LIMIT} levels)"]


def test_text_nested_past_the_parsers_limit_is_refused_as_a_whole() -> None:
    # pydantic's JSON parser stops at 200 levels, before any member can be named.
    with pytest.raises(InvalidRequest) as caught:
        parse({**SEED_EXAMPLE, "context": {"x": lists(300)}})
    assert caught.value.field == "request"
    assert "recursion limit exceeded" in caught.value.problems[0]


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
@pytest.mark.parametrize("member", ["context", "routeTo", "evidence", "playbook"])
def test_free_form_numbers_json_cannot_hold_are_refused_by_member(number: str, member: str) -> None:
    marker = '"@number@"'
    data = {
        "context": {"context": {"n": "@number@"}},
        "routeTo": {"routeTo": {"event": "a/b", "data": {"n": ["@number@"]}}},
        "evidence": {"evidence": [{"message": "m", "n": "@number@"}]},
        "playbook": {"playbook": {"n": "@number@"}},
    }[member]
    text = json.dumps({**SEED_EXAMPLE, **data}).replace(marker, number)
    with pytest.raises(InvalidRequest) as caught:
        parse_request(text)
    assert caught.value.problems == [
        f"{member}: holds a number JSON cannot hold (NaN or an infinity)"
    ]


def test_the_size_limit_is_the_texts_as_it_came() -> None:
    # The router stores the text and re-sends it as it came, so that is what is measured.
    text = json.dumps(_with("context", {"pad": "@"}), separators=(",", ":"))
    room = EVENT_DATA_LIMIT - len(text) + 1
    fits = text.replace("@", "\u00e9" * room)  # as it came: not written as \u00e9 escapes
    assert len(fits) == EVENT_DATA_LIMIT
    parse_request(fits)
    with pytest.raises(InvalidRequest) as caught:
        parse_request(text.replace("@", "x" * (room + 1)))
    assert caught.value.problems == [
        f"request: {EVENT_DATA_LIMIT + 1} characters of JSON, more than the"
        f" {EVENT_DATA_LIMIT} allowed"
    ]


def test_invalid_request_lists_every_problem_in_order() -> None:
    data = _with("attempt", -1)
    data["retryPolicy"]["sleepStepMs"] = "5"
    del data["playbook"]
    with pytest.raises(InvalidRequest) as caught:
        parse(data)
    fields = [p.split(":")[0] for p in caught.value.problems]
    assert fields == ["attempt", "retryPolicy.sleepStepMs", "playbook"]
    assert "Value error" not in str(caught.value)


def test_min_above_max_message_names_both_bounds() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse(_with("retryPolicy.sleepMaxMs", 1000))
    assert caught.value.problems == ["retryPolicy.sleepMaxMs: must be >= sleepMinMs (300000)"]


def test_errno_accepts_numbers_and_names() -> None:
    assert parse(_with("evidence.1.errno", 28)).evidence[1].errno == 28
    assert parse(_with("evidence.1.errno", "ENOSPC")).evidence[1].errno == "ENOSPC"


def test_invalid_completion_names_the_field() -> None:
    data = _with("retryPolicy.sleepMinMs", 0)
    with pytest.raises(InvalidRequest) as caught:
        parse(data)
    completion = invalid_completion(caught.value, data).to_data()
    assert completion["status"] == "invalid"
    assert CompletionStatus(completion["status"]) is CompletionStatus.INVALID
    assert completion["field"] == "retryPolicy.sleepMinMs"
    assert completion["incidentId"] == "backup:redis:2026-02-25"
    assert completion["attempt"] == 2
    assert completion["sourceFunction"] == "system/backup.redis"


def test_invalid_completion_drops_an_invalid_incident_id() -> None:
    data = _with("incidentId", "bad id")
    with pytest.raises(InvalidRequest) as caught:
        parse(data)
    assert invalid_completion(caught.value, data).incident_id is None
    assert invalid_completion(caught.value, "junk").source_function is None


@pytest.mark.parametrize(
    ("args", "other"),
    [
        (("backup", "a/b", "f"), ("backup", "a-b", "f")),
        (("backup", "redis", "f"), ("worker", "redis", "f")),
        (("backup", "x" * 300, "f"), ("backup", "x" * 301, "f")),
    ],
)
def test_derived_incident_ids_stay_distinct(
    args: tuple[str, str, str], other: tuple[str, str, str]
) -> None:
    assert derive_incident_id(*args) != derive_incident_id(*other)
    assert derive_incident_id(*args) == derive_incident_id(*args)


@given(st.text(), st.text(), st.text())
def test_derived_incident_id_always_fits_the_pattern(a: str, b: str, c: str) -> None:
    assert re.fullmatch(INCIDENT_ID_PATTERN, derive_incident_id(a, b, c))


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
PATHS = st.sampled_from(
    [
        *SEED_EXAMPLE,
        "retryPolicy.sleepMinMs",
        "retryPolicy.maxRetries",
        "evidence.1.errno",
        "evidence.0",
        "playbook.runbook",
        "routeTo.data",
        "routeTo.event",
    ]
)


@given(JSON)
def test_arbitrary_json_is_a_request_or_invalid(data: Any) -> None:
    try:
        parse(data)
    except InvalidRequest as exc:
        assert exc.field and exc.problems


@given(st.lists(st.tuples(PATHS, JSON), min_size=1, max_size=3))
def test_mutated_seed_is_a_request_or_names_a_field(changes: list[tuple[str, Any]]) -> None:
    data = copy.deepcopy(SEED_EXAMPLE)
    for path, value in changes:
        try:
            data = _with_in(data, path, value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change replaced the parent with a non-container
    try:
        request = parse(data)
    except InvalidRequest as exc:
        assert exc.field.split(".")[0].split("[")[0] in {*SEED_EXAMPLE, "request"}
    else:
        assert parse(request.to_data()) == request


@pytest.mark.parametrize(
    ("constant", "wire"),
    [
        (events.BACKUP_REQUESTED, "system/backup.requested"),
        (events.BACKUP_RETRY_REQUESTED, "system/backup.retry.requested"),
        (events.BACKUP_COMPLETED, "system/backup.completed"),
        (events.BACKUP_FAILED, "system/backup.failed"),
        (events.SELF_HEALING_REQUESTED, "system/self.healing.requested"),
        (events.SELF_HEALING_COMPLETED, "system/self.healing.completed"),
        (events.WORKER_RESTART_REQUESTED, "system/worker.restart.requested"),
        (events.BACKUP_FAILURE_ROUTER, "system/backup.failure.router"),
    ],
)
def test_wire_names(constant: str, wire: str) -> None:
    assert constant == wire
    assert new_event(constant, {}, now_ms=0).name == wire


TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_new_event_carries_time_in_its_ulid() -> None:
    event = new_event(events.BACKUP_FAILED, {"target": "redis"}, now_ms=1_772_020_800_123)
    assert ULID.from_str(event.id).milliseconds == 1_772_020_800_123 == event.ts
    assert event.idempotency_key == event.id
    keyed = new_event(events.BACKUP_REQUESTED, {}, now_ms=5, idempotency_key="redis:tick-9")
    assert keyed.idempotency_key == "redis:tick-9"


@pytest.mark.parametrize("now_ms", [-1, 1.5, True, 2**48])
def test_new_event_refuses_bad_time(now_ms: Any) -> None:
    with pytest.raises(ValueError):
        new_event(events.BACKUP_FAILED, {}, now_ms=now_ms)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": "NoSlash"}, "name"),
        ({"traceparent": "00-" + "0" * 32 + "-00f067aa0ba902b7-01"}, "traceparent"),
        ({"traceparent": "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}, "traceparent"),
        ({"idempotency_key": "k" * 257}, "idempotency_key"),
        ({"data": {"x": float("nan")}}, "data"),
        ({"data": {"x": object()}}, "data"),
    ],
)
def test_event_validation(changes: dict[str, Any], field: str) -> None:
    fields = {"name": "system/backup.failed", "data": {}, "traceparent": TRACE} | changes
    with pytest.raises(ValueError, match=field):
        new_event(
            fields["name"],
            fields["data"],
            now_ms=1,
            traceparent=fields["traceparent"],
            idempotency_key=fields.get("idempotency_key"),
        )


def nested(levels: int) -> Any:
    """Lists nested `levels` deep."""
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return value


def test_new_event_refuses_data_nested_too_deeply_naming_the_member() -> None:
    # The data object is level 1, so its member may nest DATA_DEPTH_LIMIT - 1 levels.
    assert new_event(events.BACKUP_FAILED, {"ok": nested(DATA_DEPTH_LIMIT - 1)}, now_ms=1)
    for levels in (DATA_DEPTH_LIMIT, 300, 5000):  # 5000 once ended in a RecursionError
        with pytest.raises(InvalidEvent) as caught:
            new_event(events.BACKUP_FAILED, {"ok": 1, "context": nested(levels)}, now_ms=1)
        assert str(caught.value) == (
            f"data: member 'context' is nested too deeply (max {DATA_DEPTH_LIMIT} levels)"
        )


def test_new_event_refuses_data_past_the_size_limit() -> None:
    room = EVENT_DATA_LIMIT - len('{"x":""}')
    assert new_event(events.BACKUP_FAILED, {"x": "a" * room}, now_ms=1)
    with pytest.raises(InvalidEvent) as caught:
        new_event(events.BACKUP_FAILED, {"x": "a" * (room + 1)}, now_ms=1)
    assert str(caught.value) == (
        f"data: {EVENT_DATA_LIMIT + 1} characters of JSON, more than the {EVENT_DATA_LIMIT} allowed"
    )
    # Measured as written to the stream, where "\u00e9" takes six characters.
    with pytest.raises(InvalidEvent, match="characters of JSON"):
        new_event(events.BACKUP_FAILED, {"x": "\u00e9" * (room // 6 + 1)}, now_ms=1)


def test_entries_read_from_a_stream_are_not_held_to_the_publishing_limits() -> None:
    # Already stored: read, they are handled (a request's contract refuses them by
    # name) or dead-lettered with their reason, never left undecided.
    for data in (
        {"context": nested(DATA_DEPTH_LIMIT + 10)},
        {"x": "a" * EVENT_DATA_LIMIT},
        {"n": float("1e300"), "context": nested(DATA_DEPTH_LIMIT + 10)},
    ):
        event = Event.from_wire(wire_entry(data=compact_json(data)))
        assert event.data == data


DATA = st.dictionaries(st.text(max_size=8), JSON, max_size=4)


@given(DATA, st.integers(0, 2**48 - 1), st.booleans(), st.booleans())
def test_wire_round_trip(data: dict[str, Any], now_ms: int, as_bytes: bool, traced: bool) -> None:
    event = new_event(
        events.BACKUP_FAILED, data, now_ms=now_ms, traceparent=TRACE if traced else None
    )
    wire = event.to_wire()
    assert all(isinstance(v, str) for v in wire.values())
    assert wire["traceparent"] == (TRACE if traced else "")
    entry = {k.encode(): v.encode() for k, v in wire.items()} if as_bytes else wire
    assert Event.from_wire(entry) == event


def _wire(**changes: str | bytes | None) -> dict[str, Any]:
    return wire_entry(**changes)


@pytest.mark.parametrize(
    ("wire", "field"),
    [
        (_wire(name=None), "name"),
        (_wire(idempotencyKey=None), "idempotencyKey"),
        (_wire(data="{not json"), "data"),
        (_wire(data="[1, 2]"), "data"),
        (_wire(data='{"x": NaN}'), "data"),
        (_wire(ts="-5"), "ts"),
        (_wire(ts="12.5"), "ts"),
        (_wire(id="01ARZ3NDEKTSV4RRFFQ69G5FAU"), "id"),  # U is not Crockford base32
        (_wire(id="8ZZZZZZZZZZZZZZZZZZZZZZZZZ"), "id"),  # beyond 48-bit time
        (_wire(id="not-a-ulid"), "id"),
        (_wire(name=b"\xff\xfe"), "name"),
        (_wire(traceparent="garbage"), "traceparent"),
        (_wire(idempotencyKey=""), "idempotencyKey"),
    ],
)
def test_from_wire_names_the_bad_field(wire: dict[str, Any], field: str) -> None:
    with pytest.raises(EventDecodeError) as caught:
        Event.from_wire(wire)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_from_wire_ignores_unknown_fields_and_empty_trace() -> None:
    event = Event.from_wire(_wire(extra="later version", traceparent=""))
    assert event.traceparent is None
    assert event.data == {"a": 1}


def test_seed_example_survives_the_bus() -> None:
    request = parse(SEED_EXAMPLE)
    event = new_event(events.SELF_HEALING_REQUESTED, request.to_data(), now_ms=1_772_000_000_000)
    decoded = Event.from_wire({k.encode(): v.encode() for k, v in event.to_wire().items()})
    assert parse(decoded.data) == request
