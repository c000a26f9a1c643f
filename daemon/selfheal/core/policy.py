"""The router policy: retry, pause or escalate, decided purely from request, incident and time."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from selfheal.core.backoff import check_jitter, retry_delay_ms
from selfheal.core.classify import HARD_CLASSES, Classification, FailureClass, classify
from selfheal.core.contracts import Completion, SelfHealingRequest
from selfheal.core.events import text_json
from selfheal.core.incident import Action, Decision, Incident, Rule

DEFAULT_RECOVERY_WINDOW_MS: Final = 4 * 60 * 60 * 1000  # the original's nasRecoveryWindowHours
DEFAULT_MAX_PAUSE_MS: Final = 15 * 60 * 1000


@dataclass(frozen=True)
class Knobs:
    """Router settings that do not travel in the request."""

    recovery_window_ms: int = DEFAULT_RECOVERY_WINDOW_MS
    max_pause_ms: int = DEFAULT_MAX_PAUSE_MS  # cap of one hold before the re-check
    pause_classes: frozenset[FailureClass] = frozenset({FailureClass.TRANSIENT_INFRA})
    # Pausing means "hold, then re-check a precondition", so only domains with a probe may.
    domains_with_probe: frozenset[str] = frozenset()
    # The only event a retry may emit, per domain (defect 8: never a free-form event);
    # the router fills it from the registered domains.
    allowed_routes: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.recovery_window_ms <= 0 or self.max_pause_ms <= 0:
            raise ValueError("recovery_window_ms and max_pause_ms must be > 0")


def _shell(incident: Incident, now_ms: int, found: Classification) -> dict[str, Any]:
    """Fields every decision for this incident state shares."""
    return {
        "incident_id": incident.incident_id,
        "attempt": incident.retries_used,
        "pauses": incident.pauses,
        "resets": incident.operator_resets,
        "failure_class": found.failure_class,
        "decided_at_ms": now_ms,
    }


def _escalate(
    request: SelfHealingRequest,
    incident: Incident,
    now_ms: int,
    found: Classification,
    rule: Rule,
    reason: str,
) -> Decision:
    # fallbackAction says what giving up means: "manual" queues without notifying.
    notify = rule != Rule.ALREADY_CLOSED and request.fallback_action != "manual"
    return Decision(
        **_shell(incident, now_ms, found),
        action=Action.ESCALATE,
        delay_ms=0,
        fire_at_ms=now_ms,
        reason=reason,
        rule=rule,
        notify=notify,
    )


def route_data(request: SelfHealingRequest, incident: Incident) -> dict[str, Any]:
    """The data of a retry event: routeTo.data under the fields the receiver relies on
    (those always win)."""
    extra = dict(request.route_to.data) if request.route_to is not None else {}
    return {
        **extra,
        "incidentId": incident.incident_id,
        "targetComponent": incident.target_component,
        "sourceFunction": incident.source_function,
        "attempt": incident.retries_used + 1,  # 1 = the first retry
    }


def _pause_delay(wanted: int, incident: Incident, now_ms: int, knobs: Knobs) -> int:
    """Cap a hold at max_pause_ms and at the deadline (the re-check then escalates)."""
    delay = min(wanted, knobs.max_pause_ms)
    if incident.deadline_ms is not None:
        delay = min(delay, incident.deadline_ms - now_ms)
    return delay


def decide(
    request: SelfHealingRequest,
    incident: Incident,
    now_ms: int,
    knobs: Knobs,
    jitter: float,
    *,
    classification: Classification | None = None,
) -> Decision:
    """Decide retry, pause or escalate; the same inputs always give the same decision."""
    check_jitter(jitter)
    if request.resolved_incident_id != incident.incident_id:
        raise ValueError(
            f"request is for incident {request.resolved_incident_id}, not {incident.incident_id}"
        )
    found = (
        classification
        if classification is not None
        else classify(request.evidence, summary=request.problem_summary)
    )
    policy = request.retry_policy
    domain = incident.domain

    def escalate(rule: Rule, reason: str) -> Decision:
        return _escalate(request, incident, now_ms, found, rule, reason)

    if incident.closed:
        return escalate(Rule.ALREADY_CLOSED, "incident already closed")
    deadline = incident.deadline_ms
    if deadline is not None and now_ms >= deadline:
        return escalate(Rule.DEADLINE_PASSED, "deadline passed")
    if found.failure_class in HARD_CLASSES:
        return escalate(Rule.HARD_FAILURE, f"hard failure: {found.failure_class} ({found.reason})")
    # The incident's counter is the budget, never request.attempt (defect 1).
    if incident.retries_used >= policy.max_retries:
        used = f"{incident.retries_used} of {policy.max_retries}"
        return escalate(Rule.BUDGET_EXHAUSTED, f"retry budget exhausted ({used})")
    route = knobs.allowed_routes.get(domain)
    if route is None:
        return escalate(Rule.NO_ROUTE, f"no retry route for domain {domain}")
    if request.route_to is not None and request.route_to.event != route:
        return escalate(
            Rule.ROUTE_REFUSED,
            f"routeTo event {request.route_to.event} refused: "
            f"domain {domain} may only emit {route}",
        )
    if found.failure_class in knobs.pause_classes and domain in knobs.domains_with_probe:
        delay = _pause_delay(
            retry_delay_ms(incident.pauses, policy, jitter), incident, now_ms, knobs
        )
        return Decision(
            **_shell(incident, now_ms, found),
            action=Action.PAUSE,
            delay_ms=delay,
            fire_at_ms=now_ms + delay,
            reason=f"{found.failure_class} ({found.reason}): hold {delay} ms, then re-check",
            rule=Rule.PAUSE,
        )
    delay = retry_delay_ms(incident.retries_used, policy, jitter)
    if deadline is not None and now_ms + delay > deadline:
        return escalate(
            Rule.RETRY_PAST_DEADLINE, f"next retry would pass the deadline (in {delay} ms)"
        )
    number = f"{incident.retries_used + 1} of {policy.max_retries}"
    return Decision(
        **_shell(incident, now_ms, found),
        action=Action.RETRY,
        delay_ms=delay,
        fire_at_ms=now_ms + delay,
        reason=f"retry {number} in {delay} ms: {found.failure_class} ({found.reason})",
        rule=Rule.RETRY,
        route_event=route,
        route_data=route_data(request, incident),
    )


def clamp_advice(
    decision: Decision,
    advice_action: str,
    advice_delay_ms: int | None,
    request: SelfHealingRequest,
    incident: Incident,
    knobs: Knobs,
    *,
    advice_reason: str | None = None,
    advice_route: str | None = None,
    advisor: Mapping[str, Any] | None = None,
) -> Decision:
    """Let the advisor adjust a policy decision, never past the policy's limits."""
    if decision.key != incident.decision_key:
        raise ValueError(f"decision {decision.key} is not for incident {incident.decision_key}")
    meta = dict(advisor) if advisor is not None else None
    note = f"advisor proposed {advice_action!r}"
    if advice_delay_ms is not None:
        note += f" in {advice_delay_ms} ms"
    if advice_reason:
        note += f" ({advice_reason[:200]})"

    def refuse(why: str) -> Decision:
        return replace(decision, reason=f"{decision.reason}; {note} refused: {why}", advisor=meta)

    if advice_action not in set(Action):
        return refuse("not an allowed action")
    if advice_delay_ms is not None and (
        isinstance(advice_delay_ms, bool) or not isinstance(advice_delay_ms, int)
    ):
        return refuse("the delay must be whole milliseconds")
    action = Action(advice_action)
    route = knobs.allowed_routes.get(incident.domain)
    if advice_route is not None and advice_route != route:
        return refuse(f"route {advice_route} is not allowlisted for domain {incident.domain}")
    if decision.action == Action.ESCALATE:
        if action == Action.ESCALATE:
            return replace(decision, reason=f"{decision.reason}; advisor agreed", advisor=meta)
        return refuse(f"the policy escalates ({decision.rule})")
    now_ms = decision.decided_at_ms
    if action == Action.ESCALATE:
        found = Classification(decision.failure_class, "advised")
        escalated = _escalate(request, incident, now_ms, found, Rule.ADVISED, f"{note}; accepted")
        return replace(escalated, advisor=meta)
    policy = request.retry_policy
    wanted = advice_delay_ms
    if wanted is None:
        wanted = decision.delay_ms if action == decision.action else policy.sleep_min_ms
    delay = max(policy.sleep_min_ms, min(policy.sleep_max_ms, wanted))
    if action == Action.PAUSE:
        if incident.domain not in knobs.domains_with_probe:
            return refuse(f"domain {incident.domain} has no precondition probe")
        delay = _pause_delay(delay, incident, now_ms, knobs)
        route_event, route_fields = None, {}
    else:
        # decide() checks these before it pauses or retries; checked again because the
        # decision handed in is only trusted as far as its key.
        if incident.retries_used >= policy.max_retries:
            return refuse("the retry budget is spent")
        if decision.failure_class in HARD_CLASSES:
            return refuse(f"{decision.failure_class} is a hard failure")
        if route is None:
            return refuse(f"no retry route for domain {incident.domain}")
        deadline = incident.deadline_ms
        if deadline is not None and now_ms + delay > deadline:
            return refuse(f"a retry in {delay} ms would pass the deadline")
        route_event, route_fields = route, route_data(request, incident)
    return replace(
        decision,
        action=action,
        delay_ms=delay,
        fire_at_ms=now_ms + delay,
        reason=f"{note}; accepted as {action} in {delay} ms (policy: {decision.reason})",
        rule=Rule.ADVISED,
        route_event=route_event,
        route_data=route_fields,
        advisor=meta,
    )


def _completion_data(decision: Decision, request: SelfHealingRequest) -> dict[str, Any]:
    """The `completed` data announcing a decision, with its wire (camelCase) keys."""
    return {
        "incidentId": decision.incident_id,
        "status": decision.completion_status.value,
        "attempt": decision.attempt,
        "action": decision.action.value,
        "delayMs": decision.delay_ms,
        "reason": decision.reason,
        "failureClass": decision.failure_class.value,
        "field": None,
        "sourceFunction": request.source_function,
        "targetComponent": request.target_component,
    }


def completion_json(decision: Decision, request: SelfHealingRequest) -> str:
    """completion_for(...).model_dump_json(by_alias=True), without building the model.

    The batch router announces hundreds of decisions per batch; every value here is
    already validated (the decision is ours, the request passed the contract).
    """
    return text_json(_completion_data(decision, request))


def completion_for(decision: Decision, request: SelfHealingRequest) -> Completion:
    """The `system/self.healing.completed` data announcing a decision."""
    return Completion.model_validate(_completion_data(decision, request))
