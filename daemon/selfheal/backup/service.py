"""The backup service: one run of one target, end to end, reported as events.

A run holds the target's lock, makes the artifact (source), ships it (mount first,
SSH fallback, spool when both are down), uploads the manifest beside it, applies
retention on the NAS, prunes source snapshots that are safely on the NAS, and
emits `system/backup.completed` — or `system/backup.failed` with classified
evidence, which the failure adapter turns into a self-healing request. A spooled
artifact is reported as failed-and-spooled (the incident stays open) until the
drainer delivers it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Final, Literal

import anyio
import redis.asyncio as aioredis

from selfheal.backup.drill import DrillResult, drill, stored
from selfheal.backup.model import Artifact, Delivery, Transport, TransportError
from selfheal.backup.progress import ProgressReporter
from selfheal.backup.recovery import (
    clear_marker,
    delete_unfinished,
    marker_path,
    read_marker,
    scan_staging,
    write_marker,
)
from selfheal.backup.sources.archive import SourceError
from selfheal.backup.sources.redis_rdb import RedisSource
from selfheal.backup.sources.typesense import TypesenseSource
from selfheal.backup.spool import Spool, SpoolEntry
from selfheal.backup.transfer import TransferManager
from selfheal.backup.transports.mount import MountTransport
from selfheal.backup.upkeep import UnverifiedSnapshots, apply_retention
from selfheal.bus.consumer import PoisonEvent
from selfheal.bus.lock import LockBusy, RedisLock
from selfheal.bus.streams import Bus, as_text
from selfheal.config import Settings
from selfheal.core.artifacts import manifest_name, validate_target
from selfheal.core.events import (
    BACKUP_COMPLETED,
    BACKUP_FAILED,
    BACKUP_REQUESTED,
    Event,
    new_event,
)
from selfheal.redact import redact_text
from selfheal.telemetry import Telemetry, context_from_traceparent, current_traceparent

log = logging.getLogger("selfheal.backup")

TARGETS: tuple[Literal["typesense", "redis"], ...] = ("typesense", "redis")


def now_ms() -> int:
    """Wall-clock epoch milliseconds."""
    return int(time.time() * 1000)


def drills_key(bus: Bus) -> str:
    """Hash: target -> its last restore drill's result (JSON)."""
    return f"{bus.keys.tag}:drills"


def backup_lock_key(bus: Bus, target: str) -> str:
    """The lock a target's run holds (one run per target, across daemons)."""
    return f"{bus.keys.tag}:lock:backup:{target}"


# How long a run remembers the artifact it made: longer than any redelivery of its
# request (a reclaimed entry, a re-request at start-up) can come.
RUN_MEMORY_S: Final = 30 * 86400


def run_artifact_key(bus: Bus, run_id: str) -> str:
    """String: the artifact a run made (set once the snapshot is complete)."""
    return f"{bus.keys.tag}:backup:run:{run_id}"


def disabled_detail(target: str) -> str:
    """Why a disabled target does not run, naming the key that turns it on."""
    return f"backup target {target!r} is disabled (selfheal.backups.{target}.enabled is false)"


@dataclass(frozen=True)
class RunOutcome:
    """What one run did."""

    target: str
    status: Literal["delivered", "spooled", "failed", "skipped"]
    artifact: str | None = None
    detail: str | None = None
    bytes: int | None = None
    seconds: float | None = None
    at: float | None = None  # when the run ended (epoch seconds)


class BackupService:
    """Builds sources and transports from the live config and runs backups."""

    def __init__(
        self,
        *,
        bus: Bus,
        source_client: Callable[[], aioredis.Redis],
        telemetry: Telemetry,
        settings: Callable[[], Settings],
        last: dict[str, RunOutcome] | None = None,
    ) -> None:
        self.bus = bus
        self._source_client = source_client
        self.telemetry = telemetry
        self._settings = settings
        self.last: dict[str, RunOutcome] = {} if last is None else last

    # -- construction from config -------------------------------------------------------

    def staging_dir(self) -> Path:
        """Where sources write artifacts before they ship."""
        path = self._settings().state_dir / "staging"
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path

    def spool(self) -> Spool:
        """The spool for artifacts no transport could take."""
        return Spool(self._settings().spool_path)

    def transports(self, target: Literal["typesense", "redis"]) -> list[Transport]:
        """The transports that are on (useMount, useSsh): mount then SSH, or SSH first
        when preferRemote, for one target's settings."""
        settings = self._settings()
        target_settings = getattr(settings.backups, target)
        found: list[Transport] = []
        if settings.nas.use_mount:
            found.append(
                MountTransport(
                    settings.mount_root(target),
                    require_mount_point=target_settings.require_mount_point,
                )
            )
        if settings.nas.use_ssh:
            # Imported here: asyncssh and its cryptography weigh ~30 MB, which a daemon
            # that has not needed SSH yet (an idle one, a mount-only NAS) does not carry.
            from selfheal.backup.transports.ssh import SshTransport

            ssh = SshTransport(
                settings.transport.ssh_host,
                settings.transport.ssh_options,
                settings.nas.remote_root,
                lean_send=settings.nas.lean_ssh_send,
            )
            found.insert(0 if settings.nas.prefer_remote else len(found), ssh)
        return found

    def transfer(self, target: Literal["typesense", "redis"]) -> TransferManager:
        """The transfer manager with the in-copy retry knobs."""
        transport = self._settings().transport
        return TransferManager(
            self.transports(target),
            self.spool(),
            max_attempts=transport.max_attempts,
            retry_base_ms=transport.retry_base_ms,
            retry_max_ms=transport.retry_max_ms,
            recovery_window_s=transport.recovery_window_hours * 3600,
            telemetry=self.telemetry,
            nas_wait_s=self._settings().nas.wait_for_nas_seconds,
        )

    def source(self, target: Literal["typesense", "redis"]) -> TypesenseSource | RedisSource:
        """The source for a target."""
        settings = self._settings()
        if target == "typesense":
            return TypesenseSource(
                settings.backups.typesense,
                snapshot_root=settings.typesense_snapshot_root,
                staging_dir=self.staging_dir(),
            )
        return RedisSource(
            settings.backups.redis, client=self._source_client(), staging_dir=self.staging_dir()
        )

    # -- runs ----------------------------------------------------------------------------

    async def handle(self, event: Event) -> None:
        """Consume backup.requested / backup.retry.requested for any target."""
        target = event.data.get("target")
        if not isinstance(target, str) or target not in TARGETS:
            raise PoisonEvent(f"{event.name}: data.target must be one of {', '.join(TARGETS)}")
        settings = getattr(self._settings().backups, target)
        if not settings.enabled:
            # Disabled after it was requested: still end the run's progress, so that
            # `backup run --follow` ends too.
            log.info("backup %s requested but disabled in config; skipped", target)
            self.last[target] = RunOutcome(target, "skipped", detail="disabled")
            run_id = str(event.data.get("runId") or event.id)
            await ProgressReporter(self.bus, run_id=run_id).finish(
                "skipped", disabled_detail(target)
            )
            return
        attempt = event.data.get("attempt", 0)
        await self.run(target, event, attempt=attempt if isinstance(attempt, int) else 0)

    async def run(
        self, target: Literal["typesense", "redis"], cause: Event, *, attempt: int = 0
    ) -> RunOutcome:
        """One locked run of `target`."""
        validate_target(target)
        lock = RedisLock(self.bus.client, backup_lock_key(self.bus, target))
        reporter = ProgressReporter(self.bus, run_id=str(cause.data.get("runId") or cause.id))
        marker = marker_path(self._settings().state_dir, target)
        try:
            async with lock.held():
                # Removed when the run ends, kept when it is killed or cancelled: found at
                # the next start-up, it makes that daemon request the run again.
                trigger = str(cause.data.get("trigger") or cause.name)
                await anyio.to_thread.run_sync(
                    write_marker, marker, reporter.run_id, trigger, attempt, lock
                )
                try:
                    outcome = await self._run_locked(target, cause, attempt, reporter)
                except Exception:
                    await anyio.to_thread.run_sync(clear_marker, marker)
                    raise
                await anyio.to_thread.run_sync(clear_marker, marker)
        except LockBusy:
            outcome = RunOutcome(target, "skipped", detail="another run holds the lock")
            await reporter.finish(outcome.status, outcome.detail)
            log.info("backup %s skipped: already running", target)
        self.last[target] = outcome
        return outcome

    async def _run_locked(
        self,
        target: Literal["typesense", "redis"],
        cause: Event,
        attempt: int,
        reporter: ProgressReporter,
    ) -> RunOutcome:
        started = time.monotonic()
        with self.telemetry.decision_span(
            "selfheal.backup.run",
            {"target": target, "attempt": attempt, "trigger": cause.name},
            context=context_from_traceparent(cause.traceparent),
        ) as span:
            made = await self.bus.client.get(run_artifact_key(self.bus, reporter.run_id))
            if made is not None:
                # This run's request came again (a redelivery, or the re-request of a run
                # the daemon was killed in): one request, one backup.
                known = await self._made_before(target, as_text(made), reporter)
                if known is not None:
                    span.set_attribute("selfheal.status", known.status)
                    return known
            try:
                await reporter.stage("snapshot")
                artifact = await self.source(target).create(run_id=reporter.run_id)
                await self.bus.client.set(
                    run_artifact_key(self.bus, reporter.run_id), artifact.name, ex=RUN_MEMORY_S
                )
                await UnverifiedSnapshots(self.bus, target).remember(artifact)
                await reporter.stage("ship", total=artifact.size)
                result = await self.transfer(target).ship(artifact, progress=reporter.bytes)
            except (SourceError, TransportError) as exc:
                span.set_attribute("selfheal.status", "failed")
                return await self._failed(target, cause, attempt, exc, reporter)
            if result.status == "spooled":
                span.set_attribute("selfheal.status", "spooled")
                return await self._spooled(target, cause, attempt, artifact, result.why(), reporter)
            assert result.delivery is not None
            span.set_attributes(
                {
                    "selfheal.status": "delivered",
                    "selfheal.transport_mode": result.delivery.mode,
                    "selfheal.bytes": result.delivery.bytes,
                    "selfheal.transfer_attempts": result.attempts,
                    "selfheal.rate_bps": int(reporter.live.rate()),
                    "selfheal.artifact": artifact.name,
                }
            )
            await self._after_delivery(target, artifact, result.delivery)
            artifact.path.unlink(missing_ok=True)
            artifact.manifest_path.unlink(missing_ok=True)
            log.info(
                "backup %s delivered: %s via %s (%d bytes, %d transfer attempts)",
                target,
                result.delivery.remote_path,
                result.delivery.mode,
                result.delivery.bytes,
                result.attempts,
            )
            await self._publish(
                BACKUP_COMPLETED,
                {
                    "target": target,
                    "runId": reporter.run_id,
                    "artifact": artifact.name,
                    "remotePath": result.delivery.remote_path,
                    "bytes": result.delivery.bytes,
                    "sha256": artifact.sha256,
                    "durationMs": int((time.monotonic() - started) * 1000),
                    "transportMode": result.delivery.mode,
                    "attempts": result.attempts,
                    "attempt": attempt,
                },
                cause,
            )
            await reporter.finish("delivered", result.delivery.remote_path)
            return RunOutcome(
                target,
                "delivered",
                artifact=artifact.name,
                bytes=result.delivery.bytes,
                seconds=round(time.monotonic() - started, 3),
                at=time.time(),
            )

    async def gave_up(self, target: str, cause: Event, reason: str) -> None:
        """A request of `target` was dead-lettered (the daemon died handling it every
        time, or it was malformed): a failed backup, so the router retries it within the
        budget and escalates after, never a backup that silently did not happen."""
        run_id = str(cause.data.get("runId") or cause.id)
        attempt = cause.data.get("attempt")
        message = f"backup {target} request {run_id} was set aside: {reason}"
        log.error("%s", message)
        await self._publish(
            BACKUP_FAILED,
            {
                "target": target,
                "runId": run_id,
                "attempt": attempt if isinstance(attempt, int) else 0,
                "error": message,
                "evidence": [{"kind": "dead_letter", "message": message}],
                "trigger": "dead-letter",
            },
            cause,
        )
        await ProgressReporter(self.bus, run_id=run_id).finish("failed", message)

    async def _made_before(
        self, target: Literal["typesense", "redis"], name: str, reporter: ProgressReporter
    ) -> RunOutcome | None:
        """The outcome of a run that already made `name`; None to make a new one.

        Its local copy goes only after a verified delivery: still here (staging or the
        spool), the drainer delivers it; gone, it is on the NAS, which is checked when
        a transport answers. Neither here nor there (the NAS lost it): run again.
        """
        waiting = {e.name for e in await self.spool().entries()}
        status: Literal["delivered", "spooled"]
        if name in waiting or (self.staging_dir() / name).exists():
            detail = f"{name}, made by this run before the daemon stopped, waits in the spool"
            status = "spooled"
        elif await self._on_nas(target, name) is False:
            log.warning(
                "backup %s: %s, made by run %s, is neither here nor on the NAS; running again",
                target,
                name,
                reporter.run_id,
            )
            return None
        else:
            detail = f"{name}, made by this run, was delivered before the daemon stopped"
            status = "delivered"
        log.info("backup %s run %s: %s", target, reporter.run_id, detail)
        await reporter.finish(status, detail)
        return RunOutcome(target, status, artifact=name, detail=detail, at=time.time())

    async def reachable_transport(self, target: Literal["typesense", "redis"]) -> Transport | None:
        """The first of the target's transports whose probe passes, in preference order."""
        for transport in self.transports(target):
            if (await transport.probe()).ok:
                return transport
        return None

    async def _on_nas(self, target: Literal["typesense", "redis"], name: str) -> bool | None:
        """Whether `name`'s manifest is on the NAS; None when no transport answers."""
        transport = await self.reachable_transport(target)
        if transport is None:
            return None
        path = PurePosixPath(target) / manifest_name(name)
        return (await transport.read_many([path])).get(path) is not None

    async def _after_delivery(
        self, target: Literal["typesense", "redis"], artifact: Artifact, delivery: Delivery
    ) -> None:
        """Retention on the NAS, source snapshot pruning (the manifest came with the copy)."""
        transport = next(t for t in self.transports(target) if t.mode == delivery.mode)
        await UnverifiedSnapshots(self.bus, target).forget(artifact)
        await self.apply_retention(target, transport)
        if target == "typesense":
            source = self.source("typesense")
            assert isinstance(source, TypesenseSource)
            await source.prune_snapshots(await UnverifiedSnapshots(self.bus, target).paths())

    async def apply_retention(
        self, target: Literal["typesense", "redis"], transport: Transport, *, dry_run: bool = False
    ) -> dict[str, Any]:
        """Plan retention over our own files in the target folder, and apply it."""
        retention = getattr(self._settings().backups, target).retention
        return await apply_retention(transport, target, retention, dry_run=dry_run)

    async def _failed(
        self,
        target: str,
        cause: Event,
        attempt: int,
        exc: SourceError | TransportError,
        reporter: ProgressReporter,
    ) -> RunOutcome:
        message = redact_text(exc.explained() if isinstance(exc, TransportError) else str(exc))
        log.error("backup %s failed: %s", target, message)
        await self._publish(
            BACKUP_FAILED,
            {
                "target": target,
                "runId": reporter.run_id,
                "attempt": attempt,
                "error": message,
                "evidence": [exc.evidence],
                "transportMode": getattr(exc, "mode", None),
                "trigger": cause.name,
            },
            cause,
        )
        await reporter.finish("failed", message)
        return RunOutcome(target, "failed", detail=message, at=time.time())

    async def _spooled(
        self,
        target: str,
        cause: Event,
        attempt: int,
        artifact: Artifact,
        detail: str,
        reporter: ProgressReporter,
    ) -> RunOutcome:
        log.warning("backup %s spooled (%s): %s", target, artifact.name, detail)
        await self._report_spooled(target, cause, attempt, artifact.name, detail, reporter.run_id)
        await reporter.finish("spooled", f"{artifact.name} waits in the spool: {detail}")
        return RunOutcome(target, "spooled", artifact=artifact.name, detail=detail, at=time.time())

    async def _report_spooled(
        self, target: str, cause: Event, attempt: int, name: str, detail: str, run_id: str
    ) -> None:
        """`backup.failed` for an artifact waiting in the spool: the incident stays open."""
        await self._publish(
            BACKUP_FAILED,
            {
                "target": target,
                "runId": run_id,
                "attempt": attempt,
                "error": f"NAS unreachable; {name} spooled: {redact_text(detail)}",
                # The NAS is away, not broken (transient infrastructure): the router
                # holds and re-checks it with the backup probe instead of re-running.
                "evidence": [
                    {
                        "kind": "transport.unavailable",
                        "errno": "ENOTCONN",
                        "message": redact_text(detail),
                    }
                ],
                "spooled": name,
                "trigger": cause.name,
            },
            cause,
        )

    # -- start-up recovery -----------------------------------------------------------------

    async def recover(self) -> list[SpoolEntry]:
        """After a crash: request interrupted runs again, move artifacts made but never
        delivered from staging into the spool (returned: the drainer delivers them), and
        delete what interrupted runs left half-made. Local work only; run at start-up
        before any run begins."""
        for target in TARGETS:
            marker = marker_path(self._settings().state_dir, target)
            record = await anyio.to_thread.run_sync(read_marker, marker)
            if record is not None:
                await self._rerequest(target, record)
                # Only once the request is on the bus: a failure here retries at next start.
                await anyio.to_thread.run_sync(clear_marker, marker)
        await self.spool().recover_incoming(self.staging_dir())
        scan = await anyio.to_thread.run_sync(scan_staging, self.staging_dir())
        spooled: list[SpoolEntry] = []
        for artifact in scan.complete:
            run_id = artifact.manifest.get("runId")
            if isinstance(run_id, str) and run_id:
                # Killed before its run recorded it: recorded now, before that run's
                # request (re-requested above) is handled, so it makes no second one.
                key = run_artifact_key(self.bus, run_id)
                await self.bus.client.set(key, artifact.name, ex=RUN_MEMORY_S, nx=True)
            try:
                entry = await self.spool().add(artifact)
            except (OSError, ValueError) as exc:
                # Left in staging, found again at the next start; the daemon still starts.
                log.error(
                    "backup %s: cannot spool staged %s: %s", artifact.target, artifact.name, exc
                )
                continue
            log.warning(
                "backup %s: %s was made but not delivered before the daemon stopped; "
                "it waits in the spool (entry %s)",
                artifact.target,
                artifact.name,
                entry.id,
            )
            spooled.append(entry)
        freed = await anyio.to_thread.run_sync(delete_unfinished, scan.unfinished)
        if scan.unfinished:
            log.warning(
                "deleted %d unfinished files (%d bytes) of interrupted runs from %s",
                len(scan.unfinished),
                freed,
                self.staging_dir(),
            )
        return spooled

    async def _rerequest(self, target: str, record: dict[str, Any]) -> None:
        run_id = str(record.get("runId") or "unknown")
        key, token = record.get("lockKey"), record.get("lockToken")
        if isinstance(key, str) and isinstance(token, str):
            # Only if that dead run still holds it; a live run elsewhere has its own token.
            await RedisLock(self.bus.client, key, token=token).release()
        if not getattr(self._settings().backups, target).enabled:
            log.warning("backup %s run %s was interrupted; not retried: disabled", target, run_id)
            return
        log.warning(
            "backup %s run %s (started %s by pid %s) was interrupted; requesting it again",
            target,
            run_id,
            record.get("startedAt", "?"),
            record.get("pid", "?"),
        )
        event = new_event(
            BACKUP_REQUESTED,
            # The same run again: if it made its artifact already, that one is delivered.
            {"target": target, "trigger": "interrupted", "runId": run_id},
            now_ms=now_ms(),
            idempotency_key=f"{target}@interrupted:{run_id}",
        )
        await self.bus.publish(event, dedupe=True)

    async def report_stranded(self, entries: list[SpoolEntry]) -> None:
        """Open the incident for recovered artifacts the first drain could not deliver."""
        waiting = {e.id for e in await self.spool().entries()}
        for entry in entries:
            if entry.id not in waiting:
                continue  # delivered (its completion event was sent) or moved aside as corrupt
            cause = new_event(
                BACKUP_REQUESTED, {"target": entry.target, "trigger": "recovery"}, now_ms=now_ms()
            )
            detail = "left in staging by an interrupted run; no transport delivered it at start-up"
            log.warning("backup %s: %s %s", entry.target, entry.name, detail)
            await self._report_spooled(entry.target, cause, 0, entry.name, detail, cause.id)

    async def drain(self) -> int:
        """Deliver spooled artifacts when a transport is back; each closes its incident."""
        delivered = 0
        for target in TARGETS:

            async def done(entry: SpoolEntry, delivery: Delivery, t: str = target) -> None:
                artifact = await self.spool().artifact(entry)
                await self._after_delivery(t, artifact, delivery)  # type: ignore[arg-type]
                synthetic = new_event(BACKUP_COMPLETED, {"target": t}, now_ms=now_ms())
                await self._publish(
                    BACKUP_COMPLETED,
                    {
                        "target": t,
                        "artifact": entry.name,
                        "remotePath": delivery.remote_path,
                        "bytes": delivery.bytes,
                        "transportMode": delivery.mode,
                        "fromSpool": True,
                    },
                    synthetic,
                )
                # The target's last result is this delivery, not the spooling before it.
                self.last[t] = RunOutcome(
                    t,
                    "delivered",
                    artifact=entry.name,
                    detail="from the spool",
                    bytes=delivery.bytes,
                    seconds=round(delivery.seconds, 3),
                    at=time.time(),
                )

            try:
                delivered += await self.transfer(target).drain(done, target=target)
            except TransportError as exc:
                # A host-key, auth, integrity or full-disk failure: waiting for the next
                # drain fixes nothing, so the incident is raised now (the router
                # escalates host-key, auth and full-disk failures at once, and retries
                # a fresh backup after an integrity failure).
                await self._drain_failed(target, exc)
                raise
        return delivered

    async def _drain_failed(self, target: str, exc: TransportError) -> None:
        message = redact_text(str(exc))
        log.error("spool drain for %s met a hard failure: %s", target, message)
        cause = new_event(BACKUP_FAILED, {"target": target}, now_ms=now_ms())
        await self._publish(
            BACKUP_FAILED,
            {
                "target": target,
                "attempt": 0,
                "error": message,
                "evidence": [exc.evidence],
                "transportMode": getattr(exc, "mode", None),
                "trigger": "spool-drain",
            },
            cause,
        )

    async def drill(
        self, target: Literal["typesense", "redis"], transport: Transport, name: str | None
    ) -> DrillResult:
        """Restore an artifact into a throwaway server and compare it with its manifest;
        the result is kept (the last per target), and a failed drill raises the target's
        incident as a failed backup would (its retry takes a fresh backup)."""
        settings = self._settings()
        result = await drill(
            transport,
            target,
            scratch=settings.state_dir / "drill",
            name=name,
            env=os.environ,
        )
        await self.bus.client.hset(drills_key(self.bus), target, stored(result))
        if not result.ok:
            log.error("restore drill of %s failed: %s", result.artifact, result.detail)
            cause = new_event(BACKUP_FAILED, {"target": target}, now_ms=now_ms())
            await self._publish(
                BACKUP_FAILED,
                {
                    "target": target,
                    "attempt": 0,
                    "error": f"restore drill of {result.artifact} failed: {result.detail}",
                    "evidence": [
                        {
                            "kind": "drill",
                            "exception": "IntegrityError",
                            "message": result.detail,
                            "path": result.artifact,
                        }
                    ],
                    "trigger": "drill",
                },
                cause,
            )
        return result

    # -- helpers ---------------------------------------------------------------------------

    async def _publish(self, name: str, data: dict[str, Any], cause: Event) -> None:
        event = new_event(
            name,
            data,
            now_ms=now_ms(),
            idempotency_key=f"{cause.id}/{name}",
            traceparent=current_traceparent() or cause.traceparent,
        )
        await self.bus.publish(event, dedupe=True)
