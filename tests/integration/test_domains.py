"""A domain plugs into the router by registration alone: retry, pause (its own probe),
escalate — and a domain nobody registered still escalates with no_route."""

from __future__ import annotations

from typing import Any

import pytest

from selfheal.bus.streams import Bus
from selfheal.bus.timers import TimerPump
from selfheal.core.events import SELF_HEALING_COMPLETED, SELF_HEALING_REQUESTED, new_event
from selfheal.core.policy import Knobs
from selfheal.errors import StartupError
from selfheal.healing.domains import Domain, Domains
from selfheal.healing.router import Router
from selfheal.telemetry import Telemetry
from tests.support.routing import now_ms, request, router_consumer, run_until, stream_events

pytestmark = pytest.mark.anyio

PRINTER_RETRY = "test/printer.retry.requested"


def printer(incident: str, **overrides: Any) -> dict[str, Any]:
    data = request(incident=incident, sourceFunction="office/printer.poll")
    data.update({"domain": "printer", "targetComponent": "printer", **overrides})
    return data


async def test_a_third_domain_routes_by_registration_alone(bus: Bus, telemetry: Telemetry) -> None:
    online = [False]

    async def printer_probe(_request: object) -> bool:
        return online[0]

    domains = Domains()
    domains.register(Domain("printer", PRINTER_RETRY, probe=printer_probe))
    domains.serve(PRINTER_RETRY, "office/printer.retry")
    domains.check()
    router = Router(bus, telemetry, knobs=Knobs, domains=domains)
    for data in (
        printer("printer:retry"),  # a timeout: retried through the printer's own event
        printer("printer:hard", evidence=[{"errno": "ENOSPC"}]),  # hard: escalated
        printer("printer:away", evidence=[{"kind": "transport.unavailable", "errno": "ENOTCONN"}]),
        printer("ghost:1", domain="ghost"),  # nobody registered "ghost"
    ):
        await bus.publish(new_event(SELF_HEALING_REQUESTED, data, now_ms=now_ms()))
    pump = TimerPump(bus, max_sleep_s=0.05)

    async def settled() -> bool:
        away = await router.store.load("printer:away")
        return (
            router.stats.decisions >= 4 and away.incident is not None and away.incident.pauses >= 1
        )

    await run_until(settled, router_consumer(bus, router, batched=True), pump)
    retry = await router.store.load("printer:retry")
    assert retry.last_decision is not None and retry.last_decision.route_event == PRINTER_RETRY
    hard = await router.store.load("printer:hard")
    assert hard.last_decision is not None and hard.last_decision.rule == "hard_failure"
    ghost = await router.store.load("ghost:1")
    assert ghost.last_decision is not None and ghost.last_decision.rule == "no_route"

    online[0] = True  # the probe answers: the paused incident's re-check retries

    async def retried() -> bool:
        return len(await stream_events(bus, PRINTER_RETRY)) >= 2

    await run_until(retried, router_consumer(bus, router, batched=True), pump)
    away = await router.store.load("printer:away")
    assert away.incident is not None and away.incident.retries_used == 1
    statuses = {
        (e.data["incidentId"], e.data["status"])
        for e in await stream_events(bus, SELF_HEALING_COMPLETED)
    }
    assert ("printer:away", "paused") in statuses and ("printer:away", "scheduled") in statuses
    assert ("ghost:1", "escalated") in statuses


def test_a_route_no_consumer_serves_is_refused() -> None:
    domains = Domains()
    domains.register(Domain("printer", PRINTER_RETRY))
    with pytest.raises(StartupError, match=r"printer.*test/printer\.retry\.requested.*no consumer"):
        domains.check()
    domains.serve(PRINTER_RETRY, "office/printer.retry")
    domains.check()
    with pytest.raises(ValueError, match="twice"):
        domains.register(Domain("printer", PRINTER_RETRY))
