"""The LLM advisor against a real local HTTP server playing an OpenAI-compatible model."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import httpx
import pytest

from selfheal.config.schema_healing import AdvisorSettings
from selfheal.healing.advisor import Advice, AdviceRejected, Advisor, parse_advice
from selfheal.telemetry import Telemetry

pytestmark = pytest.mark.anyio

WAIT_S = 10.0
KEY = "sk-test-advisor-key-0123456789"
PRIMARY, FALLBACK = "m-primary", "m-fallback"
ACTIONS = ["retry", "pause", "escalate"]
ROUTE = "system/backup.retry.requested"
VALID = {"action": "pause", "delayMs": 60000, "reason": "nas rebooting", "confidence": 0.8}


@dataclass(frozen=True)
class Reply:
    """One scripted answer; delay_s holds it back (for timeouts)."""

    status: int = 200
    body: bytes = b""
    delay_s: float = 0.0


def chat(content: str | dict[str, Any], **kw: Any) -> Reply:
    text = content if isinstance(content, str) else json.dumps(content)
    answer = {
        "id": "c1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
    }
    return Reply(body=json.dumps(answer).encode(), **kw)


class QuietServer(ThreadingHTTPServer):
    """Ignores a client that hung up on a slow answer (that is what the timeout test does)."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


@dataclass
class ModelServer:
    """A real HTTP server answering chat completions from a script, recording what it got."""

    replies: list[Reply]
    default: Reply
    seen: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.httpd = QuietServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="model"
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, _, body in self.seen]

    def _answer(self, path: str, headers: dict[str, str], body: bytes) -> Reply:
        with self._lock:
            self.seen.append((path, headers, body))
            return self.replies.pop(0) if self.replies else self.default

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                reply = server._answer(self.path, headers, body)
                if reply.delay_s:
                    server.stop.wait(reply.delay_s)
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def model() -> Iterator[Callable[..., ModelServer]]:
    """model(*replies, default=...) starts a scripted model server, shut down afterwards."""
    made: list[ModelServer] = []

    def make(*replies: Reply, default: Reply | None = None) -> ModelServer:
        made.append(ModelServer(list(replies), default or Reply(500, b'{"error": "down"}')))
        return made[-1]

    yield make
    for server in made:
        server.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


def settings(server: ModelServer | None, **extra: Any) -> AdvisorSettings:
    data: dict[str, Any] = {
        "enabled": True,
        "endpoint": server.url if server else None,
        "apiKey": KEY,
        "allowlist": [PRIMARY, FALLBACK],
        "timeoutMs": 3000,
        "circuitBreakerFailures": 2,
        "circuitBreakerResetSeconds": 60,
    }
    data.update(extra)
    return AdvisorSettings.model_validate(data)


def advisor(
    client: httpx.AsyncClient,
    server: ModelServer | None,
    telemetry: Telemetry,
    *,
    clock: Callable[[], float] = time.monotonic,
    primary: str = PRIMARY,
    fallback: str = FALLBACK,
    **extra: Any,
) -> Advisor:
    config = settings(server, **extra)
    return Advisor(
        config,
        model=primary,
        fallback_model=fallback,
        client=client,
        telemetry=telemetry,
        clock=clock,
    )


async def ask(adv: Advisor, request: dict[str, Any] | None = None) -> Advice | None:
    with anyio.fail_after(WAIT_S):
        return await adv.advise(
            request or {"incidentId": "i-1", "domain": "backup"},
            failure_class="transient_infra",
            policy_action="retry",
            policy_delay_ms=30_000,
            allowed_actions=ACTIONS,
            allowed_routes=[ROUTE],
        )


async def test_happy_path(model: Any, client: Any, telemetry: Telemetry) -> None:
    server = model(chat({**VALID, "routeTo": ROUTE}))
    adv = advisor(client, server, telemetry)
    advice = await ask(adv)
    assert advice is not None
    assert (advice.action, advice.delay_ms, advice.route_to) == ("pause", 60000, ROUTE)
    assert (advice.reason, advice.confidence) == ("nas rebooting", 0.8)
    assert (advice.model, advice.used_fallback) == (PRIMARY, False)
    assert advice.latency_ms > 0
    assert advice.to_dict()["usedFallback"] is False
    [(path, headers, _)] = server.seen
    assert path == "/v1/chat/completions"
    assert headers["authorization"] == f"Bearer {KEY}"
    [body] = server.bodies()
    assert body["model"] == PRIMARY and body["temperature"] == 0
    assert body["response_format"] == {"type": "json_object"}
    system, user = body["messages"]
    assert system["role"] == "system" and '"escalate"' in system["content"]
    assert ROUTE in system["content"]
    sent = json.loads(user["content"])
    assert sent["failureClass"] == "transient_infra"
    assert sent["policyProposal"] == {"action": "retry", "delayMs": 30000}
    assert sent["request"]["incidentId"] == "i-1"
    assert (adv.status.calls, adv.status.failures, adv.status.last_model) == (1, 0, PRIMARY)


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("/v1?api_key=QK-123456", "/v1/chat/completions?api_key=QK-123456"),
        ("/v1/?api_key=QK-123456&org=o", "/v1/chat/completions?api_key=QK-123456&org=o"),
        ("/v1/chat/completions?api_key=QK-123456", "/v1/chat/completions?api_key=QK-123456"),
        ("/openai/v1/chat/completions/", "/openai/v1/chat/completions"),
    ],
)
async def test_the_chat_path_goes_before_the_endpoint_query(
    model: Any,
    client: Any,
    endpoint: str,
    expected: str,
    telemetry: Telemetry,
) -> None:
    # Some gateways take the key in the query (Azure-style ?api-key=, ?api_key=).
    server = model(chat(VALID))
    base = server.url.removesuffix("/v1")
    assert await ask(advisor(client, server, telemetry, endpoint=base + endpoint)) is not None
    [(path, _headers, _body)] = server.seen
    assert path == expected


async def test_fenced_answer_is_accepted(model: Any, client: Any, telemetry: Telemetry) -> None:
    fenced = "Here you go:\n```json\n" + json.dumps({**VALID, "routeTo": None}) + "\n```"
    server = model(chat(fenced))
    advice = await ask(advisor(client, server, telemetry))
    assert advice is not None and advice.action == "pause" and advice.route_to is None


BAD_PRIMARY = {
    "garbage": chat("I think you should retry later"),
    "action not allowed": chat({**VALID, "action": "emit_event"}),
    "route not allowed": chat({**VALID, "routeTo": "system/anything.you.like"}),
    "negative delay": chat({**VALID, "delayMs": -5}),
    "confidence out of range": chat({**VALID, "confidence": 1.5}),
    "http 500": Reply(500, b'{"error": "overloaded"}'),
    "not a completion": Reply(200, b'{"choices": []}'),
}


@pytest.mark.parametrize("bad", list(BAD_PRIMARY))
async def test_invalid_primary_falls_back(
    model: Any, client: Any, bad: str, telemetry: Telemetry
) -> None:
    server = model(BAD_PRIMARY[bad], chat({**VALID, "action": "retry"}))
    adv = advisor(client, server, telemetry)
    advice = await ask(adv)
    assert [b["model"] for b in server.bodies()] == [PRIMARY, FALLBACK]
    assert advice is not None
    assert (advice.model, advice.used_fallback, advice.action) == (FALLBACK, True, "retry")
    assert (adv.status.calls, adv.status.failures) == (2, 0)


async def test_slow_primary_times_out_and_falls_back(
    model: Any, client: Any, telemetry: Telemetry
) -> None:
    server = model(chat(VALID, delay_s=5.0), chat(VALID))
    adv = advisor(client, server, telemetry, timeoutMs=200)
    started = time.monotonic()
    advice = await ask(adv)
    assert time.monotonic() - started < 3.0
    assert advice is not None and advice.used_fallback
    assert [b["model"] for b in server.bodies()] == [PRIMARY, FALLBACK]


async def test_both_fail_gives_none_and_never_records_the_key(
    model: Any, client: Any, telemetry: Telemetry
) -> None:
    # The fallback even echoes the key back as its "action".
    server = model(Reply(500), chat({**VALID, "action": KEY, "routeTo": KEY}))
    adv = advisor(client, server, telemetry)
    assert await ask(adv) is None
    assert len(server.seen) == 2
    status = adv.status
    assert (status.failures, status.consecutive_failures, status.breaker_open_until) == (1, 1, None)
    assert status.last_error is not None and status.last_error.startswith(FALLBACK)
    assert KEY not in status.last_error and "***" in status.last_error


async def test_breaker_opens_then_half_opens_on_the_clock(
    model: Any, client: Any, telemetry: Telemetry
) -> None:
    now = [1000.0]
    server = model()  # every answer is HTTP 500 until the script changes
    adv = advisor(client, server, telemetry, clock=lambda: now[0])
    assert await ask(adv) is None and await ask(adv) is None
    assert len(server.seen) == 4  # primary + fallback, twice
    assert adv.status.breaker_open_until == 1060.0
    assert await ask(adv) is None
    now[0] = 1059.9
    assert await ask(adv) is None
    assert len(server.seen) == 4  # open: nothing reached the model
    now[0] = 1060.0
    assert await ask(adv) is None  # half-open trial fails: open again
    assert len(server.seen) == 6 and adv.status.breaker_open_until == 1120.0
    assert await ask(adv) is None and len(server.seen) == 6
    now[0] = 1121.0
    server.replies.append(chat(VALID))
    advice = await ask(adv)
    assert advice is not None and not advice.used_fallback
    assert (adv.status.breaker_open_until, adv.status.consecutive_failures) == (None, 0)
    assert adv.status.failures == 3


async def test_half_open_allows_one_trial_at_a_time(
    model: Any, client: Any, telemetry: Telemetry
) -> None:
    now = [0.0]
    server = model()
    adv = advisor(client, server, telemetry, clock=lambda: now[0], circuitBreakerFailures=1)
    assert await ask(adv) is None and adv.status.breaker_open_until == 60.0
    now[0] = 61.0
    server.replies.append(chat(VALID, delay_s=0.3))
    results: list[Advice | None] = []

    async def one() -> None:
        results.append(await ask(adv))

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, name="trial-1")
        tg.start_soon(one, name="trial-2")
    assert len(server.seen) == 3  # two from the first failure, one trial
    assert sorted(r is None for r in results) == [False, True]


async def test_request_secrets_never_reach_the_model(
    model: Any, client: Any, telemetry: Telemetry
) -> None:
    server = model(chat(VALID))
    request = {
        "incidentId": "i-2",
        "problemSummary": "copy to nas failed",
        "context": {"apiKey": "sk-live-123", "log": "login with password=hunter2 failed"},
        "url": "sftp://backup:pw-in-url-77@nas.local/share",
    }
    assert await ask(advisor(client, server, telemetry), request) is not None
    raw = server.seen[0][2].decode()
    assert "copy to nas failed" in raw
    for secret in ("sk-live-123", "hunter2", "pw-in-url-77"):
        assert secret not in raw


@pytest.mark.parametrize("change", [{"enabled": False}, {"endpoint": None}])
async def test_disabled_makes_no_request(
    model: Any, client: Any, change: dict[str, Any], telemetry: Telemetry
) -> None:
    server = model(chat(VALID))
    adv = advisor(client, server, telemetry, **change)
    assert not adv.enabled
    assert await ask(adv) is None
    assert server.seen == [] and adv.status.calls == 0


async def test_models_outside_the_allowlist_are_never_called(
    model: Any, client: Any, telemetry: Telemetry
) -> None:
    server = model(default=chat(VALID))
    adv = advisor(client, server, telemetry, primary="m-rogue")
    advice = await ask(adv)
    assert advice is not None and advice.model == FALLBACK and advice.used_fallback
    assert [b["model"] for b in server.bodies()] == [FALLBACK]
    both = advisor(client, server, telemetry, primary="m-rogue", fallback="m-other")
    assert await ask(both) is None
    assert (
        len(server.seen) == 1 and both.status.last_error == "m-other: not in the advisor allowlist"
    )


async def test_same_fallback_is_not_retried(model: Any, client: Any, telemetry: Telemetry) -> None:
    server = model()
    adv = advisor(client, server, telemetry, fallback=PRIMARY)
    assert await ask(adv) is None
    assert len(server.seen) == 1 and adv.status.last_error == f"{PRIMARY}: HTTP 500"


def test_parse_advice_rules() -> None:
    parsed = parse_advice('{"action": "retry", "delayMs": 1500.0}', ACTIONS, [ROUTE])
    assert parsed == ("retry", 1500, "", None, None)
    for bad in (
        '{"action": "retry", "delayMs": true}',
        '["retry"]',
        '{"action": "retry", "confidence": "high"}',
    ):
        with pytest.raises(AdviceRejected):
            parse_advice(bad, ACTIONS, [ROUTE])
