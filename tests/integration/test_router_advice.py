"""The router with the LLM advisor, against a real local HTTP server playing the model."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest

from selfheal.bus.consumer import Delivery, Outcome, delivery_of
from selfheal.bus.streams import Bus
from selfheal.config.schema_healing import AdvisorSettings
from selfheal.core.events import SELF_HEALING_REQUESTED, new_event
from selfheal.core.policy import Knobs
from selfheal.healing.advice import ModelAdvice
from selfheal.healing.advisor import Advisor
from selfheal.healing.router import ROUTER_GROUP, Router
from selfheal.spanfile import read_spans
from selfheal.telemetry import Telemetry
from tests.support.http import PlayedService, Posted, Reply, played_service
from tests.support.routing import backup_domains

pytestmark = pytest.mark.anyio


@dataclass
class Model:
    """The played model endpoint: what it answers, and what it was asked."""

    service: PlayedService
    reply: dict[str, Any] | str = field(default_factory=dict)

    @property
    def requests(self) -> list[Any]:
        return [p.body for p in self.service.posts]

    @property
    def endpoint(self) -> str:
        return f"{self.service.base}/v1"

    def answer(self, _posted: Posted) -> Reply:
        content = self.reply if isinstance(self.reply, str) else json.dumps(self.reply)
        return Reply(200, {"choices": [{"message": {"role": "assistant", "content": content}}]})


@pytest.fixture
def model() -> Iterator[Model]:
    holder: list[Model] = []
    with played_service(lambda posted: holder[0].answer(posted)) as service:
        holder.append(Model(service))
        yield holder[0]


def request_data(incident: str) -> dict[str, Any]:
    return {
        "sourceFunction": "system/backup.redis",
        "targetComponent": "redis",
        "problemSummary": "copy failed",
        "attempt": 0,
        "retryPolicy": {"maxRetries": 3, "sleepMinMs": 1000, "sleepMaxMs": 5000, "sleepStepMs": 0},
        "evidence": [{"message": "Connection timed out"}],
        "playbook": {},
        "incidentId": incident,
        "context": {"apiKey": "sk-live-should-not-leak"},
    }


async def route_one(bus: Bus, router: Router, incident: str, *, batched: bool = False) -> None:
    """Route one request, by Router.handle or (batched) through the batch path."""
    event = new_event(
        SELF_HEALING_REQUESTED, request_data(incident), now_ms=int(time.time() * 1000)
    )
    with anyio.fail_after(20):
        if not batched:
            await router.handle(event)
            return
        await bus.ensure_group(SELF_HEALING_REQUESTED, ROUTER_GROUP)
        await bus.publish(event)
        stream = bus.keys.stream(SELF_HEALING_REQUESTED)
        [(entry_id, fields)] = await bus.read_group(
            stream, ROUTER_GROUP, "t", count=10, block_ms=None
        )
        delivery = delivery_of(entry_id, fields)
        assert isinstance(delivery, Delivery)
        assert await router.handle_batch([delivery]) == [Outcome.ACKED]


@pytest.mark.parametrize("batched", [False, True], ids=["one by one", "batched"])
async def test_advice_is_used_within_the_policy_clamps(
    bus: Bus, telemetry: Telemetry, model: Model, batched: bool
) -> None:
    model.reply = {
        "action": "retry",
        "delayMs": 999_999_999,
        "reason": "NAS rebooting",
        "confidence": 0.8,
        "routeTo": None,
    }
    settings = AdvisorSettings.model_validate({"enabled": True, "endpoint": model.endpoint})
    async with httpx.AsyncClient() as http:
        advisor = Advisor(
            settings, model="gpt-5.4", fallback_model="gpt-5.4", client=http, telemetry=telemetry
        )
        router = Router(
            bus, telemetry, knobs=Knobs, domains=backup_domains(), advice=ModelAdvice(advisor)
        )
        await route_one(bus, router, "backup:redis:advised", batched=batched)
    snapshot = await router.store.load("backup:redis:advised")
    decision = snapshot.last_decision
    assert decision is not None and decision.action == "retry"
    assert decision.delay_ms == 5000, "advice clamped to sleepMaxMs"
    assert decision.advisor is not None and decision.advisor["model"] == "gpt-5.4"
    assert "sk-live-should-not-leak" not in json.dumps(model.requests)
    telemetry.force_flush()
    spans = read_spans(telemetry.span_file)
    [span] = [s for s in spans if s["name"] == "selfheal.route.decide"]
    assert span["attributes"]["selfheal.advisor.model"] == "gpt-5.4"
    assert span["attributes"]["selfheal.advisor.usedFallback"] is False
    # The model call is a span of its own, inside the decision's.
    [call] = [s for s in spans if s["name"] == "selfheal.advisor.call"]
    assert call["parent_id"] == span["context"]["span_id"]
    assert call["context"]["trace_id"] == span["context"]["trace_id"]
    assert call["status"] == {"status_code": "UNSET"}
    assert call["attributes"]["selfheal.model"] == "gpt-5.4"
    assert call["attributes"]["selfheal.action"] == "retry"
    assert call["attributes"]["selfheal.delay_ms"] == 999_999_999  # as proposed, before clamps


async def test_garbage_from_both_models_falls_back_to_the_policy(
    bus: Bus, telemetry: Telemetry, model: Model
) -> None:
    model.reply = "I think you should reboot everything"
    settings = AdvisorSettings.model_validate(
        {
            "enabled": True,
            "endpoint": model.endpoint,
            "fallbackModel": "gpt-5.4-mini",
            "allowlist": ["gpt-5.4", "gpt-5.4-mini"],
        }
    )
    async with httpx.AsyncClient() as http:
        advisor = Advisor(
            settings,
            model="gpt-5.4",
            fallback_model="gpt-5.4-mini",
            client=http,
            telemetry=telemetry,
        )
        router = Router(
            bus,
            telemetry,
            knobs=Knobs,
            domains=backup_domains(),
            advice=ModelAdvice(advisor),
            jitter=lambda: 0,
        )
        await route_one(bus, router, "backup:redis:policy")
    assert [r["model"] for r in model.requests] == ["gpt-5.4", "gpt-5.4-mini"]
    decision = (await router.store.load("backup:redis:policy")).last_decision
    assert decision is not None and decision.advisor is None
    assert decision.action == "retry" and decision.delay_ms == 1000, "the policy's own decision"
    telemetry.force_flush()
    spans = read_spans(telemetry.span_file)
    [span] = [s for s in spans if s["name"] == "selfheal.route.decide"]
    calls = [s for s in spans if s["name"] == "selfheal.advisor.call"]
    assert [
        (c["attributes"]["selfheal.model"], c["attributes"]["selfheal.fallback"]) for c in calls
    ] == [
        ("gpt-5.4", False),
        ("gpt-5.4-mini", True),
    ]
    for call in calls:
        assert call["parent_id"] == span["context"]["span_id"]
        assert call["status"]["status_code"] == "ERROR"
        model_name = call["attributes"]["selfheal.model"]
        assert call["status"]["description"].startswith(f"{model_name}: ")
