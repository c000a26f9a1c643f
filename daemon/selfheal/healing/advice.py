"""Bridges the optional LLM advisor into the router's decision, within the policy's clamps."""

from __future__ import annotations

from selfheal.core.contracts import SelfHealingRequest
from selfheal.core.incident import Action, Decision, Incident
from selfheal.core.policy import Knobs, clamp_advice
from selfheal.healing.advisor import Advisor


class ModelAdvice:
    """Advice (healing/router.py) from the model behind the Advisor client: asked about
    retry/pause decisions, clamped by the policy."""

    def __init__(self, advisor: Advisor) -> None:
        self.advisor = advisor

    async def revise(
        self, request: SelfHealingRequest, decision: Decision, incident: Incident, knobs: Knobs
    ) -> Decision:
        """Return the policy's decision, adjusted by allowlisted advice when there is any."""
        # An escalation stands whatever the model says: asking would only cost a call.
        if not self.advisor.enabled or decision.action == Action.ESCALATE:
            return decision
        route = knobs.allowed_routes.get(incident.domain)
        advice = await self.advisor.advise(
            request.to_data(),
            failure_class=str(decision.failure_class),
            policy_action=str(decision.action),
            policy_delay_ms=decision.delay_ms,
            allowed_actions=[a.value for a in Action],
            allowed_routes=[route] if route else [],
        )
        if advice is None:  # disabled, breaker open, or both models failed: policy only
            return decision
        return clamp_advice(
            decision,
            advice.action,
            advice.delay_ms,
            request,
            incident,
            knobs,
            advice_reason=advice.reason,
            advice_route=advice.route_to,
            advisor=advice.to_dict(),
        )
