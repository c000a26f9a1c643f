"""Random `system/self.healing.requested` entries on the bus of a running daemon: valid
requests, almost valid ones and garbage, in well-formed entries and broken ones. Each is
decided once (one completion) or dead-lettered with a reason naming what was wrong, and
the router never crashes or stalls: its pending list drains."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any, Final

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from ulid import ULID

from selfheal.core.contracts import InvalidRequest, parse_request
from selfheal.core.events import (
    SELF_HEALING_COMPLETED,
    SELF_HEALING_REQUESTED,
    Envelope,
    Event,
    EventDecodeError,
)
from selfheal.healing.router import ROUTER_GROUP
from tests.support.daemon import DaemonProcess
from tests.support.fuzz import Cases, fuzz_settings, json_scalars, json_values, odd_text
from tests.support.servers import wait_until

pytestmark = pytest.mark.slow

TAG: Final = "{selfheal}"
REQUESTS: Final = f"{TAG}:stream:{SELF_HEALING_REQUESTED}"
COMPLETED: Final = f"{TAG}:stream:{SELF_HEALING_COMPLETED}"
DEAD: Final = f"{TAG}:dead"
WAIT_S: Final = 20.0
# A stream entry's fields as given to XADD (names and values, text or bytes).
Entry = dict[str | bytes, str | bytes]

# A valid request in a domain with no route: deciding it schedules nothing that runs.
BASE: Final[dict[str, Any]] = {
    "sourceFunction": "fuzz/source",
    "targetComponent": "fuzz-target",
    "problemSummary": "fuzzed failure",
    "attempt": 0,
    "retryPolicy": {"maxRetries": 1, "sleepMinMs": 60000, "sleepMaxMs": 60000, "sleepStepMs": 0},
    "evidence": [],
    "playbook": {},
    "domain": "fuzz",
}

ODD_TEXT = odd_text(20)
JSON = json_values(json_scalars(ODD_TEXT), ODD_TEXT, max_size=3, max_leaves=10)
FIELD_VALUES: Final[dict[str, Any]] = {
    "incidentId": st.from_regex(r"[A-Za-z0-9_.:-]{1,40}", fullmatch=True) | ODD_TEXT,
    "context": JSON,
    "evidence": st.lists(
        ODD_TEXT
        | st.fixed_dictionaries(
            {}, optional={"errno": JSON | st.sampled_from(["ENOSPC", 28, -1, 10**6])}
        )
        | JSON,
        max_size=3,
    ),
    "owner": ODD_TEXT,
    "deadlineAt": st.sampled_from(["2026-02-25T12:00Z", "2026-02-25T12:00", "tomorrow", 5]),
    "fallbackAction": st.sampled_from(["escalate", "manual", "panic", None]),
    "attempt": st.integers(min_value=-2, max_value=2**40),
    "domain": st.sampled_from(["fuzz", "Fuzz", "", "a" * 40]),
    "routeTo": JSON | st.fixed_dictionaries({"event": st.sampled_from(["fuzz/x.y", "bad"])}),
    "retryPolicy": JSON,
    "problemSummary": ODD_TEXT,
}


@st.composite
def requests(draw: st.DrawFn) -> Any:
    """A request's data: valid, almost valid (a field changed, dropped or added) or junk."""
    kind = draw(st.sampled_from(["valid", "almost", "junk"]))
    if kind == "junk":
        return draw(JSON)
    data = dict(BASE)
    for name in draw(st.lists(st.sampled_from(sorted(FIELD_VALUES)), max_size=2, unique=True)):
        data[name] = draw(FIELD_VALUES[name])
    if kind == "almost":
        how = draw(st.sampled_from(["drop", "change", "add"]))
        name = draw(st.sampled_from(sorted(BASE)))
        if how == "drop":
            del data[name]
        elif how == "change":
            data[name] = draw(JSON)
        else:
            data[draw(ODD_TEXT)] = draw(JSON)
    return data


def new_id() -> str:
    return str(ULID())


@st.composite
def entries(draw: st.DrawFn) -> Entry:
    """A stream entry: an event around a request, or fields broken one way or another."""
    event_id = new_id()
    fields: Entry = {
        "id": event_id,
        "name": SELF_HEALING_REQUESTED,
        "data": json.dumps(draw(requests())),
        "ts": str(int(time.time() * 1000)),
        "idempotencyKey": event_id,
        "traceparent": "",
    }
    how = draw(st.integers(0, 9))
    if how == 0:
        del fields[draw(st.sampled_from(sorted(fields)))]
    elif how == 1:
        fields[draw(st.sampled_from(sorted(fields)))] = draw(ODD_TEXT)
    elif how == 2:
        fields["data"] = draw(
            st.sampled_from(["", "[]", "NaN", '{"a": NaN}', "{", "[" * 5000, '{"a": 1e999}'])
        )
    elif how == 3:
        fields[draw(st.sampled_from(sorted(fields)))] = draw(st.binary(min_size=1, max_size=8))
    elif how == 4:
        fields["traceparent"] = draw(st.sampled_from(["00-" + "0" * 32 + "-" + "0" * 16 + "-00"]))
    elif how == 5:
        fields = dict(draw(st.dictionaries(ODD_TEXT.filter(bool), ODD_TEXT, min_size=1)))
    return fields


def expectation(fields: Entry) -> tuple[str, set[str]]:
    """("dead", the fields a reason may name: each is wrong) or ("decided", set())."""
    wrong: set[str] = set()
    for decode in (Envelope.from_wire, Event.from_wire):  # head first, or data first
        try:
            decode(fields)
        except EventDecodeError as exc:
            wrong.add(exc.field)
    if wrong:
        return "dead", wrong
    try:
        parse_request(str(fields["data"]))
    except InvalidRequest as exc:
        return "dead", {exc.field}
    return "decided", set()


@pytest.fixture(scope="module")
def bus(daemon: DaemonProcess) -> Iterator[redis.Redis]:
    client = redis.Redis(unix_socket_path=str(daemon.state_dir / "redis" / "redis.sock"))
    try:
        yield client
    finally:
        client.close()


def text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def dead_letters(bus: redis.Redis) -> dict[str, list[str]]:
    """Reasons of the dead letters, by the entry id they came from."""
    found: dict[str, list[str]] = {}
    for _, fields in bus.xrange(DEAD) or []:
        record = {text(k): text(v) for k, v in (fields or {}).items()}
        found.setdefault(record["entryId"], []).append(record["reason"])
    return found


def completions(bus: redis.Redis) -> dict[str, list[dict[str, Any]]]:
    """Completion data by the event id it answers (its key is `<id>/completed`)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for _, fields in bus.xrange(COMPLETED) or []:
        record = {text(k): text(v) for k, v in (fields or {}).items()}
        cause = record["idempotencyKey"].removesuffix("/completed")
        found.setdefault(cause, []).append(json.loads(record["data"]))
    return found


def pending(bus: redis.Redis) -> int:
    return int(bus.xpending(REQUESTS, ROUTER_GROUP)["pending"])


@given(batch=st.lists(entries(), min_size=1, max_size=6))
@fuzz_settings(300)
def test_each_request_is_decided_once_or_dead_lettered_with_its_reason(
    daemon: DaemonProcess, bus: redis.Redis, cases: Cases, batch: list[Entry]
) -> None:
    cases.tried(len(batch))
    published = []
    for fields in batch:
        entry_id = text(bus.xadd(REQUESTS, fields))  # type: ignore[arg-type]
        published.append((entry_id, text(fields.get("id", "")), expectation(fields)))

    def settled() -> bool:
        dead, answers = dead_letters(bus), completions(bus)
        return all(
            entry_id in dead if expected == "dead" else event_id in answers
            for entry_id, event_id, (expected, _) in published
        )

    wait_until(settled, WAIT_S, "every entry decided or dead-lettered")
    wait_until(lambda: pending(bus) == 0, WAIT_S, "the router's pending list to drain")
    dead, answers = dead_letters(bus), completions(bus)
    for entry_id, event_id, (expected, wrong) in published:
        if expected == "dead":
            (reason,) = dead[entry_id]
            assert reason.startswith(("undecodable event: ", "rejected: invalid request")), reason
            assert any(field in reason for field in wrong), (wrong, reason)
            for answer in answers.get(event_id, []):
                assert answer["status"] == "invalid" and answer["field"] in wrong, answer
        else:
            assert entry_id not in dead, dead[entry_id]
            (answer,) = answers[event_id]  # decided once
            assert answer["status"] != "invalid", answer
    assert daemon.call("ping")["pong"] is True


def test_the_router_is_still_routing(daemon: DaemonProcess, bus: redis.Redis, cases: Cases) -> None:
    """After the fuzz, a plain request is decided as ever, and nothing was left pending."""
    cases.tried()
    event_id = new_id()
    bus.xadd(
        REQUESTS,
        {
            "id": event_id,
            "name": SELF_HEALING_REQUESTED,
            "data": json.dumps(BASE),
            "ts": str(int(time.time() * 1000)),
            "idempotencyKey": event_id,
            "traceparent": "",
        },
    )
    wait_until(lambda: event_id in completions(bus), WAIT_S, "the plain request decided")
    assert pending(bus) == 0
    status = daemon.status()
    assert status["state"] == "running"
    assert status["healing"]["router"]["decisions"] + status["healing"]["router"]["joined"] > 0
