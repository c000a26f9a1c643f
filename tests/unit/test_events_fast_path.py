"""Event.from_wire's fast path (no re-serialisation of parsed data) decides like the full path."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from selfheal.core import events
from selfheal.core.events import Event, EventDecodeError, new_event


def _full_path(text: str) -> Any:
    raise events._NotPlainJson  # from_wire then parses plainly and checks the data in full


def _decode(wire: dict[str, str]) -> Any:
    """The event, or (field, problem) of the decode error."""
    try:
        return Event.from_wire(wire)
    except EventDecodeError as exc:
        return (exc.field, exc.problem)


def _both(wire: dict[str, str]) -> tuple[Any, Any]:
    fast = _decode(wire)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(events, "_parse_plain", _full_path)
        full = _decode(wire)
    return fast, full


def _wire(data: str) -> dict[str, str]:
    wire = new_event(events.BACKUP_FAILED, {}, now_ms=9).to_wire()
    wire["data"] = data
    return wire


@pytest.mark.parametrize(
    "data",
    [
        '{"a": 1}',
        '{"x": NaN}',
        '{"x": Infinity}',
        '{"x": [-Infinity]}',
        '{"x": 1e999}',
        '{"x": -1e400}',
        '{"x": 1e-999}',
        '{"x": 1.5, "y": [2e3, 0.0]}',
        "\ufeff{}",
        " {} ",
        "{not json",
        "[1, 2]",
        '{"x": "\\ud800"}',
        '{"x": ' + "1" * 5000 + "}",
        '{"a":' * 99 + "1" + "}" * 99,
        '{"a":' * 101 + "1" + "}" * 101,
        '{"a":' * 5000 + "1" + "}" * 5000,
        '{"s": "' + "{" * 200 + '"}',
    ],
)
def test_fast_path_matches_full_path(data: str) -> None:
    fast, full = _both(_wire(data))
    assert fast == full


def test_nan_is_still_refused_by_name() -> None:
    with pytest.raises(EventDecodeError) as caught:
        Event.from_wire(_wire('{"x": NaN}'))
    assert caught.value.field == "data"
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


JSON_TEXT = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=6)
    | st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1e-999", "2.5E3"]),
    lambda inner: (
        st.lists(inner, max_size=3).map(lambda xs: "[" + ",".join(map(_text, xs)) + "]")
        | st.dictionaries(st.text(max_size=4), inner, max_size=3).map(
            lambda d: "{" + ",".join(f"{json.dumps(k)}:{_text(v)}" for k, v in d.items()) + "}"
        )
    ),
    max_leaves=12,
)


def _text(value: Any) -> str:
    if isinstance(value, str) and (
        value.startswith(("[", "{"))
        or value in {"NaN", "Infinity", "-Infinity"}
        or value.replace("-", "").replace("e", "").replace("E", "").replace(".", "").isdigit()
    ):
        return value  # already JSON text (or a bare constant)
    return json.dumps(value)  # plain Python values; floats may print as NaN / Infinity


@given(st.dictionaries(st.text(max_size=4), JSON_TEXT, max_size=4))
def test_fast_path_matches_full_path_on_generated_text(members: dict[str, Any]) -> None:
    data = "{" + ",".join(f"{json.dumps(k)}:{_text(v)}" for k, v in members.items()) + "}"
    fast, full = _both(_wire(data))
    assert fast == full
