"""Notifiers against real local HTTP servers: payloads, retries, Retry-After, skip, no leaks."""

from __future__ import annotations

import email.header
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import httpx
import pytest

from selfheal.config.schema_healing import NotifiersSettings
from selfheal.healing.notifiers import (
    DeliveryReport,
    Notification,
    Notifier,
    NtfyNotifier,
    TelegramNotifier,
    WebhookNotifier,
    build_notifiers,
    deliver,
    parse_retry_after,
)

pytestmark = pytest.mark.anyio

WAIT_S = 10.0
FAST: dict[str, Any] = {"base_delay_s": 0.01, "max_delay_s": 0.05}


@dataclass(frozen=True)
class Seen:
    """One request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Reply:
    """One scripted answer."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def telegram_reply(status: int = 200, **answer: Any) -> Reply:
    return Reply(status, json.dumps(answer).encode(), {"Content-Type": "application/json"})


class Recorder:
    """A real HTTP server on 127.0.0.1 that records requests and answers from a script."""

    def __init__(self, replies: list[Reply], default: Reply) -> None:
        self.seen: list[Seen] = []
        self._replies = list(replies)
        self._default = default
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        # A short poll interval keeps shutdown (and so each test's teardown) fast.
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="recorder"
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def _answer(self, seen: Seen) -> Reply:
        with self._lock:
            self.seen.append(seen)
            return self._replies.pop(0) if self._replies else self._default

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                seen = Seen(self.command, self.path, headers, body, time.monotonic())
                reply = recorder._answer(seen)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output quiet

        return Handler

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def serve() -> Iterator[Callable[..., Recorder]]:
    """Start recorders: serve(*replies, default=Reply()); all are shut down afterwards."""
    made: list[Recorder] = []

    def make(*replies: Reply, default: Reply | None = None) -> Recorder:
        recorder = Recorder(list(replies), default or Reply())
        made.append(recorder)
        return recorder

    yield make
    for recorder in made:
        recorder.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0) as c:
        yield c


def note(kind: str = "escalated", **changes: Any) -> Notification:
    values: dict[str, Any] = {
        "kind": kind,
        "incident_id": "backup:redis:2026-01-02",
        "domain": "backup",
        "target_component": "redis",
        "title": "Redis backup needs a human",
        "message": "disk full on nas; password=hunter2 was in the log",
        "failure_class": "hard_resource",
        "reason": "no space left on device",
        "attempt": 3,
        "at_ms": 1_767_312_000_000,
    }
    values.update(changes)
    return Notification(**values)


async def send_all(
    notifiers: list[Notifier], client: httpx.AsyncClient, **kw: Any
) -> DeliveryReport:
    with anyio.fail_after(WAIT_S):
        return await deliver(note(), notifiers, client, **{**FAST, **kw})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_webhook_posts_event_json_with_headers(serve: Any, client: Any) -> None:
    server = serve()
    hook = WebhookNotifier(f"{server.url}/hooks/abc", {"X-Hook-Secret": "s3cret"})
    report = await send_all([hook], client)
    assert report.results == {"webhook": "ok"} and report.all_ok
    [seen] = server.seen
    assert (seen.method, seen.path) == ("POST", "/hooks/abc")
    assert seen.headers["x-hook-secret"] == "s3cret"
    assert seen.headers["content-type"] == "application/json"
    body = seen.json()
    assert body["event"] == "selfheal.incident.escalated"
    assert body["incidentId"] == "backup:redis:2026-01-02"
    assert body["targetComponent"] == "redis"
    assert (body["attempt"], body["atMs"]) == (3, 1_767_312_000_000)
    assert body["failureClass"] == "hard_resource"
    assert "hunter2" not in seen.body.decode()  # free text is redacted on the way out


async def test_ntfy_posts_text_with_priority_tags_and_token(serve: Any, client: Any) -> None:
    server = serve()
    ntfy = NtfyNotifier(server.url + "/", "nas-alerts", "tk_ntfy_secret")
    with anyio.fail_after(WAIT_S):
        await deliver(note(), [ntfy], client, **FAST)
        await deliver(note("all_clear", title="Backup wieder grün"), [ntfy], client, **FAST)
    loud, calm = server.seen
    assert (loud.method, loud.path) == ("POST", "/nas-alerts")
    assert loud.body.decode() == "disk full on nas; password=*** was in the log"
    assert loud.headers["title"] == "Redis backup needs a human"
    assert (loud.headers["priority"], loud.headers["tags"]) == ("high", "rotating_light")
    assert loud.headers["authorization"] == "Bearer tk_ntfy_secret"
    assert (calm.headers["priority"], calm.headers["tags"]) == ("default", "white_check_mark")
    [(raw, charset)] = email.header.decode_header(calm.headers["title"])
    assert isinstance(raw, bytes) and raw.decode(charset or "ascii") == "Backup wieder grün"


async def test_ntfy_without_token_sends_no_authorization(serve: Any, client: Any) -> None:
    server = serve()
    report = await send_all([NtfyNotifier(server.url, "t")], client)
    assert report.all_ok
    assert "authorization" not in server.seen[0].headers


async def test_telegram_posts_send_message(serve: Any, client: Any) -> None:
    token = "123456789:AAH-example_token_for_tests_0123456789"
    server = serve(default=telegram_reply(ok=True, result={"message_id": 7}))
    report = await send_all([TelegramNotifier(token, "-100200300", server.url)], client)
    assert report.results == {"telegram": "ok"}
    [seen] = server.seen
    assert seen.path == f"/bot{token}/sendMessage"
    body = seen.json()
    assert body["chat_id"] == "-100200300"
    assert body["disable_web_page_preview"] is True
    assert body["text"].startswith("Redis backup needs a human\n\n")
    assert "hunter2" not in body["text"]


async def test_paths_go_before_the_query_of_a_configured_url(serve: Any, client: Any) -> None:
    # ntfy takes ?auth= instead of a header; a proxy in front of the Bot API may want a key.
    server = serve(default=telegram_reply(ok=True, result={}))
    token = "123456789:AAH-example_token_for_tests_0123456789"
    notifiers: list[Notifier] = [
        NtfyNotifier(f"{server.url}/base/?auth=QmFzaWMgeHl6", "nas-alerts"),
        TelegramNotifier(token, "42", f"{server.url}/tg?key=proxy-key"),
    ]
    report = await send_all(notifiers, client)
    assert report.all_ok, report.results
    assert sorted(seen.path for seen in server.seen) == [
        "/base/nas-alerts?auth=QmFzaWMgeHl6",
        f"/tg/bot{token}/sendMessage?key=proxy-key",
    ]


# Two token shapes: one the redaction patterns know, one only the literal scrub catches.
TOKENS = ["123456789:AAH-example_token_for_tests_0123456789", "odd-token-shape-XYZ987"]


@pytest.mark.parametrize("token", TOKENS)
@pytest.mark.parametrize("status", [500, 200, 401])
async def test_telegram_errors_never_contain_the_token(
    serve: Any, client: Any, token: str, status: int
) -> None:
    echo = f"bad bot {token} at https://api.telegram.org/bot{token}/sendMessage"
    server = serve(default=telegram_reply(status, ok=False, description=echo))
    report = await send_all([TelegramNotifier(token, "42", server.url)], client, attempts=2)
    result = report.results["telegram"]
    assert result.startswith("telegram: ") and "bad bot" in result
    assert f"HTTP {status}" in result
    assert token not in result and token.split(":")[-1] not in result
    assert token not in repr(report)
    # 5xx is retried, a 2xx ok:false answer and a 401 are final.
    assert len(server.seen) == (2 if status == 500 else 1)


async def test_retries_503_then_succeeds(serve: Any, client: Any) -> None:
    server = serve(Reply(503), Reply(503), Reply(200))
    report = await send_all([WebhookNotifier(server.url)], client, attempts=5)
    assert report.results == {"webhook": "ok"}
    assert len(server.seen) == 3


async def test_retry_after_is_honoured(serve: Any, client: Any) -> None:
    server = serve(Reply(429, headers={"Retry-After": "1"}), Reply(200))
    report = await send_all([WebhookNotifier(server.url)], client, max_delay_s=5.0)
    assert report.all_ok
    first, second = server.seen
    assert second.at - first.at >= 0.9  # base delay is 0.01 s: only Retry-After explains this


async def test_retry_after_is_capped_by_max_delay(serve: Any, client: Any) -> None:
    server = serve(Reply(429, headers={"Retry-After": "120"}), Reply(200))
    report = await send_all([WebhookNotifier(server.url)], client, max_delay_s=0.2)
    assert report.all_ok
    first, second = server.seen
    assert 0.15 <= second.at - first.at < 3.0


async def test_client_error_is_final(serve: Any, client: Any) -> None:
    server = serve(Reply(400), Reply(200))
    report = await send_all([WebhookNotifier(server.url)], client)
    assert not report.all_ok
    assert report.results["webhook"].startswith("webhook: HTTP 400")
    assert len(server.seen) == 1


async def test_gives_up_after_attempts(serve: Any, client: Any) -> None:
    server = serve(default=Reply(502))
    report = await send_all([NtfyNotifier(server.url, "t")], client, attempts=3)
    assert "HTTP 502" in report.results["ntfy"]
    assert len(server.seen) == 3


async def test_transport_error_is_reported_without_the_url(client: Any) -> None:
    url = f"http://127.0.0.1:{free_port()}/hooks/SECRETPATH?token=abc"
    report = await send_all([WebhookNotifier(url)], client, attempts=2)
    result = report.results["webhook"]
    assert result.startswith("webhook: transport: ConnectError")
    assert "SECRETPATH" not in result and "abc" not in result


async def test_skip_and_independent_failures(serve: Any, client: Any) -> None:
    broken, fine, done = serve(default=Reply(404)), serve(), serve()
    notifiers: list[Notifier] = [
        WebhookNotifier(broken.url),
        NtfyNotifier(fine.url, "t"),
        TelegramNotifier("1:x", "42", done.url),
    ]
    report = await send_all(notifiers, client, skip={"telegram"})
    assert set(report.results) == {"webhook", "ntfy"}
    assert report.results["ntfy"] == "ok" and "HTTP 404" in report.results["webhook"]
    assert report.skipped == {"telegram"} and report.delivered == {"ntfy"}
    assert not report.all_ok
    assert done.seen == [] and len(fine.seen) == 1


def test_build_notifiers_builds_only_configured_ones() -> None:
    assert build_notifiers(NotifiersSettings()) == []
    only_ntfy = NotifiersSettings.model_validate(
        {"ntfy": {"url": "http://127.0.0.1:1234", "topic": "t"}}
    )
    assert [type(n) for n in build_notifiers(only_ntfy)] == [NtfyNotifier]
    half = NotifiersSettings.model_validate({"telegram": {"botToken": "1:abc"}})
    assert build_notifiers(half) == []  # a chat is needed too
    everything = NotifiersSettings.model_validate(
        {
            "webhook": {"url": "https://hooks.example/x", "headers": {"X-K": "v"}},
            "ntfy": {"url": "https://ntfy.sh", "topic": "nas", "token": "tk"},
            "telegram": {"botToken": "1:abc", "chatId": "@my_channel", "apiBase": "http://tg"},
        }
    )
    built = build_notifiers(everything)
    assert [n.name for n in built] == ["webhook", "ntfy", "telegram"]
    assert built[0] == WebhookNotifier("https://hooks.example/x", {"X-K": "v"})
    assert built[2] == TelegramNotifier("1:abc", "@my_channel", "http://tg")


def test_retry_after_is_read_in_seconds() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past
