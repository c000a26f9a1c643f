"""Optional LLM advice for the router: an OpenAI-compatible chat call behind a circuit breaker."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import anyio
import httpx
from opentelemetry.trace import Status, StatusCode
from pydantic_core import to_jsonable_python

from selfheal.config.schema_healing import AdvisorSettings
from selfheal.healing.urls import under
from selfheal.redact import MASK, redact, redact_text
from selfheal.telemetry import Telemetry

log = logging.getLogger(__name__)

CHAT_PATH: Final = "/chat/completions"
MAX_REASON_CHARS: Final = 500
_FENCED = re.compile(r"```(?:json|JSON)?\s*(.*?)\s*```", re.DOTALL)

SYSTEM_PROMPT: Final = (
    "You advise the self-healing router of a NAS backup system. You get one failure "
    "(the request, its failure class) and the policy's own proposal. Reply with ONE JSON "
    'object and nothing else: {"action": string, "delayMs": integer >= 0 or null, '
    '"reason": short string, "confidence": number 0..1 or null, "routeTo": string or null}. '
    "action MUST be one of {actions}. routeTo MUST be one of {routes} or null. "
    "Keep the policy's proposal unless you have a concrete reason; the policy clamps "
    "your delay and budget anyway."
)


@dataclass(frozen=True)
class Advice:
    """What the model proposed, already checked against the allowed actions and routes."""

    action: str
    delay_ms: int | None
    reason: str
    confidence: float | None
    route_to: str | None
    model: str
    latency_ms: float
    used_fallback: bool

    def to_dict(self) -> dict[str, Any]:
        """CamelCase metadata for Decision.advisor and telemetry."""
        return {
            "action": self.action,
            "delayMs": self.delay_ms,
            "reason": self.reason,
            "confidence": self.confidence,
            "routeTo": self.route_to,
            "model": self.model,
            "latencyMs": round(self.latency_ms, 1),
            "usedFallback": self.used_fallback,
        }


@dataclass
class AdvisorStatus:
    """Counters for `status`: calls are HTTP calls to a model, failures are failed advise()s."""

    calls: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    breaker_open_until: float | None = None
    last_error: str | None = None
    last_model: str | None = None


def chat_url(endpoint: str) -> httpx.URL:
    """The chat-completions URL of an OpenAI-compatible base URL (or of the full URL)."""
    full = httpx.URL(endpoint).path.rstrip("/").endswith(CHAT_PATH)
    return under(endpoint, "" if full else CHAT_PATH)


class AdviceRejected(ValueError):
    """The model's answer is not usable advice."""


def parse_advice(
    content: str, allowed_actions: Sequence[str], allowed_routes: Sequence[str]
) -> tuple[str, int | None, str, float | None, str | None]:
    """Check a reply (bare or ```json fenced) and return (action, delayMs, reason, conf, route)."""
    text = content.strip()
    if not text.startswith("{"):
        fenced = _FENCED.search(text)
        text = fenced.group(1) if fenced else text
    try:
        data = json.loads(text)
    except ValueError:
        raise AdviceRejected("reply is not JSON") from None
    if not isinstance(data, dict):
        raise AdviceRejected("reply is not a JSON object")
    action = data.get("action")
    if not isinstance(action, str) or action not in allowed_actions:
        raise AdviceRejected(f"action {str(action)[:40]!r} is not one of {list(allowed_actions)}")
    route = data.get("routeTo")
    if route is not None and (not isinstance(route, str) or route not in allowed_routes):
        raise AdviceRejected(f"routeTo {str(route)[:80]!r} is not allowed")
    delay = data.get("delayMs")
    if isinstance(delay, float) and delay.is_integer():
        delay = int(delay)  # 30000.0 is whole milliseconds too
    if delay is not None and (isinstance(delay, bool) or not isinstance(delay, int) or delay < 0):
        raise AdviceRejected("delayMs must be an integer >= 0 or null")
    confidence = data.get("confidence")
    if confidence is not None and (
        isinstance(confidence, bool)
        or not isinstance(confidence, int | float)
        or not 0 <= confidence <= 1
    ):
        raise AdviceRejected("confidence must be a number in 0..1 or null")
    reason = data.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise AdviceRejected("reason must be a string")
    reason_text = redact_text(reason or "")[:MAX_REASON_CHARS]
    conf = float(confidence) if confidence is not None else None
    return action, delay, reason_text, conf, route


class Advisor:
    """Asks the model; falls back once; opens a breaker after repeated failures."""

    def __init__(
        self,
        settings: AdvisorSettings,
        *,
        model: str,
        fallback_model: str,
        client: httpx.AsyncClient,
        telemetry: Telemetry,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._telemetry = telemetry
        self._model = model
        self._fallback = fallback_model
        self._client = client
        self._clock = clock
        self._trial_running = False
        self.status = AdvisorStatus()

    @property
    def enabled(self) -> bool:
        """Configured to be asked at all."""
        return self._settings.enabled and self._settings.endpoint is not None

    def _scrub(self, text: str) -> str:
        """Redacted, and the literal API key masked even where no pattern catches it."""
        text = redact_text(text)
        key = self._settings.api_key
        return text.replace(key, MASK) if key else text

    def _gate(self) -> str | None:
        """Return closed, trial (half-open: this caller probes) or None (open, or a trial runs)."""
        until = self.status.breaker_open_until
        if until is None:
            return "closed"
        if self._clock() < until or self._trial_running:
            return None
        self._trial_running = True
        return "trial"

    async def advise(
        self,
        request: Mapping[str, Any],
        *,
        failure_class: str,
        policy_action: str,
        policy_delay_ms: int,
        allowed_actions: Sequence[str],
        allowed_routes: Sequence[str],
    ) -> Advice | None:
        """The model's checked advice, or None (off, breaker open, or both models failed)."""
        gate = self._gate() if self.enabled else None
        if gate is None:
            return None
        try:
            messages = self._messages(
                request,
                failure_class,
                policy_action,
                policy_delay_ms,
                allowed_actions,
                allowed_routes,
            )
            models = [self._model] + ([self._fallback] if self._fallback != self._model else [])
            for index, model in enumerate(models):
                advice = await self._try(
                    model, index > 0, messages, allowed_actions, allowed_routes
                )
                if advice is not None:
                    self.status.consecutive_failures = 0
                    self.status.breaker_open_until = None
                    return advice
            self._count_failure()
            return None
        finally:
            if gate == "trial":
                self._trial_running = False

    def _count_failure(self) -> None:
        status = self.status
        status.failures += 1
        status.consecutive_failures += 1
        if status.consecutive_failures >= self._settings.circuit_breaker_failures:
            status.breaker_open_until = self._clock() + self._settings.circuit_breaker_reset_seconds
            log.warning(
                "advisor breaker open for %ss after %d failures: %s",
                self._settings.circuit_breaker_reset_seconds,
                status.consecutive_failures,
                status.last_error,
            )

    def _messages(
        self,
        request: Mapping[str, Any],
        failure_class: str,
        policy_action: str,
        policy_delay_ms: int,
        allowed_actions: Sequence[str],
        allowed_routes: Sequence[str],
    ) -> list[dict[str, str]]:
        """System prompt plus the redacted request as JSON."""
        system = SYSTEM_PROMPT.replace("{actions}", json.dumps(list(allowed_actions))).replace(
            "{routes}", json.dumps(list(allowed_routes))
        )
        # JSON-safe first so that every string, even inside odd objects, passes redact().
        safe_request = redact(to_jsonable_python(dict(request), fallback=str))
        user = {
            "request": safe_request,
            "failureClass": failure_class,
            "policyProposal": {"action": policy_action, "delayMs": policy_delay_ms},
        }
        return [
            {"role": "system", "content": system},
            {"role": "user", "content": json.dumps(user, sort_keys=True)},
        ]

    async def _try(
        self,
        model: str,
        is_fallback: bool,
        messages: list[dict[str, str]],
        allowed_actions: Sequence[str],
        allowed_routes: Sequence[str],
    ) -> Advice | None:
        """One model call; None (and last_error set) on any failure."""
        if model not in self._settings.allowlist:
            # Config validation checks this too; a model off the list is never called.
            self.status.last_error = f"{model}: not in the advisor allowlist"
            return None
        started = time.perf_counter()
        self.status.calls += 1
        self.status.last_model = model
        with self._telemetry.decision_span(
            "selfheal.advisor.call", {"model": model, "fallback": is_fallback}
        ) as span:
            try:
                content = await self._call(model, messages)
                action, delay, reason, confidence, route = parse_advice(
                    content, allowed_actions, allowed_routes
                )
            except (httpx.HTTPError, httpx.InvalidURL, TimeoutError, AdviceRejected) as exc:
                if isinstance(exc, TimeoutError | httpx.TimeoutException):
                    detail = "timed out"
                elif isinstance(exc, AdviceRejected):
                    detail = str(exc)
                else:
                    detail = f"{type(exc).__name__}: {exc}"
                self.status.last_error = self._scrub(f"{model}: {detail}")[:500]
                log.info("advisor %s failed: %s", model, self.status.last_error)
                span.set_status(Status(StatusCode.ERROR, self.status.last_error))
                return None
            latency_ms = (time.perf_counter() - started) * 1000
            span.set_attributes({"selfheal.action": action, "selfheal.latency_ms": latency_ms})
            if delay is not None:
                span.set_attribute("selfheal.delay_ms", delay)
        return Advice(action, delay, reason, confidence, route, model, latency_ms, is_fallback)

    async def _call(self, model: str, messages: list[dict[str, str]]) -> str:
        """POST the chat request; return choices[0].message.content."""
        url = chat_url(self._settings.endpoint or "")
        headers = (
            {"Authorization": f"Bearer {self._settings.api_key}"}
            if (self._settings.api_key)
            else {}
        )
        body = {
            "model": model,
            "messages": messages,
            "temperature": 0,
            "response_format": {"type": "json_object"},
        }
        timeout_s = self._settings.timeout_ms / 1000
        # httpx times each socket operation; fail_after bounds the whole call.
        with anyio.fail_after(timeout_s):
            response = await self._client.post(url, json=body, headers=headers, timeout=timeout_s)
        if not response.is_success:
            raise AdviceRejected(f"HTTP {response.status_code}")
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise AdviceRejected("answer is not a chat completion") from None
        if not isinstance(content, str):
            raise AdviceRejected("message content is not text")
        return content
