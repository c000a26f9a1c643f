"""Stored records read from their JSON text give what reading them through json.loads gave."""

from __future__ import annotations

import json
from typing import Any

import pytest

from selfheal.core.contracts import parse_request
from selfheal.core.incident import Incident
from selfheal.core.policy import Decision, Knobs, decide
from tests.support.routing import request

NOW = 1_772_000_000_000
# routeTo data with a float: the decision's routeData holds one.
REQUEST = parse_request(
    request("i:1", routeTo={"event": "system/backup.retry.requested", "data": {"n": 1.5}})
)
INCIDENT = Incident.new(REQUEST, NOW, 3_600_000)
DECISION = decide(REQUEST, INCIDENT, NOW, Knobs(), 0.25)
RECORDS = {
    "incident": (Incident, INCIDENT.after(DECISION, NOW).to_dict()),
    "decision": (Decision, DECISION.to_dict()),
}

# Values swapped into a record: right and wrong types, numbers json.dumps refuses,
# numbers near the float limits, text that needs escapes.
VALUES = (
    "1e400", "-1e400", "1E5", "1.5e-3", "NaN", "Infinity", "-Infinity", "0", "-0",
    "-0.0", "1" * 320, "123456789012345678901234567890", "true", "null", '"x"',
    '"\\ud800"', '"na\\u00efve"', '"NaN"', "[]", "{}", '{"a": [1, 2.5]}', '"retry"',
    '"scheduled"', '"9"', "3", "2.0",
)  # fmt: skip


def _old(kind: type[Any], text: str) -> Any:
    try:
        return kind.from_dict(json.loads(text))
    except ValueError as exc:
        return ("error", str(exc))


def _new(kind: type[Any], text: str) -> Any:
    try:
        return kind.from_json(text)
    except ValueError as exc:
        return ("error", str(exc))


def _texts(record: dict[str, Any], path: list[Any], value: str) -> str:
    """The record's JSON with the value at `path` replaced by the raw JSON `value`."""
    marker = "\u0001MARK\u0001"
    copy = json.loads(json.dumps(record))
    target: Any = copy
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = marker
    return json.dumps(copy).replace(json.dumps(marker), value)


def _paths(record: dict[str, Any]) -> list[list[Any]]:
    paths: list[list[Any]] = [[key] for key in record]
    if "history" in record:
        paths += [["history", 0, key] for key in record["history"][0]]
    if "routeData" in record:
        paths += [["routeData", key] for key in record["routeData"]]
    return paths


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_plain_records_read_the_same(name: str) -> None:
    kind, record = RECORDS[name]
    text = json.dumps(record)
    assert _new(kind, text) == _old(kind, text)
    assert _new(kind, text) == kind.from_dict(record)


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_changed_records_read_the_same_or_fail_the_same(name: str) -> None:
    kind, record = RECORDS[name]
    for path in _paths(record):  # every field, with every value
        for value in VALUES:
            text = _texts(record, path, value)
            assert _new(kind, text) == _old(kind, text), text


@pytest.mark.parametrize(
    "text", ["", "not json", "[]", '{"incidentId": "x"}', '{"a": NaN}', "\ufeff{}", '{"a": 1e999}']
)
def test_broken_records_are_refused_with_the_record_named(text: str) -> None:
    for kind, what in (
        (Incident, "invalid incident record"),
        (Decision, "invalid decision record"),
    ):
        with pytest.raises(ValueError, match=what):
            kind.from_json(text)
