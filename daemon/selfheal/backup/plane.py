"""The backup plane as the daemon runs it: scheduler, runners, spool drainer, control methods."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import PurePosixPath
from typing import Any, Literal, cast

import anyio
import redis.asyncio as aioredis
from anyio.abc import TaskStatus

from selfheal.backup.drill import DrillError
from selfheal.backup.model import TransportError
from selfheal.backup.progress import LIVE, progress_key, read_entry
from selfheal.backup.recovery import scan_staging
from selfheal.backup.scheduler import Scheduler
from selfheal.backup.service import (
    TARGETS,
    BackupService,
    RunOutcome,
    backup_lock_key,
    disabled_detail,
    drills_key,
    now_ms,
)
from selfheal.backup.spool import SpoolEntry
from selfheal.backup.upkeep import scan_folder
from selfheal.bus.consumer import IDLE_READ_MS, ConsumerOptions, PoisonEvent, StreamConsumer
from selfheal.bus.streams import Bus, as_text, cast_entries
from selfheal.config import Settings
from selfheal.control.params import Params
from selfheal.control.protocol import INVALID_PARAMS
from selfheal.control.server import Handler
from selfheal.core.artifacts import NAME_MAX, manifest_name, parse_artifact_name
from selfheal.core.contracts import SelfHealingRequest
from selfheal.core.events import (
    BACKUP_DRILL_REQUESTED,
    BACKUP_REQUESTED,
    BACKUP_RETRY_REQUESTED,
    new_event,
)
from selfheal.errors import ControlError
from selfheal.healing.domains import Domain, Domains
from selfheal.supervisor import Service, ServiceSpec
from selfheal.telemetry import Telemetry

log = logging.getLogger("selfheal.backup")

DRAIN_EVERY_S = 30.0
# `backup run --follow` ends with an error rather than wait forever: after this long in
# all, or once nothing has happened for FOLLOW_IDLE_S (no progress from the run, and no
# run of the target holding its lock, which a queued run waits behind).
FOLLOW_LIMIT_S = 6 * 3600.0
FOLLOW_IDLE_S = 60.0
# While waiting, a heartbeat keeps the client's idle timeout from cutting the stream.
FOLLOW_HEARTBEAT_S = 10.0


class SpoolDrainer:
    """Service: delivers spooled artifacts once a transport is back."""

    name = "spool-drainer"

    def __init__(self, service: Callable[[], BackupService], every_s: float = DRAIN_EVERY_S):
        self._service = service
        self.every_s = every_s
        self.delivered = 0
        self.last_error: str | None = None
        self.recovered = False  # start-up recovery ran (once per process, not per restart)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Recover what a crash left (first start only), then drain periodically until
        cancelled."""
        stranded: list[SpoolEntry] = []
        if not self.recovered:
            # Before readiness: the runners start after this service, so no run is
            # writing to staging while it is sorted.
            stranded = await self._service().recover()
            self.recovered = True
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
            if stranded:
                # Recovered artifacts the first drain did not deliver become the incident.
                await service.report_stranded(stranded)
                stranded = []
            await anyio.sleep(self.every_s)


BACKUP_DOMAIN = "backup"
DRILL_GROUP = "system/backup.drill"


def _listed(target: str, name: str, size: int, where: str, *, verified: bool) -> dict[str, Any]:
    """One row of `backup list`; `verified`: its copy on the NAS matched the manifest."""
    parsed = parse_artifact_name(name)
    return {
        "target": target,
        "name": name,
        "created": parsed.created.isoformat() if parsed is not None else None,
        "size": size,
        "where": where,
        "verified": verified,
    }


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
        wait_stopping: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._settings = settings
        self._wait_stopping = wait_stopping
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
        self.follow_limit_s = FOLLOW_LIMIT_S
        self.follow_idle_s = FOLLOW_IDLE_S

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
                starts_work=True,
            ),
            ServiceSpec(
                name="spool-drainer",
                factory=lambda: self.drainer,
                depends_on=depends_on,
                starts_work=True,
            ),
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
        specs.append(
            ServiceSpec(
                name="backup:drills", factory=self._drill_runner, depends_on=depends_on, drains=True
            )
        )
        return specs

    def _drill_runner(self) -> Service:
        async def handle(event: Any) -> None:
            target = event.data.get("target")
            if target not in TARGETS:
                raise PoisonEvent(f"{event.name}: data.target must be one of {', '.join(TARGETS)}")
            transport = await self._transport_for(target)  # none: delivered again later
            result = await self.service().drill(target, transport, None)
            log.info("restore drill of %s: %s", result.artifact, result.detail)

        return self._long_work_consumer(
            BACKUP_DRILL_REQUESTED, DRILL_GROUP, handle, "backup:drills", batch=1
        )

    def _long_work_consumer(
        self,
        stream: str,
        group: str,
        handle: Callable[[Any], Awaitable[None]],
        name: str,
        *,
        batch: int,
        on_buried: Callable[[Any, str], Awaitable[None]] | None = None,
    ) -> StreamConsumer:
        """A consumer of work that can take long (a backup, a drill): not reclaimed by
        another daemon for half an hour."""
        consumer = StreamConsumer(
            self._bus(),
            stream,
            group,
            self.consumer_name,
            handle,
            options=ConsumerOptions(
                batch=batch,
                reclaim_idle_ms=30 * 60_000,
                max_deliveries=self._settings().bus.max_deliveries,
                block_ms=IDLE_READ_MS,
                reclaim_every_s=IDLE_READ_MS / 1000,
            ),
            stopping=self._stopping,
            wait_stopping=self._wait_stopping,
            on_buried=on_buried,
        )
        consumer.name = name
        self.consumers[name] = consumer
        return consumer

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

        async def gave_up(event: Any, reason: str) -> None:
            if event.data.get("target") == target:
                await service.gave_up(target, event, reason)

        name = f"backup:{target}:{stream}"
        return self._long_work_consumer(
            stream, runner_group(target), handle, name, batch=10, on_buried=gave_up
        )

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
            "backup.drill": self._drill,
            "backup.drills": self._drills,
        }

    async def _run(self, params: dict[str, Any]) -> Any:
        read = Params(params)
        target = read.choice("target", TARGETS)
        follow = read.flag("follow", default=False)
        if not getattr(self._settings().backups, target).enabled:
            # Refused here, with or without --follow: a request the runner would skip has
            # nothing to show and must not look accepted.
            raise ControlError("disabled", disabled_detail(target))
        bus = self._bus()
        event = new_event(BACKUP_REQUESTED, {"target": target, "trigger": "cli"}, now_ms=now_ms())
        event = event.model_copy(update={"data": {**event.data, "runId": event.id}})
        await bus.publish(event)
        if not follow:
            return {"target": target, "runId": event.id}
        return self._follow(bus, event.id, target)

    async def _follow(self, bus: Bus, run_id: str, target: str) -> AsyncIterator[dict[str, Any]]:
        """The run's progress until it is done; a ControlError when it cannot be (bounded)."""
        key = progress_key(bus, run_id)
        last = "0-0"
        stage = "queued"
        began = active = sent = anyio.current_time()
        while True:
            reply = await bus.client.xread({key: last}, count=20, block=250)
            now = anyio.current_time()
            for _stream, entries in cast(list[tuple[Any, Any]], reply or []):
                for entry_id, fields in cast_entries(entries):
                    last, active, sent = entry_id, now, now
                    entry = read_entry(fields)
                    stage = str(entry.get("stage", stage))
                    yield {"runId": run_id, **entry}
                    if stage == "done":
                        return
            live = LIVE.get(run_id)
            if live is not None and live.stage == "ship":
                active = sent = now
                yield {
                    "runId": run_id,
                    "stage": "ship",
                    "done": live.done,
                    "total": live.total,
                    "rateBps": int(live.rate()),
                }
            elif await bus.client.exists(backup_lock_key(bus, target)):
                active = now  # our run, or the one ours is queued behind, is working
            if now - active > self.follow_idle_s:
                raise ControlError(
                    "timeout",
                    f"backup {target} run {run_id}: no progress for {self.follow_idle_s:g}s "
                    f"(last stage: {stage}) and no {target} backup is running; is the backup "
                    "runner up (selfheal status)? The run may still happen later.",
                )
            if now - began > self.follow_limit_s:
                raise ControlError(
                    "timeout",
                    f"backup {target} run {run_id} did not finish within "
                    f"{self.follow_limit_s:g}s (last stage: {stage}); see selfheal status",
                )
            if now - sent >= FOLLOW_HEARTBEAT_S:
                sent = now
                yield {"runId": run_id, "stage": stage, "heartbeat": True}

    async def _transport_for(self, target: Literal["typesense", "redis"]) -> Any:
        transport = await self.service().reachable_transport(target)
        if transport is None:
            raise ControlError("unavailable", "no transport reaches the NAS right now")
        return transport

    async def _list(self, params: dict[str, Any]) -> Any:
        """Backups on the NAS (each vouched for by its manifest, with the target's last
        drill when it tried that file), then those still on this machine: in the spool
        and in staging. A NAS that cannot be reached is reported, not an error: what
        waits locally is then all the more worth seeing."""
        target = Params(params).optional_choice("target", TARGETS)
        targets = list(TARGETS) if target is None else [target]
        rows: list[dict[str, Any]] = []
        ignored: list[dict[str, Any]] = []
        unreachable: dict[str, str] = {}
        drills = await self._drills({})
        for target in targets:
            try:
                transport = await self._transport_for(target)
            except ControlError as exc:
                unreachable[target] = exc.message
                continue
            # Only what a manifest vouches for is a backup (the same rule as retention).
            scan = await scan_folder(transport, target)
            drill = drills.get(target) or {}
            for listed in scan.artifacts:
                name = listed.entry.name
                drilled = drill.get("artifact") == name
                rows.append(
                    _listed(target, name, listed.entry.size, transport.mode, verified=True)
                    | {
                        "sha256": listed.manifest["sha256"],
                        "drill": ("ok" if drill.get("ok") else "failed") if drilled else None,
                    }
                )
            ignored += [
                {"target": target, "name": name, "reason": why, "where": transport.mode}
                for name, why in sorted(scan.ignored.items())
            ]
        rows.sort(key=lambda r: str(r["name"]))
        rows += [
            _listed(e.target, e.name, e.size, "spool", verified=False)
            for e in await self.service().spool().entries()
            if e.target in targets
        ]
        staged = await anyio.to_thread.run_sync(scan_staging, self.service().staging_dir())
        rows += [
            _listed(a.target, a.name, a.size, "staging", verified=False)
            for a in staged.complete
            if a.target in targets
        ]
        return {"artifacts": rows, "ignored": ignored, "unreachable": unreachable}

    async def _drill(self, params: dict[str, Any]) -> Any:
        read = Params(params)
        target = read.choice("target", TARGETS)
        name = read.optional_text("artifact", max_length=NAME_MAX, min_length=1)
        transport = await self._transport_for(target)
        try:
            result = await self.service().drill(target, transport, name)
        except DrillError as exc:
            raise ControlError("drill_failed", str(exc)) from None
        return result.public()

    async def _drills(self, params: dict[str, Any]) -> Any:
        bus = self._bus()
        raw = await bus.client.hgetall(drills_key(bus))
        return {as_text(k): json.loads(as_text(v)) for k, v in raw.items()}

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
        raw = (await transport.read_many([folder / manifest_name(name)])).get(
            folder / manifest_name(name)
        )
        if raw is None:
            raise ControlError(
                "not_found",
                f"{name} has no manifest on the NAS (via {transport.mode}): nothing to verify "
                "it against, and it is not counted as a backup",
            )
        try:
            manifest = json.loads(raw)
        except ValueError as exc:
            raise ControlError("invalid_manifest", f"{manifest_name(name)}: {exc}") from None
        if not isinstance(manifest, dict):
            raise ControlError("invalid_manifest", f"{manifest_name(name)} is not a JSON object")
        try:
            actual = await transport.sha256(folder / name)
        except TransportError as exc:
            if exc.errno_name == "ENOENT":
                raise ControlError(
                    "not_found", f"{name} is not on the NAS (via {transport.mode})"
                ) from None
            raise ControlError("unavailable", f"cannot hash {name}: {exc}") from None
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
