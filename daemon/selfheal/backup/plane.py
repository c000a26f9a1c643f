"""The backup plane as the daemon runs it: scheduler, runners, spool drainer, control methods."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import PurePosixPath
from typing import Any, Literal, cast

import anyio
import redis.asyncio as aioredis
from anyio.abc import TaskStatus

from selfheal.backup.progress import LIVE, progress_key
from selfheal.backup.scheduler import Scheduler
from selfheal.backup.service import TARGETS, BackupService, RunOutcome, now_ms
from selfheal.bus.consumer import ConsumerOptions, StreamConsumer
from selfheal.bus.streams import Bus, cast_entries
from selfheal.config import Settings
from selfheal.control.params import Params
from selfheal.control.protocol import INVALID_PARAMS
from selfheal.control.server import Handler
from selfheal.core.artifacts import NAME_MAX, manifest_name, parse_artifact_name
from selfheal.core.contracts import SelfHealingRequest
from selfheal.core.events import BACKUP_REQUESTED, BACKUP_RETRY_REQUESTED, new_event
from selfheal.errors import ControlError
from selfheal.healing.domains import Domain, Domains
from selfheal.supervisor import Service, ServiceSpec
from selfheal.telemetry import Telemetry

log = logging.getLogger("selfheal.backup")

DRAIN_EVERY_S = 30.0
FOLLOW_LIMIT_S = 6 * 3600.0


class SpoolDrainer:
    """Service: delivers spooled artifacts once a transport is back."""

    name = "spool-drainer"

    def __init__(self, service: Callable[[], BackupService], every_s: float = DRAIN_EVERY_S):
        self._service = service
        self.every_s = every_s
        self.delivered = 0
        self.last_error: str | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Drain periodically until cancelled."""
        task_status.started()
        while True:
            service = self._service()
            if await service.spool().entries():
                try:
                    self.delivered += await service.drain()
                    self.last_error = None
                except Exception as exc:  # keep trying; the spool is durable
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.warning("spool drain failed: %s", self.last_error)
            await anyio.sleep(self.every_s)


BACKUP_DOMAIN = "backup"


def runner_group(target: str) -> str:
    """The consumer group that runs one target's backups (both its streams)."""
    return f"system/backup.{target}"


class BackupPlane:
    """Owns the backup services and their control methods."""

    def __init__(
        self,
        *,
        settings: Callable[[], Settings],
        bus: Callable[[], Bus],
        telemetry: Telemetry,
        consumer_name: str,
        stopping: Callable[[], bool],
        domains: Domains,
    ) -> None:
        self._settings = settings
        self._bus = bus
        self.telemetry = telemetry
        self.consumer_name = consumer_name
        self._stopping = stopping
        self.consumers: dict[str, StreamConsumer] = {}
        self._external: aioredis.Redis | None = None
        self._external_url: str | None = None
        self.drainer = SpoolDrainer(self.service)
        self.last_runs: dict[str, RunOutcome] = {}
        # Backups retry through their retry event, served by one group per target; a
        # paused backup incident is re-checked by asking whether the NAS is back.
        domains.register(Domain(BACKUP_DOMAIN, BACKUP_RETRY_REQUESTED, probe=self.nas_probe))
        for target in TARGETS:
            domains.serve(BACKUP_RETRY_REQUESTED, runner_group(target))

    def _source_client(self) -> aioredis.Redis:
        url = self._settings().backups.redis.source
        if url == "bus":
            return self._bus().client
        if self._external is None or self._external_url != url:
            self._external = aioredis.Redis.from_url(url)
            self._external_url = url
        return self._external

    def service(self) -> BackupService:
        """A service over the current bus and config."""
        return BackupService(
            bus=self._bus(),
            source_client=self._source_client,
            telemetry=self.telemetry,
            settings=self._settings,
            last=self.last_runs,
        )

    def specs(self, depends_on: Callable[[], object]) -> list[ServiceSpec]:
        """Scheduler, one runner group per target (both streams), the spool drainer."""
        specs = [
            ServiceSpec(
                name="scheduler",
                factory=lambda: Scheduler(self._bus(), self._settings),
                depends_on=depends_on,
            ),
            ServiceSpec(name="spool-drainer", factory=lambda: self.drainer, depends_on=depends_on),
        ]
        for target in TARGETS:
            for stream, short in (
                (BACKUP_REQUESTED, "requested"),
                (BACKUP_RETRY_REQUESTED, "retry"),
            ):
                specs.append(
                    ServiceSpec(
                        name=f"backup:{target}:{short}",
                        factory=self._runner_factory(target, stream),
                        depends_on=depends_on,
                        drains=True,
                    )
                )
        return specs

    def _runner_factory(
        self, target: Literal["typesense", "redis"], stream: str
    ) -> Callable[[], Service]:
        return lambda: self._runner(target, stream)

    def _runner(self, target: Literal["typesense", "redis"], stream: str) -> Service:
        service = self.service()

        async def handle(event: Any) -> None:
            if event.data.get("target") != target:
                return  # the other target's group handles it
            await service.handle(event)

        consumer = StreamConsumer(
            self._bus(),
            stream,
            runner_group(target),
            self.consumer_name,
            handle,
            # A backup can take long: do not let another daemon reclaim it too soon.
            options=ConsumerOptions(batch=10, reclaim_idle_ms=30 * 60_000, max_deliveries=3),
            stopping=self._stopping,
        )
        consumer.name = f"backup:{target}:{stream}"
        self.consumers[consumer.name] = consumer
        return consumer

    async def nas_probe(self, request: SelfHealingRequest) -> bool:
        """Is the NAS reachable again for this request's target (any transport)?"""
        target = request.target_component
        for known in TARGETS:
            if target == known:
                for transport in self.service().transports(known):
                    if (await transport.probe()).ok:
                        return True
        return False

    # -- control methods -------------------------------------------------------------------

    def handlers(self) -> dict[str, Handler]:
        """Control-socket methods of the backup plane."""
        return {
            "backup.run": self._run,
            "backup.list": self._list,
            "backup.verify": self._verify,
            "backup.retention": self._retention,
        }

    async def _run(self, params: dict[str, Any]) -> Any:
        read = Params(params)
        target = read.choice("target", TARGETS)
        follow = read.flag("follow", default=False)
        bus = self._bus()
        event = new_event(BACKUP_REQUESTED, {"target": target, "trigger": "cli"}, now_ms=now_ms())
        event = event.model_copy(update={"data": {**event.data, "runId": event.id}})
        await bus.publish(event)
        if not follow:
            return {"target": target, "runId": event.id}
        return self._follow(bus, event.id)

    async def _follow(self, bus: Bus, run_id: str) -> AsyncIterator[dict[str, Any]]:
        key = progress_key(bus, run_id)
        last = "0-0"
        with anyio.move_on_after(FOLLOW_LIMIT_S):
            while True:
                reply = await bus.client.xread({key: last}, count=20, block=250)
                for _stream, entries in cast(list[tuple[Any, Any]], reply or []):
                    for entry_id, fields in cast_entries(entries):
                        last = entry_id
                        yield {"runId": run_id, **fields}
                        if fields.get("stage") == "done":
                            return
                live = LIVE.get(run_id)
                if live is not None and live.stage == "ship":
                    yield {
                        "runId": run_id,
                        "stage": "ship",
                        "done": live.done,
                        "total": live.total,
                        "rateBps": int(live.rate()),
                    }

    async def _transport_for(self, target: Literal["typesense", "redis"]) -> Any:
        for transport in self.service().transports(target):
            if (await transport.probe()).ok:
                return transport
        raise ControlError("unavailable", "no transport reaches the NAS right now")

    async def _list(self, params: dict[str, Any]) -> Any:
        target = Params(params).optional_choice("target", TARGETS)
        targets = list(TARGETS) if target is None else [target]
        rows: list[dict[str, Any]] = []
        for target in targets:
            transport = await self._transport_for(target)
            for entry in await transport.list_dir(PurePosixPath(target)):
                parsed = parse_artifact_name(entry.name)
                if parsed is None or parsed.target != target:
                    continue
                rows.append(
                    {
                        "target": target,
                        "name": entry.name,
                        "size": entry.size,
                        "created": parsed.created.isoformat(),
                        "where": transport.mode,
                    }
                )
        spooled = [
            {"target": e.target, "name": e.name, "size": e.size, "where": "spool"}
            for e in await self.service().spool().entries()
            if e.target in targets
        ]
        return {"artifacts": sorted(rows, key=lambda r: r["name"]) + spooled}

    async def _verify(self, params: dict[str, Any]) -> Any:
        name = Params(params).text("artifact", max_length=NAME_MAX, meaning="a file name")
        parsed = parse_artifact_name(name)
        target = next((t for t in TARGETS if parsed is not None and parsed.target == t), None)
        if target is None:
            raise ControlError(
                INVALID_PARAMS, f"artifact {name!r} is not one of our artifact names"
            )
        transport = await self._transport_for(target)
        folder = PurePosixPath(target)
        raw = await transport.read_small(folder / manifest_name(name))
        manifest = json.loads(raw)
        actual = await transport.sha256(folder / name)
        return {
            "artifact": name,
            "where": transport.mode,
            "expected": manifest.get("sha256"),
            "actual": actual,
            "ok": actual == manifest.get("sha256"),
            "manifestSha256": hashlib.sha256(raw).hexdigest(),
        }

    async def _retention(self, params: dict[str, Any]) -> Any:
        read = Params(params)
        target = read.choice("target", TARGETS)
        dry_run = read.flag("dryRun", default=True)
        transport = await self._transport_for(target)
        plan = await self.service().apply_retention(target, transport, dry_run=dry_run)
        return {"target": target, "dryRun": dry_run, **plan}
