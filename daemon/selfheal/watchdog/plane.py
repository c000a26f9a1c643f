"""The worker watchdog: finds an unreachable worker and restarts it, guarded.

The investigator probes each configured worker's SDK (or health) URL on its
interval and reads its log files for "Unable to reach SDK URL" and the
configured patterns. After `failureThreshold` failing probes in a row, or a
matching log line, it asks the router once per incident (`worker:<name>`) for
self-healing; it asks again only after the worker has answered since. Daemons
watching the same worker share the failure episode in Redis, so one failure makes
one request whichever of them see it, and a failure a restart has already mended is
not reported late.

The `worker` domain registers with the router: pause re-checks probe the worker, and
a retry is `system/worker.restart.requested`, served here by the guarded restart.
Its guards, in order: a Redis lock per worker (two daemons, one restart); a restart
asked for before the worker was last restarted and answered is not made again
(several daemons report one failure, and the router decides again a report that
comes while the restart runs); the restarts already made in the window
(`maxRestartsPerWindow` in `restartWindowMinutes`: beyond it the incident escalates,
as systemd's start limit stops a flapping unit); the binding check (the loaded job's
program and working directory must be the expected ones: a stale clone is never
restarted, the incident escalates showing the drift); the cooldown kept in Redis; a
worker still inside `startGraceSeconds` of its start is left alone. A restart goes
through the service manager, then the worker is re-registered (PUT to its SDK URL)
and must answer its probe within `verifyTimeoutSeconds`: only then is the incident
remediated. A skipped or failed restart is reported as such and sent back to the
router as the incident's next request (retry within budget, then escalate) — never
as fixed. Nothing here kills a process, and the daemon's own process is never a
worker.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final

import anyio
import httpx
import psutil
from anyio.abc import TaskStatus
from redis.exceptions import RedisError

from selfheal.bus.consumer import IDLE_READ_MS, ConsumerOptions, PoisonEvent, StreamConsumer
from selfheal.bus.lock import RedisLock
from selfheal.bus.streams import Bus, as_text
from selfheal.commands import COMMAND_TIMEOUT_S
from selfheal.config import Settings
from selfheal.config.schema_healing import SDK_UNREACHABLE, WorkerSettings
from selfheal.control.params import Params
from selfheal.control.server import Handler
from selfheal.core.contracts import SelfHealingRequest
from selfheal.core.events import SELF_HEALING_REQUESTED, WORKER_RESTART_REQUESTED, Event, new_event
from selfheal.errors import ControlError
from selfheal.healing.domains import Domain, Domains
from selfheal.healing.router import Router
from selfheal.redact import redact_text
from selfheal.supervisor import Service, ServiceSpec
from selfheal.telemetry import Telemetry, context_from_traceparent
from selfheal.watchdog.inngest import FailedRun, InngestError, failed_runs
from selfheal.watchdog.logtail import LogTail
from selfheal.watchdog.managers import (
    JobInfo,
    ManagerError,
    ServiceManager,
    manager_for,
)

log = logging.getLogger("selfheal.watchdog")

WORKER_DOMAIN: Final = "worker"
RESTART_GROUP: Final = "system/worker.restart"
PROBES_KEPT: Final = 10
# A failure episode shared by the daemons (one request each) ends when the worker
# answers; this bounds one that nobody saw end (every daemon stopped meanwhile).
EPISODE_TTL_S: Final = 24 * 3600
# Past the verify deadline a restart counts as failed; while waiting, probes this often.
VERIFY_EVERY_S: Final = 0.25
NAME_LIMIT: Final = 200
# The router's first retry delay for a worker (plus up to as much jitter).
FIRST_RESTART_DELAY_MS: Final = 200


def worker_incident_id(name: str) -> str:
    """The one incident per worker."""
    return f"worker:{name}"


@dataclass(frozen=True)
class ProbeResult:
    """One probe of a worker."""

    at: float
    ok: bool
    detail: str
    ms: float
    exception: str | None = None

    def public(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "at": self.at,
            "ok": self.ok,
            "detail": self.detail,
            "ms": round(self.ms, 1),
            "exception": self.exception,
        }


async def probe(client: httpx.AsyncClient, worker: WorkerSettings) -> ProbeResult:
    """GET the worker's health (or SDK) URL; healthy is any answer below 400."""
    url = worker.health_url or worker.sdk_url
    started = time.monotonic()
    try:
        with anyio.fail_after(worker.probe_timeout_seconds):
            response = await client.get(url, timeout=worker.probe_timeout_seconds)
    except TimeoutError:
        ms = (time.monotonic() - started) * 1000
        detail = f"no answer within {worker.probe_timeout_seconds:g} s"
        return ProbeResult(time.time(), False, detail, ms, "ReadTimeout")
    except httpx.HTTPError as exc:
        ms = (time.monotonic() - started) * 1000
        detail = redact_text(f"{type(exc).__name__}: {exc}")[:300]
        return ProbeResult(time.time(), False, detail, ms, type(exc).__name__)
    ms = (time.monotonic() - started) * 1000
    ok = response.status_code < 400
    return ProbeResult(time.time(), ok, f"HTTP {response.status_code}", ms)


@dataclass
class RestartRecord:
    """The last restart (or skipped one) of a worker, as status shows it."""

    at: float
    outcome: str  # remediated, failed, skipped, escalated
    detail: str
    action: str | None = None


@dataclass
class WorkerState:
    """What the investigator knows of one worker."""

    name: str
    probes: deque[ProbeResult] = field(default_factory=lambda: deque(maxlen=PROBES_KEPT))
    consecutive_failures: int = 0
    failing_since: float | None = None
    log_matches: deque[str] = field(default_factory=lambda: deque(maxlen=PROBES_KEPT))
    reported: bool = False  # a request went out for the current failure
    failed_runs: list[FailedRun] = field(default_factory=list)  # found by the last scans
    last_restart: RestartRecord | None = None
    tail: LogTail | None = None

    def answered(self) -> None:
        """The worker answered: its failure (and the request for it) is over."""
        self.consecutive_failures = 0
        self.failing_since = None
        self.reported = False


class Outcome:
    """How one restart request ended."""

    REMEDIATED = "remediated"
    FAILED = "failed"
    SKIPPED = "skipped"
    ESCALATED = "escalated"


@dataclass(frozen=True)
class RestartResult:
    """What the guarded restart did, and why."""

    outcome: str
    detail: str
    action: str | None = None
    job: JobInfo | None = None
    wait_ms: int = 0  # a skipped restart: how long until it may happen
    # The evidence's exception name for the router's classification (an escalation's
    # cause: RestartLimitReached, WorkerBindingDrift, ConfigError).
    exception: str | None = None

    def public(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "outcome": self.outcome,
            "detail": self.detail,
            "action": self.action,
            "job": self.job.public() if self.job else None,
        }


class WatchdogPlane:
    """Owns the investigator, the guarded restart and their control methods."""

    def __init__(
        self,
        *,
        settings: Callable[[], Settings],
        bus: Callable[[], Bus],
        router: Callable[[], Router | None],
        telemetry: Telemetry,
        consumer_name: str,
        stopping: Callable[[], bool],
        domains: Domains,
        wait_stopping: Callable[[], Awaitable[None]] | None = None,
        managers: Callable[[WorkerSettings], ServiceManager] = manager_for,
    ) -> None:
        self._settings = settings
        self._bus = bus
        self._router = router
        self.telemetry = telemetry
        self.consumer_name = consumer_name
        self._stopping = stopping
        self._wait_stopping = wait_stopping
        self._managers = managers
        self.states: dict[str, WorkerState] = {}
        self.consumer: StreamConsumer | None = None
        self._http: httpx.AsyncClient | None = None
        self._scanned_at: float | None = None
        self._scan_lock = anyio.Lock()
        self.inngest_error: str | None = None
        domains.register(Domain(WORKER_DOMAIN, WORKER_RESTART_REQUESTED, probe=self._domain_probe))
        domains.serve(WORKER_RESTART_REQUESTED, RESTART_GROUP)

    # -- config ---------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """Whether the config turns the watchdog on."""
        return self._settings().watchdog.enabled

    def worker(self, name: str) -> WorkerSettings:
        """The configured worker called `name`."""
        for worker in self._settings().watchdog.workers:
            if worker.name == name:
                return worker
        known = ", ".join(w.name for w in self._settings().watchdog.workers) or "none"
        raise ControlError("not_found", f"no watchdog worker {name!r} (configured: {known})")

    def state(self, name: str) -> WorkerState:
        """The state kept for a worker (created on first use)."""
        if name not in self.states:
            self.states[name] = WorkerState(name)
        return self.states[name]

    def workers(self) -> list[WorkerSettings]:
        """The configured workers."""
        return list(self._settings().watchdog.workers)

    def http_if_open(self) -> httpx.AsyncClient | None:
        """The probes' client if one was made (to close it)."""
        return self._http

    def http(self) -> httpx.AsyncClient:
        """The probes' HTTP client (one per plane, closed when the investigator stops)."""
        if self._http is None or self._http.is_closed:
            self._http = httpx.AsyncClient(follow_redirects=False)
        return self._http

    # -- services -------------------------------------------------------------------

    def specs(self, depends_on: Callable[[], object]) -> list[ServiceSpec]:
        """The investigator and the restart consumer (idle while the watchdog is off)."""
        watch = lambda: (depends_on(), self._settings().watchdog)  # noqa: E731
        return [
            ServiceSpec(
                name="watchdog",
                factory=self._make_investigator,
                depends_on=watch,
                starts_work=True,
            ),
            ServiceSpec(
                name="worker-restart",
                factory=self._make_restarter,
                depends_on=watch,
                drains=True,
            ),
        ]

    def _make_investigator(self) -> Service:
        return Investigator(self)

    def _make_restarter(self) -> Service:
        consumer = StreamConsumer(
            self._bus(),
            WORKER_RESTART_REQUESTED,
            RESTART_GROUP,
            self.consumer_name,
            self.on_restart_requested,
            # A restart waits for the worker to answer: others must not reclaim it meanwhile.
            options=ConsumerOptions(
                batch=1,
                reclaim_idle_ms=15 * 60_000,
                max_deliveries=3,
                block_ms=IDLE_READ_MS,
                reclaim_every_s=IDLE_READ_MS / 1000,
            ),
            stopping=self._stopping,
            wait_stopping=self._wait_stopping,
        )
        consumer.name = "worker-restart"
        self.consumer = consumer
        return consumer

    # -- investigation --------------------------------------------------------------

    async def investigate(self, name: str, *, scan_now: bool = False) -> dict[str, Any]:
        """Probe the worker, read its logs and (when configured, on its cadence or now)
        Inngest's failed runs; ask for healing when it is failing."""
        worker = self.worker(name)
        state = self.state(name)
        patterns = [SDK_UNREACHABLE, *worker.log_patterns]
        if state.tail is None or state.tail.paths != list(worker.log_files):
            # Files newly watched are followed from their end.
            state.tail = LogTail(list(worker.log_files), patterns)
            state.tail.start()
        state.tail.patterns = patterns  # a reload's new patterns apply from here on
        result = await probe(self.http(), worker)
        state.probes.append(result)
        matches = await anyio.to_thread.run_sync(state.tail.poll)
        await self._scan_inngest(force=scan_now)
        runs, state.failed_runs = state.failed_runs, []
        matches += [f"inngest run {run.run_id}: {run.quote}" for run in runs]
        state.log_matches.extend(matches)
        if result.ok:
            if state.consecutive_failures or state.reported:
                await self._end_episode(worker)
            state.answered()
        else:
            state.consecutive_failures += 1
            state.failing_since = state.failing_since or result.at
        failing = state.consecutive_failures >= worker.failure_threshold or bool(matches)
        requested = False
        if failing and not state.reported and self.enabled:
            episode = await self._episode(worker, state, result)
            if episode is None:
                log.info(
                    "watchdog: %s was restarted and answered after the failure seen here; "
                    "not reported again",
                    worker.name,
                )
                state.answered()
            else:
                key = f"watchdog/{worker.name}/{episode}"
                await self._request_healing(worker, state, matches, key=key)
                state.reported = requested = True
        return {
            "worker": name,
            "probe": result.public(),
            "consecutive_failures": state.consecutive_failures,
            "log_matches": matches,
            "failing": failing,
            "requested": requested,
        }

    async def _scan_inngest(self, *, force: bool) -> None:
        """When due (or `force`), look through Inngest's failed runs and hand each
        match to the worker it names (the only worker, when it names none)."""
        settings = self._settings().watchdog
        if settings.inngest_url is None:
            return
        async with self._scan_lock:
            due = self._scanned_at is None or (
                time.monotonic() - self._scanned_at >= settings.inngest_scan_seconds
            )
            if not (due or force):
                return
            self._scanned_at = time.monotonic()
            workers = settings.workers
            patterns = sorted({SDK_UNREACHABLE, *(p for w in workers for p in w.log_patterns)})
            bus = self._bus()
            lookback = timedelta(minutes=settings.inngest_lookback_minutes)
            ttl_s = int(lookback.total_seconds()) + 3600

            async def seen(key: str) -> bool:
                return bool(await bus.client.exists(bus.keys.worker("inngest", key)))

            async def remember(key: str) -> None:
                await bus.client.set(bus.keys.worker("inngest", key), "1", ex=ttl_s)

            try:
                runs = await failed_runs(
                    self.http(),
                    settings.inngest_url,
                    signing_key=settings.inngest_signing_key,
                    lookback=lookback,
                    patterns=patterns,
                    seen=seen,
                    remember=remember,
                )
            except (InngestError, RedisError, OSError) as exc:
                self.inngest_error = redact_text(str(exc))
                log.warning("watchdog: Inngest scan failed: %s", self.inngest_error)
                return
            self.inngest_error = None
            for run in runs:
                named = [w for w in workers if w.sdk_url in run.quote]
                for worker in named or (workers if len(workers) == 1 else []):
                    self.state(worker.name).failed_runs.append(run)
                if not named and len(workers) != 1:
                    log.warning(
                        "watchdog: failed Inngest run %s names no configured worker: %s",
                        run.run_id,
                        run.quote,
                    )

    async def _episode(
        self, worker: WorkerSettings, state: WorkerState, result: ProbeResult
    ) -> str | None:
        """The failure episode a report belongs to, shared by every daemon watching the
        worker so that one failure makes one request; None when a restart made the worker
        answer after the failure seen here (the report would spend the incident's retry
        budget on a failure already mended).

        The failure seen here is the probe that just failed or, when only log lines
        (read now, written since the previous look) say so, that previous look.
        """
        bus = self._bus()
        client = bus.client
        answered = await client.get(bus.keys.worker(worker.name, "answered"))
        if result.ok:
            earlier = list(state.probes)[-2:-1]
            seen_at = earlier[0].at if earlier else result.at
        else:
            seen_at = result.at
        if answered is not None and float(answered) > seen_at:
            return None
        key = bus.keys.worker(worker.name, "episode")
        began = str(int(time.time() * 1000))
        await client.set(key, began, nx=True, ex=EPISODE_TTL_S)
        current = await client.get(key)
        return began if current is None else as_text(current)

    async def _end_episode(self, worker: WorkerSettings) -> None:
        """The worker answers: its next failure is a new episode."""
        bus = self._bus()
        await bus.client.delete(bus.keys.worker(worker.name, "episode"))

    async def _request_healing(
        self,
        worker: WorkerSettings,
        state: WorkerState,
        matches: list[str],
        *,
        key: str | None = None,
        summary: str | None = None,
        evidence: list[dict[str, Any]] | None = None,
        attempt: int = 0,
        cause: Event | None = None,
        wait_ms: int = 0,
    ) -> None:
        if evidence is None:
            evidence = [
                {
                    "kind": "probe",
                    "message": f"{worker.health_url or worker.sdk_url}: {p.detail}",
                    **({"exception": p.exception} if p.exception else {}),
                }
                for p in list(state.probes)[-worker.failure_threshold :]
                if not p.ok
            ]
            evidence += [{"kind": "log", "snippet": line} for line in matches[-5:]]
            # (a failed Inngest run's line is among them, led by its run id)
        if summary is None:
            summary = (
                f"worker {worker.name} unreachable: {state.consecutive_failures} failing "
                f"probe(s) in a row" + (f", {len(matches)} log line(s) matched" if matches else "")
            )
        request = self._request(worker, summary, evidence, attempt, wait_ms)
        if key is None:
            key = (
                f"{cause.id}/healing"
                if cause is not None
                else f"watchdog/{worker.name}/{int((state.failing_since or time.time()) * 1000)}"
            )
        event = new_event(
            SELF_HEALING_REQUESTED,
            request,
            now_ms=int(time.time() * 1000),
            idempotency_key=key,
            traceparent=cause.traceparent if cause is not None else None,
        )
        await self._bus().publish(event, dedupe=True)
        log.warning("watchdog: %s", summary)

    def _request(
        self,
        worker: WorkerSettings,
        summary: str,
        evidence: list[dict[str, Any]],
        attempt: int,
        wait_ms: int = 0,
    ) -> dict[str, Any]:
        cooldown_ms = int(worker.restart_cooldown_minutes * 60_000)
        return {
            "sourceFunction": "system/watchdog",
            "targetComponent": worker.name,
            "problemSummary": summary[:2000],
            "attempt": attempt,
            # A dead worker is restarted at once, later attempts back off up to the
            # cooldown; a restart skipped for its cooldown or grace waits that out.
            "retryPolicy": {
                "maxRetries": worker.max_restarts_per_window,
                "sleepMinMs": max(FIRST_RESTART_DELAY_MS, wait_ms),
                "sleepMaxMs": max(60_000, cooldown_ms, wait_ms),
                "sleepStepMs": FIRST_RESTART_DELAY_MS,
            },
            "evidence": evidence or [{"kind": "watchdog", "message": summary[:2000]}],
            "playbook": {
                "actions": ["restart", "notify"],
                "runbook": f"selfheal watchdog status; selfheal incidents show "
                f"{worker_incident_id(worker.name)}",
            },
            "incidentId": worker_incident_id(worker.name),
            "domain": WORKER_DOMAIN,
            "routeTo": {"event": WORKER_RESTART_REQUESTED, "data": {"worker": worker.name}},
        }

    async def _domain_probe(self, request: SelfHealingRequest) -> bool:
        """Pause re-check: is the worker answering again?"""
        try:
            worker = self.worker(request.target_component)
        except ControlError:
            return False
        return (await probe(self.http(), worker)).ok

    # -- guarded restart ------------------------------------------------------------

    async def on_restart_requested(self, event: Event) -> None:
        """Serve `system/worker.restart.requested` from the router."""
        name = event.data.get("worker")
        if not isinstance(name, str):
            raise PoisonEvent(f"{event.name}: data.worker must be a string")
        try:
            worker = self.worker(name)
        except ControlError as exc:
            raise PoisonEvent(f"{event.name}: {exc.message}") from None
        attempt = int(event.data.get("attempt", 0) or 0)
        if not self.enabled:
            # Scheduled before the watchdog was turned off: not done, and said so.
            result = RestartResult(
                Outcome.ESCALATED,
                "the watchdog is off (selfheal.watchdog.enabled is false): not restarting",
                exception="ConfigError",
            )
            self._record(worker, result)
            await self._report(worker, result, event, attempt)
            return
        await self.restart(worker, force=False, cause=event, attempt=attempt)

    async def restart(
        self, worker: WorkerSettings, *, force: bool, cause: Event | None = None, attempt: int = 0
    ) -> RestartResult:
        """Restart the worker if every guard allows it, then verify it answers; report
        the outcome to the router (remediated, or the incident's next request)."""
        bus = self._bus()
        keys = bus.keys
        # Held past the longest a restart can take (two manager commands and the wait).
        ttl_ms = int((worker.verify_timeout_seconds + 2 * COMMAND_TIMEOUT_S + 60) * 1000)
        lock = RedisLock(bus.client, keys.worker(worker.name, "lock"), ttl_ms=ttl_ms)
        if not await lock.acquire():
            # Another daemon is restarting it now; that one reports the outcome.
            result = RestartResult(Outcome.SKIPPED, "another daemon is restarting this worker")
            self._record(worker, result)
            return result
        try:
            answered = None if cause is None else await self._answered_since(worker, cause)
            if answered is None:
                with self.telemetry.decision_span(
                    "selfheal.worker.restart",
                    {"worker": worker.name, "force": force, "attempt": attempt},
                    # In the trace of the request that asked for it: one trace per incident.
                    context=context_from_traceparent(cause.traceparent) if cause else None,
                ) as span:
                    result = await self._guarded_restart(worker, force=force)
                    span.set_attribute("selfheal.outcome", result.outcome)
                    span.set_attribute("selfheal.detail", result.detail)
        finally:
            with anyio.CancelScope(shield=True):
                await lock.release()
        if answered is not None:
            # Asked for before the last restart made it answer: that restart was for the
            # same failure (several daemons report one failure, and a report that comes
            # while the restart runs is decided again), and it reported the outcome.
            result = RestartResult(Outcome.SKIPPED, answered)
            self._record(worker, result)
            return result
        self._record(worker, result)
        await self._report(worker, result, cause, attempt)
        return result

    async def _answered_since(self, worker: WorkerSettings, cause: Event) -> str | None:
        """Why the restart `cause` asks for is not needed (None when it is): the worker
        was restarted and answered after `cause` was decided."""
        bus = self._bus()
        raw = await bus.client.get(bus.keys.worker(worker.name, "answered"))
        if raw is None or float(raw) * 1000 <= cause.ts:
            return None
        return "restarted and answering since this restart was asked for: not again"

    async def _guarded_restart(self, worker: WorkerSettings, *, force: bool) -> RestartResult:
        bus = self._bus()
        client, keys = bus.client, bus.keys
        now = time.time()
        window_s = worker.restart_window_minutes * 60
        restarts_key = keys.worker(worker.name, "restarts")
        await client.zremrangebyscore(restarts_key, "-inf", now - window_s)
        made = int(await client.zcard(restarts_key))
        if made >= worker.max_restarts_per_window:
            return RestartResult(
                Outcome.ESCALATED,
                f"restart limit reached: {made} restart(s) in the last "
                f"{worker.restart_window_minutes:g} min (maxRestartsPerWindow "
                f"{worker.max_restarts_per_window})",
                exception="RestartLimitReached",
            )
        manager = self._managers(worker)
        try:
            job = await manager.describe()
        except ManagerError as exc:
            return RestartResult(Outcome.FAILED, f"cannot ask {manager.kind}: {exc}")
        drift = _binding_drift(worker, job)
        if drift:
            return RestartResult(
                Outcome.ESCALATED,
                f"binding drift, not restarting: {drift}",
                job=job,
                exception="WorkerBindingDrift",
            )
        if job.pid is not None and job.pid == os.getpid():
            return RestartResult(
                Outcome.ESCALATED,
                "the job's process is this daemon: never restarted",
                job=job,
                exception="ConfigError",
            )
        cooldown_key = keys.worker(worker.name, "cooldown")
        left_ms = int(await client.pttl(cooldown_key))
        if left_ms > 0 and not force:
            return RestartResult(
                Outcome.SKIPPED,
                f"in cooldown for {left_ms / 1000:.0f} s more",
                job=job,
                wait_ms=left_ms,
            )
        young = _age_s(job.pid)
        if young is not None and young < worker.start_grace_seconds:
            return RestartResult(
                Outcome.SKIPPED,
                f"started {young:.0f} s ago, inside startGraceSeconds "
                f"({worker.start_grace_seconds:g})",
                job=job,
                wait_ms=int((worker.start_grace_seconds - young) * 1000),
            )
        try:
            action = await manager.restart(job)
        except ManagerError as exc:
            return RestartResult(Outcome.FAILED, f"restart failed: {exc}", job=job)
        pipe = client.pipeline(transaction=True)
        pipe.zadd(restarts_key, {f"{time.time():.6f}": time.time()})
        pipe.expire(restarts_key, int(window_s) + 60)
        cooldown_ms = int(worker.restart_cooldown_minutes * 60_000)
        if cooldown_ms > 0:
            pipe.set(cooldown_key, "1", px=cooldown_ms)
        await pipe.execute()
        healthy, detail = await self._verify(worker)
        if healthy:
            # Still under the lock: a restart asked for before now finds it done.
            async with client.pipeline(transaction=True) as done:
                answered_key = keys.worker(worker.name, "answered")
                done.set(answered_key, f"{time.time():.6f}", ex=int(window_s) + 60)
                done.delete(keys.worker(worker.name, "episode"))
                await done.execute()
            return RestartResult(Outcome.REMEDIATED, detail, action, job)
        return RestartResult(Outcome.FAILED, f"restarted, but {detail}", action, job)

    async def _verify(self, worker: WorkerSettings) -> tuple[bool, str]:
        """Re-register with the SDK, then wait for a healthy probe until the deadline."""
        deadline = time.monotonic() + worker.verify_timeout_seconds
        registered = False
        last = "no probe yet"
        while time.monotonic() < deadline:
            if not registered:
                try:
                    response = await self.http().put(
                        worker.sdk_url, timeout=worker.probe_timeout_seconds
                    )
                    registered = response.status_code < 500
                except httpx.HTTPError:
                    pass  # not up yet
            result = await probe(self.http(), worker)
            state = self.state(worker.name)
            state.probes.append(result)
            if result.ok:
                state.answered()
                return True, f"healthy after restart ({result.detail}, {result.ms:.0f} ms)"
            last = result.detail
            await anyio.sleep(min(VERIFY_EVERY_S, max(0.0, deadline - time.monotonic())))
        return False, f"not healthy within {worker.verify_timeout_seconds:g} s ({last})"

    def _record(self, worker: WorkerSettings, result: RestartResult) -> None:
        state = self.state(worker.name)
        state.last_restart = RestartRecord(
            time.time(), result.outcome, result.detail, result.action
        )
        level = logging.INFO if result.outcome == Outcome.REMEDIATED else logging.WARNING
        log.log(level, "worker %s restart %s: %s", worker.name, result.outcome, result.detail)

    async def _report(
        self, worker: WorkerSettings, result: RestartResult, cause: Event | None, attempt: int
    ) -> None:
        state = self.state(worker.name)
        bus = self._bus()
        await bus.client.hset(
            bus.keys.worker(worker.name, "last"),
            mapping={"at": str(time.time()), "outcome": result.outcome, "detail": result.detail},
        )
        incident = worker_incident_id(worker.name)
        if result.outcome == Outcome.REMEDIATED:
            router = self._router()
            if router is not None:
                trigger = cause or new_event(
                    WORKER_RESTART_REQUESTED,
                    {"worker": worker.name, "forced": True},
                    now_ms=int(time.time() * 1000),
                )
                await router.remediate(incident, cause=trigger)
            return
        if cause is None and result.outcome == Outcome.SKIPPED:
            return  # an operator's restart that did not happen: the answer says why
        evidence: list[dict[str, Any]] = [
            {
                "kind": "restart",
                "message": f"restart {result.outcome}: {result.detail}",
                **({"exception": result.exception} if result.exception else {}),
            }
        ]
        await self._request_healing(
            worker,
            state,
            [],
            summary=f"worker {worker.name}: restart {result.outcome}: {result.detail}",
            evidence=evidence,
            attempt=attempt,
            cause=cause,
            wait_ms=result.wait_ms,
        )

    # -- status and control ---------------------------------------------------------

    async def _redis_counts(
        self, workers: Sequence[WorkerSettings]
    ) -> list[tuple[float | None, int | None]]:
        """Each worker's cooldown left (s) and restarts in its window, in one round trip;
        unknown (None) without Redis or while the watchdog is off."""
        unknown: list[tuple[float | None, int | None]] = [(None, None)] * len(workers)
        if not self.enabled or not workers:
            return unknown
        try:
            bus = self._bus()
            now = time.time()
            async with bus.client.pipeline(transaction=False) as pipe:
                for worker in workers:
                    pipe.pttl(bus.keys.worker(worker.name, "cooldown"))
                    since = now - worker.restart_window_minutes * 60
                    pipe.zcount(bus.keys.worker(worker.name, "restarts"), since, "+inf")
                replies = await pipe.execute()
        except (ControlError, RedisError, OSError) as exc:
            # Status answers without Redis: the Redis-kept counts are shown as unknown.
            log.debug("watchdog status without Redis: %s", exc)
            return unknown
        pairs = zip(replies[::2], replies[1::2], strict=True)
        return [(max(0, int(left)) / 1000, int(count)) for left, count in pairs]

    def _worker_view(
        self, worker: WorkerSettings, cooldown_left_s: float | None, in_window: int | None
    ) -> dict[str, Any]:
        """One worker's probes, failures, last restart, cooldown and window count."""
        state = self.state(worker.name)
        last = state.last_restart
        return {
            "name": worker.name,
            "url": worker.health_url or worker.sdk_url,
            "service_manager": worker.service_manager,
            "probes": [p.public() for p in state.probes],
            "consecutive_failures": state.consecutive_failures,
            "failure_threshold": worker.failure_threshold,
            "log_matches": list(state.log_matches),
            "requested": state.reported,
            "last_restart": vars(last) if last else None,
            "cooldown_left_seconds": cooldown_left_s,
            "restarts_in_window": in_window,
            "max_restarts_per_window": worker.max_restarts_per_window,
        }

    async def status(self) -> dict[str, Any]:
        """Every configured worker."""
        configured = self._settings().watchdog.workers
        counts = await self._redis_counts(configured)
        inngest = self._settings().watchdog.inngest_url
        return {
            "enabled": self.enabled,
            "workers": [
                self._worker_view(w, *found) for w, found in zip(configured, counts, strict=True)
            ],
            "inngest": None if inngest is None else {"url": inngest, "error": self.inngest_error},
        }

    def handlers(self) -> dict[str, Handler]:
        """Control-socket methods: watchdog.status, watchdog.restart, watchdog.investigate."""

        async def status(params: dict[str, Any]) -> Any:
            return await self.status()

        async def restart(params: dict[str, Any]) -> Any:
            p = Params(params)
            worker = self.worker(p.text("name", max_length=NAME_LIMIT, meaning="a worker name"))
            force = p.flag("force", default=False)
            return (await self.restart(worker, force=force)).public()

        async def investigate(params: dict[str, Any]) -> Any:
            name = Params(params).text("name", max_length=NAME_LIMIT, meaning="a worker name")
            self.worker(name)
            return await self.investigate(name, scan_now=True)

        return {
            "watchdog.status": status,
            "watchdog.restart": restart,
            "watchdog.investigate": investigate,
        }


def _binding_drift(worker: WorkerSettings, job: JobInfo) -> str:
    """What differs between the loaded job and the expected program and directory."""
    problems = []
    if worker.expected_program is not None and job.program != str(worker.expected_program):
        problems.append(f"program is {job.program!r}, expected {str(worker.expected_program)!r}")
    wanted_dir = worker.expected_working_directory
    if wanted_dir is not None and job.working_directory != str(wanted_dir):
        problems.append(
            f"working directory is {job.working_directory!r}, expected {str(wanted_dir)!r}"
        )
    return "; ".join(problems)


def _age_s(pid: int | None) -> float | None:
    """Seconds since process `pid` started; None when there is none."""
    if pid is None:
        return None
    try:
        return max(0.0, time.time() - psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


class Investigator:
    """Service: investigates every configured worker on its own interval."""

    name = "watchdog"

    def __init__(self, plane: WatchdogPlane) -> None:
        self.plane = plane

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Probe until cancelled (idle while the watchdog is off)."""
        task_status.started()
        if not self.plane.enabled:
            await anyio.sleep_forever()
        try:
            async with anyio.create_task_group() as tg:
                for worker in self.plane.workers():
                    tg.start_soon(self._watch, worker.name)
        finally:
            http = self.plane.http_if_open()
            if http is not None:
                with anyio.CancelScope(shield=True):
                    await http.aclose()

    async def _watch(self, name: str) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.plane.investigate(name)
            except Exception as exc:  # one bad look must not stop the watching
                log.warning("watchdog %s: investigation failed: %s", name, exc)
            interval = self.plane.worker(name).probe_interval_seconds
            await anyio.sleep(max(0.0, interval - (time.monotonic() - started)))
