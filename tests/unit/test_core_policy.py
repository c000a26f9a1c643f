"""Router policy, incident transitions and advice clamping."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selfheal.core.classify import HARD_CLASSES, Classification, FailureClass
from selfheal.core.contracts import CompletionStatus, SelfHealingRequest, parse_request
from selfheal.core.events import BACKUP_RETRY_REQUESTED, WORKER_RESTART_REQUESTED
from selfheal.core.incident import HISTORY_LIMIT, Action, Decision, Incident, IncidentState, Rule
from selfheal.core.policy import (
    Knobs,
    clamp_advice,
    completion_for,
    completion_json,
    decide,
)

NOW = 1_772_000_000_000
HOUR = 3_600_000
POLICY = {"maxRetries": 5, "sleepMinMs": 300_000, "sleepMaxMs": 14_400_000, "sleepStepMs": 30_000}
TRANSPORT = Classification(FailureClass.TRANSIENT_TRANSPORT, "errno ETIMEDOUT")
INFRA = Classification(FailureClass.TRANSIENT_INFRA, "errno ESTALE")
# The routes the backup and worker domains register with the router.
ROUTES = {"backup": BACKUP_RETRY_REQUESTED, "worker": WORKER_RESTART_REQUESTED}


def routed(**changes: Any) -> Knobs:
    """Knobs with the registered domains' routes."""
    return Knobs(**{"allowed_routes": ROUTES, **changes})


PROBED = routed(domains_with_probe=frozenset({"backup", "worker"}))


def request(**changes: Any) -> SelfHealingRequest:
    data: dict[str, Any] = {
        "sourceFunction": "system/backup.redis",
        "targetComponent": "redis",
        "problemSummary": "copy to NAS failed",
        "attempt": 0,
        "retryPolicy": POLICY,
        "evidence": [{"errno": "ETIMEDOUT"}],
        "playbook": {},
        "incidentId": "inc-1",
    }
    return parse_request(json.dumps(data | changes))


def incident(req: SelfHealingRequest | None = None, **changes: Any) -> Incident:
    return replace(Incident.new(req or request(), NOW, 4 * HOUR), **changes)


@pytest.mark.parametrize(
    ("inc", "req", "rule", "reason", "notify"),
    [
        (
            incident(state=IncidentState.ESCALATED),
            request(),
            Rule.ALREADY_CLOSED,
            "incident already closed",
            False,
        ),
        (
            incident(state=IncidentState.REMEDIATED),
            request(),
            Rule.ALREADY_CLOSED,
            "incident already closed",
            False,
        ),
        (incident(deadline_ms=NOW), request(), Rule.DEADLINE_PASSED, "deadline passed", True),
        (
            incident(),
            request(evidence=["Permission denied (publickey)"]),
            Rule.HARD_FAILURE,
            "hard failure: auth (message matches 'permission denied')",
            True,
        ),
        (
            incident(retries_used=5),
            request(),
            Rule.BUDGET_EXHAUSTED,
            "retry budget exhausted (5 of 5)",
            True,
        ),
        (
            incident(retries_used=5),
            request(fallbackAction="manual"),
            Rule.BUDGET_EXHAUSTED,
            "retry budget exhausted (5 of 5)",
            False,
        ),
        (
            incident(domain="queue"),
            request(),
            Rule.NO_ROUTE,
            "no retry route for domain queue",
            True,
        ),
        (
            incident(),
            request(routeTo={"event": "system/anything.else"}),
            Rule.ROUTE_REFUSED,
            "routeTo event system/anything.else refused: domain backup may only emit "
            "system/backup.retry.requested",
            True,
        ),
        (
            incident(deadline_ms=NOW + 300_000),
            request(),
            Rule.RETRY_PAST_DEADLINE,
            "next retry would pass the deadline (in 315000 ms)",
            True,
        ),
    ],
)
def test_escalation_rules(
    inc: Incident, req: SelfHealingRequest, rule: Rule, reason: str, notify: bool
) -> None:
    decision = decide(req, inc, NOW, routed(), 0.5)
    assert (decision.action, decision.rule, decision.reason) == (Action.ESCALATE, rule, reason)
    assert (decision.delay_ms, decision.fire_at_ms, decision.route_event) == (0, NOW, None)
    assert decision.notify is notify


@pytest.mark.parametrize("hard", sorted(HARD_CLASSES))
def test_every_hard_class_escalates_at_once(hard: FailureClass) -> None:
    found = Classification(hard, "test")
    decision = decide(request(), incident(), NOW, PROBED, 0.0, classification=found)
    assert (decision.action, decision.reason) == (Action.ESCALATE, f"hard failure: {hard} (test)")


def test_a_full_disk_named_in_free_form_evidence_escalates_at_once() -> None:
    detail = {"kind": "error", "detail": "OSError: [Errno 28] No space left on device"}
    req = request(evidence=[detail])
    decision = decide(req, incident(req), NOW, PROBED, 0.0)
    assert (decision.action, decision.rule) == (Action.ESCALATE, Rule.HARD_FAILURE)
    assert decision.failure_class == FailureClass.RESOURCE_EXHAUSTED
    assert decision.reason == (
        "hard failure: resource_exhausted (message matches 'no space left on device')"
    )


def test_retry_schedules_the_allowlisted_route() -> None:
    req = request(routeTo={"event": BACKUP_RETRY_REQUESTED, "data": {"target": "x", "attempt": 99}})
    decision = decide(req, incident(retries_used=2), NOW, routed(), 0.5)
    assert (decision.action, decision.rule) == (Action.RETRY, Rule.RETRY)
    assert decision.delay_ms == 1_200_000 + 15_000
    assert decision.fire_at_ms == NOW + 1_215_000
    assert decision.route_event == BACKUP_RETRY_REQUESTED
    # routeTo data sits under the defaults: the receiver's own fields cannot be overridden
    assert decision.route_data == {
        "target": "x",
        "incidentId": "inc-1",
        "targetComponent": "redis",
        "sourceFunction": "system/backup.redis",
        "attempt": 3,
    }
    assert decision.notify is False
    assert decision.reason == "retry 3 of 5 in 1215000 ms: transient_transport (errno ETIMEDOUT)"


def test_worker_domain_routes_to_restart() -> None:
    req = request(domain="worker")
    decision = decide(req, incident(req), NOW, routed(), 0.0)
    assert decision.route_event == WORKER_RESTART_REQUESTED


def test_manual_fallback_does_not_stop_retries() -> None:
    decision = decide(request(fallbackAction="manual"), incident(), NOW, routed(), 0.0)
    assert decision.action == Action.RETRY


def test_pause_needs_a_pause_class_and_a_probe() -> None:
    paused = decide(request(), incident(pauses=1), NOW, PROBED, 0.0, classification=INFRA)
    assert (paused.action, paused.rule, paused.delay_ms) == (Action.PAUSE, Rule.PAUSE, 600_000)
    assert (paused.route_event, paused.route_data) == (None, {})
    unprobed = decide(request(), incident(), NOW, routed(), 0.0, classification=INFRA)
    assert unprobed.action == Action.RETRY
    transport = decide(request(), incident(), NOW, PROBED, 0.0, classification=TRANSPORT)
    assert transport.action == Action.RETRY


def test_pause_is_capped_by_max_pause_and_by_the_deadline() -> None:
    capped = decide(request(), incident(pauses=4), NOW, PROBED, 0.0, classification=INFRA)
    assert capped.delay_ms == 900_000  # 4.8 M wanted, 15 min cap
    near = incident(deadline_ms=NOW + 1_000)
    short = decide(request(), near, NOW, PROBED, 0.0, classification=INFRA)
    assert (short.action, short.delay_ms, short.fire_at_ms) == (Action.PAUSE, 1_000, NOW + 1_000)


def test_budget_is_spent_before_pauses() -> None:
    spent = incident(retries_used=5)
    decision = decide(request(), spent, NOW, PROBED, 0.0, classification=INFRA)
    assert decision.rule == Rule.BUDGET_EXHAUSTED


def test_defect_1_replayed_attempt_zero_cannot_reset_the_budget() -> None:
    replayed = request(attempt=0)
    decision = decide(replayed, incident(retries_used=3), NOW, routed(), 0.0)
    assert (decision.attempt, decision.route_data["attempt"]) == (3, 4)
    assert decision.delay_ms == 2_400_000  # backoff follows the incident, not the request
    spent = decide(replayed, incident(retries_used=5), NOW, routed(), 0.0)
    assert spent.rule == Rule.BUDGET_EXHAUSTED
    late = decide(request(attempt=40), incident(), NOW, routed(), 0.0)
    assert (late.action, late.attempt) == (Action.RETRY, 0)


def test_request_for_another_incident_is_a_bug() -> None:
    with pytest.raises(ValueError, match="inc-2"):
        decide(request(incidentId="inc-2"), incident(), NOW, routed(), 0.0)
    with pytest.raises(ValueError, match="jitter"):
        decide(request(), incident(), NOW, routed(), 1.0)


@pytest.mark.parametrize(
    ("inc", "status"),
    [
        (incident(), CompletionStatus.SCHEDULED),
        (incident(retries_used=5), CompletionStatus.EXHAUSTED),
        (incident(deadline_ms=NOW - 1), CompletionStatus.ESCALATED),
    ],
)
def test_completion_status(inc: Incident, status: CompletionStatus) -> None:
    completion = completion_for(decide(request(), inc, NOW, routed(), 0.0), request())
    assert completion.status == status
    assert completion.to_data()["incidentId"] == "inc-1"
    paused = decide(request(), incident(), NOW, PROBED, 0.0, classification=INFRA)
    assert completion_for(paused, request()).status == CompletionStatus.PAUSED


@pytest.mark.parametrize(
    ("inc", "knobs", "found"),
    [
        (incident(), routed(), TRANSPORT),
        (incident(retries_used=5), routed(), TRANSPORT),
        (incident(deadline_ms=NOW - 1), routed(), TRANSPORT),
        (incident(), PROBED, INFRA),
        (incident(), routed(), Classification(FailureClass.AUTH, 'ünïcode "quoted" reason')),
    ],
)
def test_completion_json_is_the_completion_model_dumped(
    inc: Incident, knobs: Knobs, found: Classification
) -> None:
    req = request(sourceFunction="système/backup", targetComponent='redis "main"')
    decision = decide(req, inc, NOW, knobs, 0.3, classification=found)
    assert completion_json(decision, req) == completion_for(decision, req).model_dump_json(
        by_alias=True
    )


def test_incident_new_takes_deadline_from_request_or_window() -> None:
    assert incident().deadline_ms == NOW + 4 * HOUR
    dated = incident(request(deadlineAt="2026-02-25T12:00:00.123+01:00"))
    assert dated.deadline_ms == 1_772_017_200_123
    with pytest.raises(ValueError, match="recovery_window_ms"):
        Incident.new(request(), NOW, 0)


def test_transitions() -> None:
    start = incident()
    retried = start.after(decide(request(), start, NOW, routed(), 0.0), NOW + 1)
    assert (retried.retries_used, retried.state, retried.updated_ms) == (1, "scheduled", NOW + 1)
    paused = retried.after(decide(request(), retried, NOW, PROBED, 0.0, classification=INFRA), NOW)
    assert (paused.retries_used, paused.pauses, paused.state) == (1, 1, "paused")
    assert paused.last_class == "transient_infra"
    done = replace(paused, deadline_ms=NOW)
    escalated = done.after(decide(request(), done, NOW, routed(), 0.0), NOW)
    assert escalated.state == IncidentState.ESCALATED and escalated.closed
    assert [h["event"] for h in escalated.history] == ["opened", "retry", "pause", "escalate"]
    assert escalated.remediated(NOW).state == IncidentState.REMEDIATED


def test_a_decision_applies_once() -> None:
    start = incident()
    decision = decide(request(), start, NOW, routed(), 0.0)
    once = start.after(decision, NOW)
    with pytest.raises(ValueError, match="stale or already applied"):
        once.after(decision, NOW)


def test_closed_incidents_refuse_retries() -> None:
    closed = incident(state=IncidentState.ESCALATED)
    again = decide(request(), closed, NOW, routed(), 0.0)
    assert closed.after(again, NOW) is closed
    retry = replace(again, action=Action.RETRY)
    with pytest.raises(ValueError, match="escalated"):
        closed.after(retry, NOW)
    fixed = closed.remediated(NOW)
    assert fixed.remediated(NOW + 5) is fixed


def test_operator_reset() -> None:
    spent = incident(retries_used=5, state=IncidentState.ESCALATED)
    reset = spent.reset_budget(NOW + 10, "joel", deadline_ms=NOW + 5 * HOUR)
    assert (reset.retries_used, reset.state, reset.operator_resets) == (0, "open", 1)
    assert reset.deadline_ms == NOW + 5 * HOUR
    assert reset.history[-1] == {
        "atMs": NOW + 10,
        "event": "budget_reset",
        "by": "joel",
        "retriesUsed": 5,
    }
    assert reset.decision_key != incident().decision_key  # old decisions cannot apply
    assert decide(request(), reset, NOW + 10, routed(), 0.0).action == Action.RETRY
    with pytest.raises(ValueError, match="remediated"):
        spent.remediated(NOW).reset_budget(NOW, "joel")
    with pytest.raises(ValueError, match="operator"):
        spent.reset_budget(NOW, " ")


def test_history_is_capped() -> None:
    state = incident(deadline_ms=None)
    for step in range(HISTORY_LIMIT + 10):
        state = state.after(decide(request(), state, NOW, PROBED, 0.0, classification=INFRA), step)
    assert len(state.history) == HISTORY_LIMIT
    assert state.history[-1]["atMs"] == HISTORY_LIMIT + 9


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"retriesUsed": "1"}, "retriesUsed"),
        ({"retriesUsed": True}, "retriesUsed"),
        ({"pauses": -1}, "pauses"),
        ({"state": "bogus"}, "state"),
        ({"incidentId": None}, "incidentId"),
        ({"surprise": 1}, "surprise"),
        ({"firstSeenMs": float("nan")}, "firstSeenMs"),
    ],
)
def test_incident_from_json_names_bad_fields(changes: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        Incident.from_json(json.dumps(incident().to_dict() | changes))


@pytest.mark.parametrize(
    ("changes", "named"),
    [({"action": "reboot"}, "action"), ({"delayMs": -1}, "delayMs"), ({"notify": 1}, "notify")],
)
def test_decision_from_json_names_bad_fields(changes: dict[str, Any], named: str) -> None:
    data = decide(request(), incident(), NOW, routed(), 0.0).to_dict() | changes
    with pytest.raises(ValueError, match=named):
        Decision.from_json(json.dumps(data))


@pytest.mark.parametrize(
    "text", ["", "not json", "[]", '{"incidentId": "x"}', "\ufeff{}", '{"a": 1e999}']
)
def test_broken_records_are_refused_with_the_record_named(text: str) -> None:
    for kind, what in (
        (Incident, "invalid incident record"),
        (Decision, "invalid decision record"),
    ):
        with pytest.raises(ValueError, match=what):
            kind.from_json(text)


def _advise(action: str, delay: int | None, inc: Incident | None = None, **kwargs: Any) -> Decision:
    inc = inc or incident()
    knobs = kwargs.pop("knobs", PROBED)
    req = kwargs.pop("req", request())
    found = kwargs.pop("found", TRANSPORT)
    policy_decision = decide(req, inc, NOW, knobs, 0.0, classification=found)
    return clamp_advice(policy_decision, action, delay, req, inc, knobs, **kwargs)


@pytest.mark.parametrize(
    ("action", "delay", "expected_action", "expected_delay", "rule"),
    [
        ("retry", 400_000, Action.RETRY, 400_000, Rule.ADVISED),
        ("retry", 5, Action.RETRY, 300_000, Rule.ADVISED),  # raised to sleepMinMs
        ("retry", 10**12, Action.RETRY, 14_400_000, Rule.ADVISED),  # lowered to sleepMaxMs
        ("retry", None, Action.RETRY, 300_000, Rule.ADVISED),  # keeps the policy's delay
        ("pause", 10**9, Action.PAUSE, 900_000, Rule.ADVISED),  # max_pause_ms
        ("pause", None, Action.PAUSE, 300_000, Rule.ADVISED),
        ("escalate", None, Action.ESCALATE, 0, Rule.ADVISED),
        ("reboot", 1, Action.RETRY, 300_000, Rule.RETRY),  # not an allowed action
        ("retry", True, Action.RETRY, 300_000, Rule.RETRY),  # not whole milliseconds
    ],
)
def test_advice_is_clamped(
    action: str, delay: Any, expected_action: Action, expected_delay: int, rule: Rule
) -> None:
    decision = _advise(action, delay, advice_reason="nas busy", advisor={"model": "gpt-5.4"})
    assert (decision.action, decision.delay_ms, decision.rule) == (
        expected_action,
        expected_delay,
        rule,
    )
    assert decision.fire_at_ms == NOW + expected_delay
    assert decision.advisor == {"model": "gpt-5.4"}
    assert "advisor proposed" in decision.reason
    assert ("refused" in decision.reason) is (rule != Rule.ADVISED)
    if decision.action == Action.RETRY:
        assert decision.route_event == BACKUP_RETRY_REQUESTED
        assert decision.route_data["attempt"] == 1
    else:
        assert decision.route_event is None


def test_advice_cannot_lift_a_policy_escalation() -> None:
    spent = incident(retries_used=5)
    decision = _advise("retry", 300_000, spent)
    assert (decision.action, decision.rule) == (Action.ESCALATE, Rule.BUDGET_EXHAUSTED)
    assert "refused: the policy escalates (budget_exhausted)" in decision.reason
    hard = _advise("pause", 300_000, found=Classification(FailureClass.AUTH, "x"))
    assert hard.action == Action.ESCALATE
    agreed = _advise("escalate", None, spent)
    assert agreed.reason.endswith("advisor agreed") and agreed.notify


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"knobs": routed()}, "has no precondition probe"),
        ({"advice_route": "system/anything"}, "not allowlisted"),
    ],
)
def test_advised_pause_or_route_refused(kwargs: dict[str, Any], why: str) -> None:
    decision = _advise("pause", 300_000, **kwargs)
    assert decision.action == Action.RETRY and why in decision.reason


def test_advised_retry_respects_deadline_budget_and_hard_class() -> None:
    near = incident(deadline_ms=NOW + 600_000)
    assert _advise("retry", 700_000, near).delay_ms == 315_000 - 15_000  # policy stands
    assert "would pass the deadline" in _advise("retry", 700_000, near).reason
    inc = incident()
    policy_decision = decide(request(), inc, NOW, PROBED, 0.0, classification=INFRA)
    no_budget = request(retryPolicy=POLICY | {"maxRetries": 0})
    refused = clamp_advice(policy_decision, "retry", None, no_budget, inc, PROBED)
    assert refused.action == Action.PAUSE and "budget is spent" in refused.reason
    forged = replace(policy_decision, failure_class=FailureClass.CONFIG)
    refused = clamp_advice(forged, "retry", None, request(), inc, PROBED)
    assert refused.action == Action.PAUSE and "hard failure" in refused.reason
    routeless = replace(PROBED, allowed_routes={})
    refused = clamp_advice(policy_decision, "retry", None, request(), inc, routeless)
    assert "no retry route" in refused.reason
    with pytest.raises(ValueError, match="not for incident"):
        clamp_advice(policy_decision, "retry", None, request(), replace(inc, pauses=3), PROBED)


def test_advised_escalation_honours_manual_fallback() -> None:
    manual = request(fallbackAction="manual")
    decision = _advise("escalate", None, req=manual)
    assert decision.action == Action.ESCALATE and decision.notify is False


NON_HARD = st.sampled_from(
    [
        FailureClass.TRANSIENT_TRANSPORT,
        FailureClass.TRANSIENT_INFRA,
        FailureClass.INTEGRITY,
        FailureClass.UNKNOWN,
    ]
)
JITTERS = st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=8)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[SelfHealingRequest, Knobs]:
    low = draw(st.integers(1, 10_000_000))
    policy = {
        "maxRetries": draw(st.integers(0, 12)),
        "sleepMinMs": low,
        "sleepMaxMs": draw(st.integers(low, 4 * low)),
        "sleepStepMs": draw(st.integers(0, 100_000)),
    }
    # The window spans at most ~100 minimal delays and a hold is at least 1% of one,
    # so a pause loop ends (at the deadline) within ~10,000 re-checks.
    knobs = routed(
        recovery_window_ms=low * draw(st.integers(1, 100)),
        max_pause_ms=draw(st.integers(max(1, low // 100), 10_000_000)),
        domains_with_probe=frozenset({"backup"}) if draw(st.booleans()) else frozenset(),
    )
    return request(retryPolicy=policy), knobs


@settings(max_examples=60, deadline=None)
@given(scenarios(), NON_HARD, JITTERS)
def test_budget_and_deadline_hold_through_the_loop(
    scenario: tuple[SelfHealingRequest, Knobs], failure: FailureClass, jitters: list[float]
) -> None:
    req, knobs = scenario
    found = Classification(failure, "property")
    state = Incident.new(req, NOW, knobs.recovery_window_ms)
    now, retries = NOW, 0
    for step in range(100_000):
        jitter = jitters[step % len(jitters)]
        decision = decide(req, state, now, knobs, jitter, classification=found)
        assert decision == decide(req, state, now, knobs, jitter, classification=found)
        assert Decision.from_json(decision.to_json()) == decision
        assert state.deadline_ms is not None and decision.fire_at_ms <= state.deadline_ms
        state = state.after(decision, now)
        assert Incident.from_json(state.to_json()) == state
        if decision.action == Action.ESCALATE:
            break
        retries += decision.action == Action.RETRY
        now = decision.fire_at_ms
    else:
        pytest.fail("the loop never escalated")
    assert retries <= req.retry_policy.max_retries
    assert state.retries_used == retries


@settings(max_examples=60, deadline=None)
@given(
    scenarios(),
    NON_HARD,
    st.sampled_from(["retry", "pause", "escalate", "reboot"]),
    st.none() | st.integers(-(10**12), 10**12),
    st.integers(0, 13),
)
def test_clamped_advice_stays_inside_the_policy(
    scenario: tuple[SelfHealingRequest, Knobs],
    failure: FailureClass,
    action: str,
    delay: int | None,
    used: int,
) -> None:
    req, knobs = scenario
    state = replace(Incident.new(req, NOW, knobs.recovery_window_ms), retries_used=used)
    found = Classification(failure, "property")
    decision = decide(req, state, NOW + 1, knobs, 0.5, classification=found)
    final = clamp_advice(decision, action, delay, req, state, knobs)
    assert state.deadline_ms is not None and final.fire_at_ms <= state.deadline_ms
    policy = req.retry_policy
    if final.action == Action.RETRY:
        assert used < policy.max_retries
        assert policy.sleep_min_ms <= final.delay_ms <= policy.sleep_max_ms
        assert final.route_event == BACKUP_RETRY_REQUESTED
    if decision.action == Action.ESCALATE:
        assert final.action == Action.ESCALATE
    assert state.after(final, NOW + 1).retries_used <= max(used, policy.max_retries)
