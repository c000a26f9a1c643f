"""Failed Inngest runs that say a worker could not be reached.

Through Inngest's REST API (v1; the dev server and Inngest Cloud answer the
same): the events received in the lookback window (`GET /v1/events`), the runs
each started (`GET /v1/events/{id}/runs`), and for each failed run its output
and error, searched for the watched patterns. A run is inspected once: its id
is remembered in Redis for the lookback window plus a margin, and only after its
inspection succeeded (a scan cut short by an error leaves the rest for the next
one). Events whose runs have all ended are remembered the same way, so a scan
costs one request per new event, not per event in the window.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import httpx

from selfheal.core.classify import texts_in
from selfheal.errors import SelfhealError
from selfheal.redact import redact_text

# Runs in these states will not change any more.
ENDED: Final = frozenset({"Completed", "Failed", "Cancelled"})
EVENTS_PAGE: Final = 100
# What a match quotes of a run's output.
QUOTE_LIMIT: Final = 500


class InngestError(SelfhealError):
    """The Inngest API could not be asked, or answered something unreadable."""


@dataclass(frozen=True)
class FailedRun:
    """A failed run whose output holds a watched pattern."""

    run_id: str
    function_id: str
    event_id: str
    quote: str  # the line of its output that matched


async def _get(client: httpx.AsyncClient, url: str, headers: dict[str, str], **params: Any) -> Any:
    try:
        response = await client.get(url, headers=headers, params=params, timeout=10)
    except httpx.HTTPError as exc:
        raise InngestError(redact_text(f"{url}: {type(exc).__name__}: {exc}")) from None
    if response.status_code != 200:
        raise InngestError(f"{url}: HTTP {response.status_code}")
    try:
        body = response.json()
    except ValueError:
        raise InngestError(f"{url}: the answer is not JSON") from None
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise InngestError(f"{url}: the answer has no data list")
    return data


def _matching_line(value: Any, patterns: Sequence[str]) -> str | None:
    for text in texts_in(value):
        for line in text.splitlines():
            if any(pattern in line for pattern in patterns):
                return line.strip()[:QUOTE_LIMIT]
    return None


async def failed_runs(
    client: httpx.AsyncClient,
    base_url: str,
    *,
    signing_key: str | None,
    lookback: timedelta,
    patterns: Sequence[str],
    seen: Callable[[str], Awaitable[bool]],
    remember: Callable[[str], Awaitable[None]],
    now: datetime | None = None,
) -> list[FailedRun]:
    """The failed runs of the window, not inspected before, whose output or error
    holds one of `patterns`. `seen(key)` tells whether an event or run was inspected;
    `remember(key)` records one whose inspection is done."""
    base = base_url.rstrip("/")
    headers = {"Authorization": f"Bearer {signing_key}"} if signing_key else {}
    since = (now or datetime.now(UTC)) - lookback
    events = await _get(
        client,
        f"{base}/v1/events",
        headers,
        received_after=since.isoformat().replace("+00:00", "Z"),
        limit=EVENTS_PAGE,
    )
    found: list[FailedRun] = []
    for event in events:
        if not isinstance(event, dict):
            continue
        event_id = str(event.get("internal_id") or event.get("id") or "")
        if not event_id or await seen(f"event:{event_id}"):
            continue
        runs = await _get(client, f"{base}/v1/events/{event_id}/runs", headers)
        all_ended = True
        for run in runs:
            if not isinstance(run, dict):
                continue
            run_id = str(run.get("run_id") or "")
            status = run.get("status")
            if status not in ENDED:
                all_ended = False
                continue
            if not run_id or await seen(f"run:{run_id}"):
                continue
            if status == "Failed":
                quote = _matching_line([run.get("output"), run.get("error")], patterns)
                if quote is not None:
                    found.append(
                        FailedRun(run_id, str(run.get("function_id") or ""), event_id, quote)
                    )
            await remember(f"run:{run_id}")
        if all_ended:
            await remember(f"event:{event_id}")
    return found
