"""Event.from_wire's plain-entry path decides exactly like the full decode.

from_wire first tries _plain_entry (cheap exact checks, jiter for the data, no model
validation) and falls back to _from_wire_checked (model validation, which words the
errors). The full decode is the reference: for any entry, from_wire must return an event
identical to the one it returns, or raise the same error.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from pydantic_core import from_json
from ulid import ULID

from selfheal.core import events
from selfheal.core.events import Event, EventDecodeError, compact_json, new_event
from tests.support.events import wire_entry
from tests.support.values import typed

TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def outcome(decode: Any, wire: Any) -> Any:
    """The typed event, or the error's field and problem."""
    try:
        return typed(decode(wire))
    except EventDecodeError as exc:
        return ("error", exc.field, exc.problem)


def _full_check(_text: str) -> Any:
    raise events._NotPlainJson  # _from_wire_checked then checks the data in full


def assert_same_as_full_decode(wire: Any) -> None:
    """from_wire agrees with the full decode, with and without its plain-JSON shortcut."""
    got = outcome(Event.from_wire, wire)
    assert got == outcome(Event._from_wire_checked, wire)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(events, "_parse_plain", _full_check)
        assert got == outcome(Event._from_wire_checked, wire)


def _wire(data: str = '{"a": 1}', **changes: Any) -> dict[str, Any]:
    return wire_entry(data=data, **changes)


def _as_bytes(wire: Mapping[str, Any]) -> dict[bytes, Any]:
    """Bytes as Redis keeps them; lone surrogates become the (invalid) UTF-8 of their code."""
    return {
        k.encode(): v.encode("utf-8", "surrogatepass") if isinstance(v, str) else v
        for k, v in wire.items()
    }


DATA_CASES = [
    '{"a": 1}',
    "{}",
    '{"x": NaN}',
    '{"x": Infinity}',
    '{"x": [-Infinity]}',
    '{"x": 1e999}',
    '{"x": 1E309}',
    '{"x": -1e400}',
    '{"x": 1e-999}',
    '{"x": 1.7976931348623157e308}',
    '{"x": 1.7976931348623159e308}',
    '{"x": 2.2250738585072011e-308}',
    '{"x": 0.1, "y": 9007199254740993.0, "z": -0.0, "w": -0}',
    '{"x": 1.5, "y": [2e3, 0.0, 1e+2, 1E-2]}',
    '{"x": ' + "9" * 308 + ".5}",
    '{"x": ' + "9" * 309 + ".5}",
    '{"x": ' + "9" * 400 + "}",
    '{"x": ' + "1" * 4300 + "}",
    '{"x": ' + "1" * 4301 + "}",
    '{"x": 0.' + "0" * 400 + "1e400}",
    '{"s": "3e400 is text, not a number"}',
    "\ufeff{}",
    " {} ",
    "\t{}\r\n",
    "{}x",
    '{"a":1,}',
    "{not json",
    "[1, 2]",
    '"text"',
    "null",
    "",
    '{"x": "\\ud800"}',
    '{"\\udc00": 1}',
    '{"x": "\\ud83d\\ude00"}',
    '{"x": "\x01"}',
    '{"x": "\\u0000"}',
    '{"x": "é€😀"}',
    '{"a": 1, "a": 2, "b": 3}',
    '{"b": 0, "a": 1, "b": 2}',
    '{"x": 01}',
    '{"x": 1.}',
    '{"x": .5}',
    '{"x": +1}',
    '{"x": tru}',
    '{"x": ' + "1" * 5000 + "}",
    '{"a":' * 99 + "1" + "}" * 99,
    '{"a":' * 101 + "1" + "}" * 101,
    '{"a":' * 199 + "1" + "}" * 199,
    '{"a":' * 201 + "1" + "}" * 201,
    '{"a":' * 5000 + "1" + "}" * 5000,
    '{"s": "' + "{" * 200 + '"}',
    '{"s": "' + "x" * 5000 + '", "n": 1e999}',
    '{"s": "' + "x" * 5000 + '", "n": 1e99}',
]


@pytest.mark.parametrize("data", DATA_CASES)
@pytest.mark.parametrize("as_bytes", [False, True])
def test_data_decides_like_the_full_decode(data: str, as_bytes: bool) -> None:
    wire = _wire(data)
    assert_same_as_full_decode(_as_bytes(wire) if as_bytes else wire)


class Label(str):
    pass


ID = str(ULID.from_timestamp(9))
FIELD_CASES: list[dict[str, Any]] = [
    {},
    {"traceparent": TRACE},
    {"traceparent": ""},
    {"traceparent": None},  # absent
    {"traceparent": "x"},
    {"traceparent": TRACE.upper()},
    {"traceparent": TRACE + "\n"},
    {"traceparent": "00-" + "0" * 32 + "-00f067aa0ba902b7-01"},
    {"id": ID.lower()},
    {"id": ID + "\n"},
    {"id": ID[:-1]},
    {"id": "8" + ID[1:]},
    {"id": "01ARZ3NDEKTSV4RRFFQ69G5FAU"},
    {"id": ""},
    {"name": "a/b"},
    {"name": "ab"},
    {"name": "a/" + "b" * 198},
    {"name": "a/" + "b" * 199},
    {"name": "Bad Name"},
    {"name": "a/b\n"},
    {"name": "/"},
    {"name": "é/b"},
    {"ts": "0"},
    {"ts": "0009"},
    {"ts": "9" * 16},
    {"ts": "9" * 17},
    {"ts": "-5"},
    {"ts": "+5"},
    {"ts": " 5"},
    {"ts": "12.5"},
    {"ts": "1_000"},
    {"ts": "١٢"},  # Arabic-Indic digits: str.isdigit says yes, the wire format says no
    {"ts": "²"},
    {"ts": ""},
    {"idempotencyKey": ""},
    {"idempotencyKey": " "},
    {"idempotencyKey": "k" * 256},
    {"idempotencyKey": "k" * 257},
    {"idempotencyKey": "é" * 256},
    {"idempotencyKey": "é" * 257},
    {"idempotencyKey": "a\ud800"},
    {"idempotencyKey": "😀"},
    {"name": Label(events.BACKUP_FAILED)},
    {"id": Label(ID)},
    {"data": Label("{}")},
    {"extra": "later version"},
    {"extra": b"\xff"},
    {"name": None},
    {"data": None},
    {"id": None},
    {"ts": None},
    {"idempotencyKey": None},
]


@pytest.mark.parametrize("changes", FIELD_CASES)
@pytest.mark.parametrize("as_bytes", [False, True])
def test_fields_decide_like_the_full_decode(changes: dict[str, Any], as_bytes: bool) -> None:
    wire = _wire(**changes)
    assert_same_as_full_decode(_as_bytes(wire) if as_bytes else wire)


@pytest.mark.parametrize(
    "value",
    [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", bytearray(b"x"), 5],
)
@pytest.mark.parametrize("field", ["id", "name", "data", "ts", "idempotencyKey", "traceparent"])
def test_undecodable_values_decide_like_the_full_decode(field: str, value: Any) -> None:
    wire = _as_bytes(_wire())
    raw = wire[field.encode()]
    wire[field.encode()] = value if not isinstance(value, bytes) else raw[:1] + value + raw[1:]
    assert_same_as_full_decode(wire)
    text = _wire()
    text[field] = value
    assert_same_as_full_decode(text)


@pytest.mark.parametrize(
    "wire",
    [
        {**_wire(), b"id": b"x"},  # both kinds of key
        {k.encode() if k != "data" else k: v.encode() for k, v in _wire().items()},
        {k: v.encode() for k, v in _wire().items()},  # text keys, bytes values
        {k.encode(): v for k, v in _wire().items()},  # bytes keys, text values
        {k.encode(): memoryview(v.encode()) for k, v in _wire().items()},
        {"id": 1},
        {},
    ],
)
def test_mixed_entries_decide_like_the_full_decode(wire: Any) -> None:
    assert_same_as_full_decode(wire)


def test_the_plain_path_takes_ordinary_entries() -> None:
    event = new_event(events.SELF_HEALING_REQUESTED, {"a": [1, 2.5, None]}, now_ms=5)
    assert events._plain_entry(event.to_wire()) == event
    # Bytes (as hiredis gives them) take the full decode, with the same result.
    assert events._plain_entry(_as_bytes(event.to_wire())) is None
    assert Event.from_wire(_as_bytes(event.to_wire())) == event
    untraced = {k: v for k, v in event.to_wire().items() if k != "traceparent"}
    assert events._plain_entry(untraced) == event


def test_the_plain_event_is_a_model_like_any_other() -> None:
    wire = new_event(events.BACKUP_FAILED, {"a": [1, {"b": "c"}]}, now_ms=7).to_wire()
    fast = events._plain_entry(wire)
    full = Event._from_wire_checked(wire)
    assert fast is not None
    assert typed(fast) == typed(full)
    assert fast.model_dump() == full.model_dump()
    assert fast.model_dump_json() == full.model_dump_json()
    assert repr(fast) == repr(full)
    assert pickle.loads(pickle.dumps(fast)) == full
    assert fast.model_copy(update={"ts": 8}).ts == 8
    with pytest.raises(ValidationError):
        fast.ts = 1  # type: ignore[misc]  # still frozen
    assert Event.model_validate(fast.model_dump()) == fast


def test_subclasses_take_the_full_path(monkeypatch: pytest.MonkeyPatch) -> None:
    class Checked(Event):
        pass

    calls: list[Any] = []
    monkeypatch.setattr(events, "_plain_entry", lambda fields: calls.append(fields))
    assert type(Checked.from_wire(_wire())) is Checked
    assert calls == []


def test_event_names_are_remembered_only_when_valid() -> None:
    with pytest.raises(EventDecodeError):
        Event.from_wire(_wire(name="x/never.valid!"))
    assert "x/never.valid!" not in events._KNOWN_NAMES
    Event.from_wire(_wire(name="x/valid"))
    assert "x/valid" in events._KNOWN_NAMES


def test_nan_is_still_refused_by_name() -> None:
    with pytest.raises(EventDecodeError) as caught:
        Event.from_wire(_wire('{"x": NaN}'))
    assert caught.value.field == "data"
    assert "JSON-serialisable" in caught.value.problem


def test_overflow_is_refused_whatever_the_text_length() -> None:
    for data in ('{"x": 1e999}', '{"s": "' + "x" * 5000 + '", "n": [1e999]}'):
        with pytest.raises(EventDecodeError) as caught:
            Event.from_wire(_wire(data))
        assert "JSON-serialisable" in caught.value.problem


def test_fast_path_skips_the_reserialisation(monkeypatch: pytest.MonkeyPatch) -> None:
    plain, overflow = _wire('{"a": [1, 2.5, null, true, "x"]}'), _wire('{"a": 1e999}')
    calls: list[Any] = []
    real = events.compact_json

    def counted(value: Any) -> str:
        calls.append(value)
        return real(value)

    monkeypatch.setattr(events, "compact_json", counted)
    Event.from_wire(plain)
    assert calls == []
    with pytest.raises(EventDecodeError):
        Event.from_wire(overflow)  # refused, by the full check
    assert len(calls) == 1


def test_other_fields_are_still_validated_on_the_fast_path() -> None:
    wire = _wire('{"a": 1}')
    for field, bad in (("id", "nope"), ("name", "Bad Name"), ("traceparent", "x")):
        with pytest.raises(EventDecodeError) as caught:
            Event.from_wire(wire | {field: bad})
        assert caught.value.field == field


def test_model_construction_still_checks_data() -> None:
    with pytest.raises(ValueError, match="JSON-serialisable"):
        Event(id=str(new_event(events.BACKUP_FAILED, {}, now_ms=1).id), name="a/b",
              data={"x": float("nan")}, ts=1, idempotency_key="k")  # fmt: skip


def test_the_event_model_is_the_one_the_plain_path_knows() -> None:
    # _plain_entry re-implements Event's checks; a change to the model must change it too.
    assert events._plain_model_class(Event)
    assert set(Event.__pydantic_decorators__.field_validators) == {
        "_data_is_json",
        "_traceparent_is_w3c",
    }
    assert Event.model_json_schema() == {
        "additionalProperties": False,
        "description": Event.__doc__,
        "properties": {
            "id": {"pattern": events.ULID_PATTERN, "title": "Id", "type": "string"},
            "name": {
                "maxLength": 200,
                "minLength": 3,
                "pattern": events.EVENT_NAME_PATTERN,
                "title": "Name",
                "type": "string",
            },
            "data": {"additionalProperties": True, "title": "Data", "type": "object"},
            "ts": {"minimum": 0, "title": "Ts", "type": "integer"},
            "idempotencyKey": {
                "maxLength": 256,
                "minLength": 1,
                "title": "Idempotencykey",
                "type": "string",
            },
            "traceparent": {
                "anyOf": [{"type": "string"}, {"type": "null"}],
                "default": None,
                "title": "Traceparent",
            },
        },
        "required": ["id", "name", "data", "ts", "idempotencyKey"],
        "title": "Event",
        "type": "object",
    }


# -- generated entries --------------------------------------------------------------------

ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=12)  # lone surrogates too

NUMBER_TEXT = st.one_of(
    st.integers().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.from_regex(r"-?(0|[1-9][0-9]{0,400})(\.[0-9]{1,30})?([eE][-+]?[0-9]{1,4})?", fullmatch=True),
    st.sampled_from(
        ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1e-999", "01", "1.", ".5"]
    ),
)
JSON_TEXT = st.recursive(
    st.sampled_from(["null", "true", "false"])
    | NUMBER_TEXT
    | ANY_TEXT.map(json.dumps)
    | st.text(max_size=6).map(lambda s: json.dumps(s, ensure_ascii=False)),
    lambda inner: (
        st.lists(inner, max_size=3).map(lambda xs: "[" + ",".join(xs) + "]")
        | st.lists(st.tuples(ANY_TEXT.map(json.dumps), inner), max_size=3).map(
            lambda kvs: "{" + ",".join(f"{k}:{v}" for k, v in kvs) + "}"
        )
    ),
    max_leaves=12,
)
OBJECT_TEXT = st.lists(st.tuples(ANY_TEXT.map(json.dumps), JSON_TEXT), max_size=4).map(
    lambda kvs: "{" + ",".join(f"{k}:{v}" for k, v in kvs) + "}"
)


@settings(max_examples=500, deadline=None)
@given(JSON_TEXT)
def test_jiter_reads_json_as_json_does(text: str) -> None:
    """Where both accept a text, pydantic_core's parser and json's give the same value."""
    try:
        ours = from_json(text, allow_inf_nan=False)
    except (ValueError, TypeError):
        return
    theirs = json.loads(text)
    assert typed(ours) == typed(theirs)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=8), st.binary(max_size=8))
def test_jiter_refuses_bytes_that_are_not_utf8(before: bytes, inside: bytes) -> None:
    text = b'{"k' + before + b'": "' + inside + b'"}'
    try:
        from_json(text)
    except ValueError:
        return
    text.decode("utf-8")  # what jiter accepted is UTF-8, so the full decode gets as far


@settings(max_examples=500, deadline=None)
@given(OBJECT_TEXT)
def test_plain_data_is_plain_json(text: str) -> None:
    """What _plain_data returns, compact_json writes; it agrees with json.loads."""
    data = events._plain_data(text)
    if data is not None:
        assert typed(data) == typed(json.loads(text))
        compact_json(data)


VALID_NAMES = st.sampled_from([events.SELF_HEALING_REQUESTED, events.BACKUP_FAILED, "a/b"])
ULIDS = st.integers(0, 2**48 - 1).map(lambda ms: str(ULID.from_timestamp(ms)))


def _mostly(draw: st.DrawFn, valid: st.SearchStrategy[str], other: st.SearchStrategy[str]) -> str:
    """A valid value nine times in ten, so most entries are valid or nearly so."""
    return draw(other if draw(st.integers(0, 9)) == 0 else valid)


@st.composite
def wire_entries(draw: st.DrawFn) -> Any:
    """Valid entries, each field possibly perturbed, as text or bytes."""
    wire: dict[str, Any] = {
        "id": _mostly(draw, ULIDS, ANY_TEXT | ULIDS.map(str.lower)),
        "name": _mostly(draw, VALID_NAMES, ANY_TEXT | st.from_regex(events.EVENT_NAME_PATTERN)),
        "data": _mostly(draw, OBJECT_TEXT, JSON_TEXT),
        "ts": _mostly(
            draw, st.integers(0, 10**16 - 1).map(str), st.from_regex("[0-9\u0660-\u0669+ -]{0,18}")
        ),
        "idempotencyKey": _mostly(draw, ULIDS, ANY_TEXT | st.text(min_size=250, max_size=260)),
        "traceparent": _mostly(
            draw, st.sampled_from(["", TRACE]), st.sampled_from(["00-x", TRACE[:-1] + "g"])
        ),
    }
    if draw(st.integers(0, 9)) == 0:
        for key in draw(st.lists(st.sampled_from(sorted(wire)), max_size=2)):
            wire.pop(key, None)
    if draw(st.integers(0, 9)) == 0:
        wire[draw(st.sampled_from(["extra", "ID"]))] = draw(ANY_TEXT)
    encoding = draw(st.sampled_from(["text", "bytes", "bytes", "mixed"]))
    if encoding == "text":
        return wire
    encoded: dict[Any, Any] = {}
    for key, value in wire.items():
        raw = value.encode("utf-8", "surrogatepass")
        if encoding == "mixed" and draw(st.integers(0, 5)) == 0:
            encoded[key if draw(st.booleans()) else key.encode()] = draw(
                st.sampled_from([value, raw, bytearray(raw), raw + b"\xff"])
            )
        else:
            encoded[key.encode()] = raw
    return encoded


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wire_entries())
def test_generated_entries_decide_like_the_full_decode(wire: Any) -> None:
    assert_same_as_full_decode(wire)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=4), JSON_TEXT, max_size=4))
def test_fast_path_matches_full_path_on_generated_text(members: dict[str, str]) -> None:
    data = "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in members.items()) + "}"
    assert_same_as_full_decode(_wire(data))


def _encoded(encode: Any, value: Any) -> Any:
    try:
        return encode(value)
    except (TypeError, ValueError) as exc:
        return (type(exc), str(exc))


@settings(max_examples=500, deadline=None)
@given(JSON_TEXT)
def test_compact_json_writes_what_json_dumps_writes(text: str) -> None:
    """compact_json's reused C encoder writes (and refuses) exactly as json.dumps does."""
    try:
        value = json.loads(text)  # NaN and infinities included: both must refuse them
    except (ValueError, RecursionError):
        return
    for item in (value, [value, {"k": value}], {"k": value, "n": None}):
        dumped = _encoded(lambda v: json.dumps(v, separators=(",", ":"), allow_nan=False), item)
        assert _encoded(compact_json, item) == dumped


def test_compact_json_refuses_what_json_cannot_hold() -> None:
    for value in ({"a": object()}, {(1, 2): 3}, [float("nan")], {"a": float("-inf")}):
        dumped = _encoded(lambda v: json.dumps(v, separators=(",", ":"), allow_nan=False), value)
        assert _encoded(compact_json, value) == dumped
        assert isinstance(dumped, tuple)
    circular: list[Any] = []
    circular.append(circular)
    with pytest.raises(RecursionError):
        compact_json(circular)


# -- envelopes: the data left as text ------------------------------------------------------


def assert_envelope_holds(wire: Any) -> None:
    """plain_envelope's promise: when a strict JSON parser (msgspec) reads its data as an
    object, from_wire returns an event with the envelope's fields and that data."""
    envelope = events.plain_envelope(wire)
    if envelope is None:
        return
    assert events._plain_fields(wire) == envelope
    try:
        strict = msgspec.json.decode(envelope.data)
    except (msgspec.DecodeError, msgspec.ValidationError):  # not JSON, or out of range
        return
    if type(strict) is not dict:
        return
    event = Event.from_wire(wire)
    assert (event.id, event.name, event.ts, event.idempotency_key, event.traceparent) == (
        envelope.id,
        envelope.name,
        envelope.ts,
        envelope.idempotency_key,
        envelope.traceparent,
    )
    assert typed(event.data) == typed(strict)


@pytest.mark.parametrize("data", DATA_CASES)
def test_envelope_of_each_data_case(data: str) -> None:
    assert_envelope_holds(_wire(data))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wire_entries())
def test_envelope_of_generated_entries(wire: Any) -> None:
    assert_envelope_holds(wire)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.text(max_size=4), JSON_TEXT, max_size=4))
def test_envelope_of_generated_data(members: dict[str, str]) -> None:
    data = "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in members.items()) + "}"
    assert_envelope_holds(_wire(data))


def test_envelope_takes_ordinary_entries_and_leaves_the_rest() -> None:
    wire = new_event(events.SELF_HEALING_REQUESTED, {"a": [1, 2.5, "x"]}, now_ms=5).to_wire()
    envelope = events.plain_envelope(wire)
    assert envelope is not None and envelope.data == wire["data"] and envelope.ts == 5
    # Each of these the envelope leaves to a full decode.
    for data in ('{"n": 1e5}', '{"n": ' + "1" * 309 + "}", "\ufeff{}", '{"s": "\ud800"}'):
        assert events.plain_envelope({**wire, "data": data}) is None, data
    assert events.plain_envelope({**wire, "data": "[" * 101 + "]" * 101}) is None
    assert events.plain_envelope(_as_bytes(wire)) is None
    assert events.plain_envelope({**wire, "id": "nope"}) is None
