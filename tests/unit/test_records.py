"""record_builder builds what the dataclass's own __init__ builds."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from selfheal.core.classify import FailureClass
from selfheal.core.incident import Incident, IncidentState
from selfheal.core.policy import Action, Decision, Rule
from selfheal.core.records import record_builder

texts = st.text(max_size=20)
counts = st.integers(min_value=0, max_value=10**6)

decision_values = st.fixed_dictionaries(
    {
        "incident_id": texts,
        "attempt": counts,
        "action": st.sampled_from(Action),
        "delay_ms": counts,
        "fire_at_ms": counts,
        "failure_class": st.sampled_from(FailureClass),
        "reason": texts,
        "rule": st.sampled_from(Rule),
        "decided_at_ms": counts,
    },
    optional={
        "route_event": st.none() | texts,
        "route_data": st.dictionaries(texts, counts, max_size=3),
        "notify": st.booleans(),
        "advisor": st.none() | st.dictionaries(texts, texts, max_size=2),
        "pauses": counts,
        "resets": counts,
    },
)

incident_values = st.fixed_dictionaries(
    {
        "incident_id": texts,
        "domain": texts,
        "target_component": texts,
        "source_function": texts,
        "first_seen_ms": counts,
        "deadline_ms": st.none() | counts,
        "updated_ms": counts,
    },
    optional={
        "retries_used": counts,
        "pauses": counts,
        "state": st.sampled_from(IncidentState),
        "last_class": st.none() | texts,
        "history": st.tuples(st.dictionaries(texts, counts, max_size=2)),
        "operator_resets": counts,
    },
)


def _same(built: Any, expected: Any) -> None:
    assert built == expected
    assert type(built) is type(expected)
    assert list(vars(built)) == list(vars(expected))  # same fields, same order
    assert vars(built) == vars(expected)
    assert repr(built) == repr(expected)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.reason = "changed"


@given(decision_values)
def test_decisions_match_the_dataclass_init(values: dict[str, Any]) -> None:
    built = record_builder(Decision)(values)
    _same(built, Decision(**values))
    assert built.to_dict() == Decision(**values).to_dict()


@given(incident_values)
def test_incidents_match_the_dataclass_init(values: dict[str, Any]) -> None:
    _same(record_builder(Incident)(values), Incident(**values))


def test_default_factories_give_each_record_its_own_value() -> None:
    build = record_builder(Decision)
    values = {
        "incident_id": "i",
        "attempt": 0,
        "action": Action.RETRY,
        "delay_ms": 1,
        "fire_at_ms": 1,
        "failure_class": FailureClass.UNKNOWN,
        "reason": "r",
        "rule": Rule.RETRY,
        "decided_at_ms": 1,
    }
    first, second = build(values), build(values)
    assert first.route_data == {} and first.route_data is not second.route_data


def test_missing_and_unknown_fields_are_refused() -> None:
    build = record_builder(Decision)
    with pytest.raises(TypeError, match="needs incident_id"):
        build({"attempt": 0})
    with pytest.raises(TypeError, match="has no field"):
        build({"incident_id": "i", "bogus": 1})


def test_classes_with_their_own_init_logic_are_refused() -> None:
    @dataclasses.dataclass(frozen=True)
    class Checked:
        value: int

        def __post_init__(self) -> None:
            raise ValueError

    @dataclasses.dataclass(frozen=True, slots=True)
    class Slotted:
        value: int

    @dataclasses.dataclass(frozen=True)
    class Later:
        value: int
        derived: int = dataclasses.field(init=False, default=0)

    for cls in (Checked, Slotted, Later, int):
        with pytest.raises(TypeError):
            record_builder(cls)
