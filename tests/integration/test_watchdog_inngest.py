"""Scanning Inngest's failed runs, against a real local HTTP server playing the
Inngest API and a real Redis for what was inspected."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from selfheal.bus.streams import Bus
from selfheal.watchdog.inngest import InngestError, failed_runs
from tests.support.http import PlayedService, Posted, Reply, played_service

UNREACHABLE = "Error: Unable to reach SDK URL http://127.0.0.1:3111/api/inngest"


class Inngest:
    """Events and their runs, as GET /v1/events and /v1/events/{id}/runs give them."""

    def __init__(self) -> None:
        self.runs: dict[str, list[dict[str, Any]]] = {}
        self.down = False

    def respond(self, request: Posted) -> Reply:
        if self.down:
            return Reply(502, {"error": "bad gateway"})
        path = urlsplit(request.path).path
        if path == "/v1/events":
            events = [{"internal_id": e, "name": "app/x", "data": {}} for e in self.runs]
            return Reply(200, {"data": events, "metrics": {}})
        if path.startswith("/v1/events/") and path.endswith("/runs"):
            return Reply(200, {"data": self.runs.get(path.split("/")[3], [])})
        return Reply(404, {"error": "not found"})


@pytest.fixture
def inngest() -> Iterator[tuple[Inngest, PlayedService]]:
    api = Inngest()
    with played_service(api.respond) as service:
        yield api, service


def run(run_id: str, status: str, output: Any = None) -> dict[str, Any]:
    return {"run_id": run_id, "function_id": "fn", "status": status, "output": output}


async def scan(bus: Bus, service: PlayedService, key: str | None = None) -> list[str]:
    async def seen(name: str) -> bool:
        return bool(await bus.client.exists(f"t:{name}"))

    async def remember(name: str) -> None:
        await bus.client.set(f"t:{name}", "1", ex=600)

    async with httpx.AsyncClient() as client:
        found = await failed_runs(
            client,
            service.base,
            signing_key=key,
            lookback=timedelta(minutes=30),
            patterns=["Unable to reach SDK URL"],
            seen=seen,
            remember=remember,
        )
    return [f"{r.run_id}:{r.quote}" for r in found]


@pytest.mark.anyio
async def test_a_failed_run_naming_the_pattern_is_found_once(
    bus: Bus, inngest: tuple[Inngest, PlayedService]
) -> None:
    api, service = inngest
    api.runs["E1"] = [
        run("R1", "Failed", {"error": {"message": "boom\n" + UNREACHABLE}}),
        run("R2", "Completed", UNREACHABLE),  # not failed: not news
        run("R3", "Failed", {"error": "TypeError: x is undefined"}),
    ]
    assert await scan(bus, service, key="signkey-123") == [f"R1:{UNREACHABLE}"[:503]]
    assert service.posts[0].headers.get("Authorization") == "Bearer signkey-123"
    query = parse_qs(urlsplit(service.posts[0].path).query)
    assert query["received_after"][0].endswith("Z") and query["limit"] == ["100"]
    calls = len(service.posts)
    assert await scan(bus, service) == []  # R1 was inspected; E1 has ended
    assert len(service.posts) == calls + 1  # only the events list: E1 is remembered


@pytest.mark.anyio
async def test_a_running_run_is_looked_at_again_once_it_fails(
    bus: Bus, inngest: tuple[Inngest, PlayedService]
) -> None:
    api, service = inngest
    api.runs["E1"] = [run("R1", "Running")]
    assert await scan(bus, service) == []
    api.runs["E1"] = [run("R1", "Failed", UNREACHABLE)]
    assert await scan(bus, service) == [f"R1:{UNREACHABLE}"]


@pytest.mark.anyio
async def test_an_api_failure_raises_and_remembers_nothing(
    bus: Bus, inngest: tuple[Inngest, PlayedService]
) -> None:
    api, service = inngest
    api.runs["E1"] = [run("R1", "Failed", UNREACHABLE)]
    api.down = True
    with pytest.raises(InngestError, match="HTTP 502"):
        await scan(bus, service)
    api.down = False
    assert await scan(bus, service) == [f"R1:{UNREACHABLE}"]
