"""Escalation notifiers (webhook, ntfy, Telegram) and a delivery loop that retries each one."""

from __future__ import annotations

import base64
import logging
import random
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final, Literal, Protocol

import anyio
import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from selfheal.config.schema_healing import NotifiersSettings
from selfheal.core.backoff import notify_retry_delay_s
from selfheal.errors import SelfhealError
from selfheal.healing.urls import under
from selfheal.redact import MASK, redact_text

log = logging.getLogger(__name__)

EVENT_PREFIX: Final = "selfheal.incident."  # webhook "event" field: selfheal.incident.<kind>
OK: Final = "ok"
TELEGRAM_TEXT_LIMIT: Final = 4096  # Bot API refuses longer messages
_NTFY_PRIORITY: Final = {"escalated": "high", "all_clear": "default"}
_NTFY_TAGS: Final = {"escalated": "rotating_light", "all_clear": "white_check_mark"}

Kind = Literal["escalated", "all_clear"]


@dataclass(frozen=True)
class Notification:
    """One announcement about an incident, free of secrets."""

    kind: Kind
    incident_id: str
    domain: str
    target_component: str
    title: str
    message: str
    failure_class: str | None
    reason: str | None
    attempt: int
    at_ms: int

    def to_json(self) -> dict[str, Any]:
        """CamelCase payload used by the webhook (free text redacted once more)."""
        return {
            "kind": self.kind,
            "incidentId": self.incident_id,
            "domain": self.domain,
            "targetComponent": self.target_component,
            "title": redact_text(self.title),
            "message": redact_text(self.message),
            "failureClass": self.failure_class,
            "reason": redact_text(self.reason) if self.reason is not None else None,
            "attempt": self.attempt,
            "atMs": self.at_ms,
        }


def _scrub(text: str, secrets: Iterable[str | None]) -> str:
    """Redact known secret shapes, then every literal secret this notifier holds."""
    text = redact_text(text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text


class NotifyError(SelfhealError):
    """A notifier failed; the message names it and the status or transport error, redacted."""

    def __init__(
        self,
        notifier: str,
        detail: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after_s: float | None = None,
        secrets: Iterable[str | None] = (),
    ) -> None:
        self.notifier = notifier
        self.status = status
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        where = f"HTTP {status}" if status is not None else "transport"
        super().__init__(_scrub(f"{notifier}: {where}: {detail}", secrets))


class Notifier(Protocol):
    """Something that can announce a notification."""

    @property
    def name(self) -> str:
        """Unique name in reports and in `skip`."""
        ...

    async def send(self, n: Notification, client: httpx.AsyncClient) -> None:
        """Deliver once; raise NotifyError on failure."""
        ...


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or HTTP date); None if absent."""
    if not value:
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


async def _post(
    name: str,
    client: httpx.AsyncClient,
    url: str,
    secrets: Sequence[str | None],
    path: str = "",
    **kwargs: Any,
) -> httpx.Response:
    """POST to `url` (with `path` appended), turning failures into NotifyError without the URL.

    Transport failures are retryable; the others are final.
    """
    try:
        return await client.post(under(url, path) if path else url, **kwargs)
    except httpx.TransportError as exc:
        detail = f"{type(exc).__name__}: {exc}"
        raise NotifyError(name, detail, retryable=True, secrets=secrets) from None
    except (httpx.HTTPError, httpx.InvalidURL, UnicodeEncodeError) as exc:
        # Not transient: a redirect loop, a bad URL or a header that is not ASCII.
        raise NotifyError(name, type(exc).__name__, secrets=secrets) from None


def _status_error(
    name: str, response: httpx.Response, detail: str, secrets: Sequence[str | None]
) -> NotifyError:
    """Classify a non-2xx answer: 429 and 5xx are worth retrying, other 4xx are final."""
    status = response.status_code
    return NotifyError(
        name,
        detail or response.reason_phrase,
        status=status,
        retryable=status == 429 or status >= 500,
        retry_after_s=parse_retry_after(response.headers.get("retry-after")),
        secrets=secrets,
    )


@dataclass(frozen=True)
class WebhookNotifier:
    """JSON POST of the notification to any URL."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    name: str = "webhook"

    async def send(self, n: Notification, client: httpx.AsyncClient) -> None:
        """POST {"event": "selfheal.incident.<kind>", ...}; 2xx is success."""
        secrets = [self.url, *self.headers.values()]
        payload = {"event": f"{EVENT_PREFIX}{n.kind}", **n.to_json()}
        response = await _post(
            self.name, client, self.url, secrets, json=payload, headers=self.headers
        )
        if not response.is_success:
            raise _status_error(self.name, response, "", secrets)


def _header_text(value: str) -> str:
    """ASCII as is; anything else as an RFC 2047 encoded word, which ntfy decodes."""
    if value.isascii():
        return value
    return f"=?UTF-8?B?{base64.b64encode(value.encode()).decode('ascii')}?="


@dataclass(frozen=True)
class NtfyNotifier:
    """Push through ntfy.sh or a self-hosted ntfy server."""

    url: str
    topic: str
    token: str | None = None
    name: str = "ntfy"

    async def send(self, n: Notification, client: httpx.AsyncClient) -> None:
        """POST the message text to {url}/{topic} with title, priority and tags headers."""
        headers = {
            "Title": _header_text(redact_text(n.title)),
            "Priority": _NTFY_PRIORITY[n.kind],
            "Tags": _NTFY_TAGS[n.kind],
        }
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        body = redact_text(n.message).encode()
        response = await _post(
            self.name,
            client,
            self.url,
            [self.token],
            f"/{self.topic}",
            content=body,
            headers=headers,
        )
        if not response.is_success:
            raise _status_error(self.name, response, "", [self.token])


@dataclass(frozen=True)
class TelegramNotifier:
    """Message through a Telegram bot."""

    bot_token: str
    chat_id: str
    api_base: str = "https://api.telegram.org"
    name: str = "telegram"

    async def send(self, n: Notification, client: httpx.AsyncClient) -> None:
        """POST sendMessage; an answer with ok false fails with its (redacted) description."""
        secrets = [self.bot_token]
        text = redact_text(f"{n.title}\n\n{n.message}")[:TELEGRAM_TEXT_LIMIT]
        # The path embeds the token, so the URL never goes into an error message.
        path = f"/bot{self.bot_token}/sendMessage"
        payload = {"chat_id": self.chat_id, "text": text, "disable_web_page_preview": True}
        response = await _post(self.name, client, self.api_base, secrets, path, json=payload)
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            answer = {}
        description = str(answer.get("description") or "")[:300]
        if not response.is_success:
            error = _status_error(self.name, response, description, secrets)
            hint = (answer.get("parameters") or {}).get("retry_after")
            if error.retry_after_s is None and isinstance(hint, int | float):
                error.retry_after_s = float(hint)
            raise error
        if answer.get("ok") is not True:
            detail = description or "answer without ok: true"
            raise NotifyError(self.name, detail, status=response.status_code, secrets=secrets)


def build_notifiers(settings: NotifiersSettings) -> list[Notifier]:
    """The notifiers that are fully configured, in a stable order."""
    found: list[Notifier] = []
    if settings.webhook.url:
        found.append(WebhookNotifier(settings.webhook.url, dict(settings.webhook.headers)))
    ntfy = settings.ntfy
    if ntfy.url and ntfy.topic:
        found.append(NtfyNotifier(ntfy.url, ntfy.topic, ntfy.token))
    telegram = settings.telegram
    if telegram.bot_token and telegram.chat_id:
        found.append(TelegramNotifier(telegram.bot_token, telegram.chat_id, telegram.api_base))
    return found


@dataclass
class DeliveryReport:
    """Outcome per notifier: "ok" or the redacted error; skipped ones are listed apart."""

    results: dict[str, str] = field(default_factory=dict)
    skipped: frozenset[str] = frozenset()

    @property
    def all_ok(self) -> bool:
        """True when every notifier that was tried succeeded."""
        return all(result == OK for result in self.results.values())

    @property
    def delivered(self) -> frozenset[str]:
        """Names that succeeded now; add them to `skip` of the next round."""
        return frozenset(name for name, result in self.results.items() if result == OK)


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, NotifyError) and exc.retryable


async def _send(n: Notification, notifier: Notifier, client: httpx.AsyncClient) -> None:
    """One send; whatever goes wrong is a NotifyError (a broken notifier must not stop
    the others)."""
    try:
        await notifier.send(n, client)
    except NotifyError:
        raise
    except Exception as exc:
        raise NotifyError(notifier.name, f"unexpected {type(exc).__name__}") from None


async def _deliver_one(
    n: Notification,
    notifier: Notifier,
    client: httpx.AsyncClient,
    attempts: int,
    base_delay_s: float,
    max_delay_s: float,
) -> str:
    """Send with retries (retryable errors only); return "ok" or the last redacted error."""

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome is not None else None
        retry_after = error.retry_after_s if isinstance(error, NotifyError) else None
        return notify_retry_delay_s(
            state.attempt_number, base_delay_s, max_delay_s, retry_after, random.random()
        )

    def warn(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "notify %s: try %d/%d failed: %s", notifier.name, state.attempt_number, attempts, error
        )

    try:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(attempts),
            wait=wait,
            retry=retry_if_exception(_retryable),
            before_sleep=warn,
            sleep=anyio.sleep,
            reraise=True,
        ):
            with attempt:
                await _send(n, notifier, client)
    except NotifyError as error:
        log.error("notify %s gave up: %s", notifier.name, error)
        return str(error)
    return OK


async def deliver(
    n: Notification,
    notifiers: Sequence[Notifier],
    client: httpx.AsyncClient,
    *,
    attempts: int = 5,
    base_delay_s: float = 1.0,
    max_delay_s: float = 60.0,
    skip: Collection[str] = (),
) -> DeliveryReport:
    """Send to every notifier not in `skip`, concurrently, each with its own retries."""
    if attempts < 1:
        raise ValueError("attempts must be >= 1")
    report = DeliveryReport(skipped=frozenset(x.name for x in notifiers if x.name in skip))

    async def run(notifier: Notifier) -> None:
        report.results[notifier.name] = await _deliver_one(
            n, notifier, client, attempts, base_delay_s, max_delay_s
        )

    async with anyio.create_task_group() as tg:
        for notifier in notifiers:
            if notifier.name not in skip:
                tg.start_soon(run, notifier, name=f"notify-{notifier.name}")
    return report
