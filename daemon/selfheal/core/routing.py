"""One routing step as data: what a self-healing request does to its incident.

Pure: no I/O and no clock (`now_ms` is passed in). The router loads the
incident's standing, asks `meet` what the request meets, obtains a decision when
one is due (the one already stored for the step, or a fresh one from the policy,
a probe and the advisor — the router's business), and `decided` or `joined`
says everything the step writes. The router turns those effects into one guarded
commit; nothing here knows about Redis.

Every event the step publishes carries an idempotency key, so a redelivered
request that is routed again publishes nothing twice.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import msgspec

from selfheal.core.contracts import Completion, CompletionStatus, SelfHealingRequest
from selfheal.core.events import SELF_HEALING_COMPLETED, SELF_HEALING_REQUESTED, compact_json
from selfheal.core.incident import Action, Decision, Incident, IncidentState
from selfheal.core.policy import completion_for, completion_json


class Standing(msgspec.Struct):
    """An incident as the router last read or wrote it."""

    incident: Incident | None
    pending_until_ms: int = 0
    last_decision: Decision | None = None


class Meets(StrEnum):
    """What a request finds when it reaches its incident."""

    ESCALATED = "escalated"  # waits with the incident for an operator
    PENDING = "pending"  # joins the retry or re-check already scheduled
    DECISION = "decision"  # the incident's current step needs its decision


def meet(standing: Standing, now_ms: int) -> Meets:
    """Classify the request's arrival."""
    incident = standing.incident
    if incident is not None and incident.state == IncidentState.ESCALATED:
        return Meets.ESCALATED
    if (
        incident is not None
        and not incident.closed
        and standing.last_decision is not None
        and now_ms < standing.pending_until_ms
    ):
        return Meets.PENDING
    return Meets.DECISION


def deciding_for(
    standing: Standing, request: SelfHealingRequest, now_ms: int, recovery_window_ms: int
) -> Incident:
    """The incident the decision is for: the stored one, or a new one when there is
    none or the last one was remediated."""
    incident = standing.incident
    if incident is None or incident.state == IncidentState.REMEDIATED:
        return Incident.new(request, now_ms, recovery_window_ms)
    return incident


class Publish(msgspec.Struct, frozen=True):
    """An event to publish at most once per `once_key` (its idempotency key)."""

    name: str
    data_json: str
    once_key: str


class Timer(msgspec.Struct, frozen=True):
    """An event to deliver at `due_ms`, scheduled once per `once_key`."""

    name: str
    data_json: str
    once_key: str
    due_ms: int


class Effects(msgspec.Struct):
    """Everything one step writes; `record` None means the incident is unchanged."""

    status: CompletionStatus
    completion: Publish
    attributes: dict[str, Any]
    record: Incident | None = None
    decision: Decision | None = None
    store_decision: bool = False  # False when the decision was stored before
    pending_until_ms: int = 0
    timer: Timer | None = None
    notify: Publish | None = None
    manual_entry: dict[str, str] | None = None


# Idempotency keys of the events a step publishes.


def completed_key(cause_id: str) -> str:
    """The `completed` answer to one request event."""
    return f"{cause_id}/completed"


def retry_key(decision: Decision) -> str:
    """The retry event a decision schedules."""
    return f"{decision.key}/retry"


def recheck_key(decision: Decision) -> str:
    """The re-check a pause schedules."""
    return f"{decision.key}/recheck"


def _notice_latch(incident: Incident) -> str:
    # One escalation notice (and one all-clear) per incident and operator reset.
    return f"{incident.incident_id}/r{incident.operator_resets}"


def escalated_key(incident: Incident) -> str:
    """The escalation notice of an incident."""
    return f"{_notice_latch(incident)}/escalated"


def all_clear_key(incident: Incident) -> str:
    """The all-clear that follows an escalation notice once the incident is remediated."""
    return f"{_notice_latch(incident)}/all_clear"


def escalation_notice(after: Incident, decision: Decision, summary: str) -> dict[str, Any]:
    """Data of the notification request an escalation sends."""
    return {
        "kind": "escalated",
        "incident": after.to_dict(),
        "decision": decision.to_dict(),
        "problemSummary": summary,
    }


def manual_entry(incident: Incident, decision: Decision, summary: str) -> dict[str, str]:
    """One manual-intervention queue entry (flat strings for the stream)."""
    return {
        "incidentId": incident.incident_id,
        "domain": incident.domain,
        "targetComponent": incident.target_component,
        "sourceFunction": incident.source_function,
        "failureClass": str(decision.failure_class),
        "rule": str(decision.rule),
        "reason": decision.reason,
        "retriesUsed": str(incident.retries_used),
        "problemSummary": summary[:2000],
        "atMs": str(decision.decided_at_ms),
    }


def span_attributes(decision: Decision) -> dict[str, Any]:
    """The `selfheal.*` attributes describing a decision on its span."""
    attributes: dict[str, Any] = {
        "selfheal.incident_id": decision.incident_id,
        "selfheal.attempt": decision.attempt,
        "selfheal.action": str(decision.action),
        "selfheal.delay_ms": decision.delay_ms,
        "selfheal.failure_class": str(decision.failure_class),
        "selfheal.reason": decision.reason,
        "selfheal.rule": str(decision.rule),
    }
    if decision.route_event:
        attributes["selfheal.route_event"] = decision.route_event
    for key, value in (decision.advisor or {}).items():
        if isinstance(value, str | int | float | bool):
            attributes[f"selfheal.advisor.{key}"] = value
    return attributes


def joined(standing: Standing, meets: Meets, request: SelfHealingRequest, cause_id: str) -> Effects:
    """A request that joins its incident (escalated, or a step pending): it is answered
    and changes nothing else."""
    answer = completed_key(cause_id)
    if meets == Meets.ESCALATED:
        completion = Completion(
            incident_id=request.resolved_incident_id,
            status=CompletionStatus.ESCALATED,
            reason="incident already escalated; waiting for an operator",
            source_function=request.source_function,
            target_component=request.target_component,
        )
        attributes: dict[str, Any] = {
            "selfheal.incident_id": request.resolved_incident_id,
            "selfheal.status": str(CompletionStatus.ESCALATED),
        }
    else:
        last = standing.last_decision
        if meets != Meets.PENDING or last is None:
            raise ValueError(f"a request that meets {meets} does not join")
        completion = completion_for(last, request).model_copy(
            update={"reason": f"joined pending step: {last.reason}"}
        )
        attributes = {"selfheal.status": str(completion.status), **span_attributes(last)}
    return Effects(
        status=completion.status,
        completion=Publish(
            SELF_HEALING_COMPLETED, completion.model_dump_json(by_alias=True), answer
        ),
        attributes=attributes,
    )


def decided(
    incident: Incident,
    request: SelfHealingRequest,
    decision: Decision,
    *,
    stored: bool,
    now_ms: int,
    cause_id: str,
    request_json: str,
    notify_event: str,
    trace_id: str | None = None,
) -> Effects:
    """The effects of applying `decision` to `incident` (raises ValueError when the
    decision belongs to another step); `trace_id` (the step's) goes into the history."""
    after = incident.after(decision, now_ms, problem=request.problem_summary, trace_id=trace_id)
    timer: Timer | None = None
    if decision.action == Action.RETRY and decision.route_event is not None:
        timer = Timer(
            decision.route_event,
            compact_json(decision.route_data),
            retry_key(decision),
            decision.fire_at_ms,
        )
    elif decision.action == Action.PAUSE:
        # The re-check is the same request, delivered to the router after the hold.
        timer = Timer(
            SELF_HEALING_REQUESTED, request_json, recheck_key(decision), decision.fire_at_ms
        )
    notify: Publish | None = None
    manual: dict[str, str] | None = None
    if decision.action == Action.ESCALATE:
        manual = manual_entry(incident, decision, request.problem_summary)
        if decision.notify:
            notice = escalation_notice(after, decision, request.problem_summary)
            notify = Publish(notify_event, compact_json(notice), escalated_key(incident))
    status = decision.completion_status
    return Effects(
        status=status,
        completion=Publish(
            SELF_HEALING_COMPLETED,
            completion_json(decision, request),
            completed_key(cause_id),
        ),
        attributes={"selfheal.status": str(status), **span_attributes(decision)},
        record=after,
        decision=decision,
        store_decision=not stored,
        pending_until_ms=decision.fire_at_ms if timer is not None else 0,
        timer=timer,
        notify=notify,
        manual_entry=manual,
    )
