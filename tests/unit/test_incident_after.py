"""Incident.after's copy without dataclasses.replace gives what replace gives."""

from __future__ import annotations

import dataclasses

import pytest

from selfheal.core.contracts import parse_request
from selfheal.core.incident import Incident, IncidentState
from selfheal.core.policy import Action, Knobs, decide

NOW = 1_772_000_000_000


def _request(evidence: str, **extra: object) -> dict[str, object]:
    return {
        "sourceFunction": "t",
        "targetComponent": "redis",
        "problemSummary": "copy failed",
        "attempt": 0,
        "retryPolicy": {
            "maxRetries": 2,
            "sleepMinMs": 1000,
            "sleepMaxMs": 5000,
            "sleepStepMs": 100,
        },
        "playbook": {},
        "evidence": [{"message": evidence}],
        "incidentId": "i:1",
        "domain": "backup",
        **extra,
    }


def _replaced(incident: Incident, decision: object, now_ms: int) -> Incident:
    """Incident.after as written with dataclasses.replace."""
    after = incident.after(decision, now_ms)  # type: ignore[arg-type]
    changed = {f.name: getattr(after, f.name) for f in dataclasses.fields(Incident)}
    return dataclasses.replace(incident, **changed)


@pytest.mark.parametrize("evidence", ["Connection timed out", "ENOSPC: no space left"])
@pytest.mark.parametrize("probe", [False, True])
def test_after_matches_replace_along_a_chain(evidence: str, probe: bool) -> None:
    knobs = Knobs(domains_with_probe=frozenset({"backup"}) if probe else frozenset())
    request = parse_request(_request(evidence))
    incident = Incident.new(request, NOW, knobs.recovery_window_ms)
    seen = set()
    for step in range(5):
        now = NOW + step * 10_000
        decision = decide(request, incident, now, knobs, 0.5)
        after = incident.after(decision, now)
        expected = _replaced(incident, decision, now)
        assert after == expected
        assert type(after) is Incident
        assert vars(after) == vars(expected)
        assert list(vars(after)) == [f.name for f in dataclasses.fields(Incident)]
        assert after.to_dict() == expected.to_dict()
        assert hash(repr(after)) == hash(repr(expected))
        with pytest.raises(dataclasses.FrozenInstanceError):
            after.state = IncidentState.OPEN  # type: ignore[misc]
        seen.add(decision.action)
        if after.closed:
            assert after.after(decision, now) is after  # re-escalating changes nothing
            break
        incident = after
    assert seen & {Action.RETRY, Action.PAUSE, Action.ESCALATE}


def test_the_copy_shortcut_stays_sound() -> None:
    # Incidents are built from a dict of their fields (core/records.py); these would break it.
    assert not hasattr(Incident, "__post_init__")
    assert not hasattr(Incident, "__slots__")
    incident = Incident.new(parse_request(_request("x")), NOW, 1000)
    assert set(vars(incident)) == {f.name for f in dataclasses.fields(Incident)}
