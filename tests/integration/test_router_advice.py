"""The router with the LLM advisor, against a real local HTTP server playing the model."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import httpx
import pytest

from selfheal.bus.streams import Bus
from selfheal.config.schema_healing import AdvisorSettings
from selfheal.core.events import SELF_HEALING_REQUESTED, new_event
from selfheal.core.policy import Knobs
from selfheal.healing.advice import LlmAdviser
from selfheal.healing.advisor import Advisor
from selfheal.healing.router import Router
from selfheal.telemetry import Telemetry, read_spans

pytestmark = pytest.mark.anyio


class ModelServer(ThreadingHTTPServer):
    """Answers chat completions with whatever `reply` holds; records the requests."""

    def __init__(self) -> None:
        self.reply: dict[str, Any] | str = {}
        self.status = 200
        self.requests: list[dict[str, Any]] = []
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: ModelServer

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.server.requests.append(body)
        reply = self.server.reply
        content = reply if isinstance(reply, str) else json.dumps(reply)
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload.encode())

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def model() -> Iterator[ModelServer]:
    server = ModelServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


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


async def route_one(bus: Bus, router: Router, incident: str) -> None:
    event = new_event(
        SELF_HEALING_REQUESTED, request_data(incident), now_ms=int(time.time() * 1000)
    )
    with anyio.fail_after(20):
        await router.handle(event)


async def test_advice_is_used_within_the_policy_clamps(
    bus: Bus, telemetry: Telemetry, model: ModelServer
) -> None:
    model.reply = {
        "action": "retry",
        "delayMs": 999_999_999,
        "reason": "NAS rebooting",
        "confidence": 0.8,
        "routeTo": None,
    }
    settings = AdvisorSettings.model_validate(
        {"enabled": True, "endpoint": f"http://127.0.0.1:{model.server_address[1]}/v1"}
    )
    async with httpx.AsyncClient() as http:
        advisor = Advisor(settings, model="gpt-5.4", fallback_model="gpt-5.4", client=http)
        router = Router(bus, telemetry, knobs=Knobs, adviser=LlmAdviser(advisor))
        await route_one(bus, router, "backup:redis:advised")
    snapshot = await router.store.load("backup:redis:advised")
    decision = snapshot.last_decision
    assert decision is not None and decision.action == "retry"
    assert decision.delay_ms == 5000, "advice clamped to sleepMaxMs"
    assert decision.advisor is not None and decision.advisor["model"] == "gpt-5.4"
    assert "sk-live-should-not-leak" not in json.dumps(model.requests)
    telemetry.force_flush()
    [span] = [s for s in read_spans(telemetry.span_file) if s["name"] == "selfheal.route.decide"]
    assert span["attributes"]["selfheal.advisor.model"] == "gpt-5.4"
    assert span["attributes"]["selfheal.advisor.usedFallback"] is False


async def test_garbage_from_both_models_falls_back_to_the_policy(
    bus: Bus, telemetry: Telemetry, model: ModelServer
) -> None:
    model.reply = "I think you should reboot everything"
    settings = AdvisorSettings.model_validate(
        {
            "enabled": True,
            "endpoint": f"http://127.0.0.1:{model.server_address[1]}/v1",
            "fallbackModel": "gpt-5.4-mini",
            "allowlist": ["gpt-5.4", "gpt-5.4-mini"],
        }
    )
    async with httpx.AsyncClient() as http:
        advisor = Advisor(settings, model="gpt-5.4", fallback_model="gpt-5.4-mini", client=http)
        router = Router(bus, telemetry, knobs=Knobs, adviser=LlmAdviser(advisor), jitter=lambda: 0)
        await route_one(bus, router, "backup:redis:policy")
    assert [r["model"] for r in model.requests] == ["gpt-5.4", "gpt-5.4-mini"]
    decision = (await router.store.load("backup:redis:policy")).last_decision
    assert decision is not None and decision.advisor is None
    assert decision.action == "retry" and decision.delay_ms == 1000, "the policy's own decision"
