"""The supervisor: owns every service task, the lifecycle, signals and reload fan-out.

Services start in order (each must signal readiness before the next starts) and
stop in reverse order. A service that crashes is restarted with backoff and shows
as such in `status`; only a `StartupError` on first start stops the daemon. Signal
handlers only record; this loop acts: HUP reloads, TERM/INT drain, a second INT
forces.
"""

from __future__ import annotations

import enum
import logging
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup, TaskStatus

from selfheal.errors import StartupError
from selfheal.redact import redact_text
from selfheal.taskgroups import first_error

log = logging.getLogger("selfheal.supervisor")

RESTART_BACKOFF_MIN_S = 0.5
RESTART_BACKOFF_MAX_S = 30.0
# A service that stayed up this long before crashing restarts at the minimum backoff.
HEALTHY_RUN_S = 60.0
# How long a reload waits for a restarted service to signal readiness again.
RELOAD_RESTART_WAIT_S = 15.0

EXIT_OK = 0
EXIT_STARTUP_FAILED = 1
EXIT_FORCED = 130


class LifecycleState(enum.Enum):
    """Where the daemon is in its life; transitions are checked."""

    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


_TRANSITIONS: dict[LifecycleState, frozenset[LifecycleState]] = {
    LifecycleState.CREATED: frozenset({LifecycleState.STARTING}),
    LifecycleState.STARTING: frozenset({LifecycleState.RUNNING, LifecycleState.STOPPING}),
    LifecycleState.RUNNING: frozenset({LifecycleState.STOPPING}),
    LifecycleState.STOPPING: frozenset({LifecycleState.STOPPED}),
    LifecycleState.STOPPED: frozenset(),
}


class Service(Protocol):
    """A long-lived loop; calls task_status.started() once it is ready."""

    name: str

    async def run(self, *, task_status: TaskStatus[None] = ...) -> None: ...


@dataclass(frozen=True)
class ServiceSpec:
    """How to build a service, and which part of the settings it depends on."""

    name: str
    factory: Callable[[], Service]
    # When this value changes on reload the service is rebuilt and restarted.
    depends_on: Callable[[], object] = lambda: None
    # Draining services are given until the drain deadline to finish by themselves.
    drains: bool = False
    # Services that start work (schedulers, timers, the watchdog's probes, the spool
    # drainer) stop first, before the drain: after a stop request nothing new begins.
    starts_work: bool = False


@dataclass
class ServiceRecord:
    """The supervisor's bookkeeping for one service."""

    spec: ServiceSpec
    state: str = "pending"
    restarts: int = 0
    reloads: int = 0
    last_error: str | None = None
    since: float = field(default_factory=time.time)
    instance: Service | None = None
    generation: int = 0
    dependency: object = None
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    instance_scope: anyio.CancelScope | None = None
    restart_requested: bool = False
    done: anyio.Event = field(default_factory=anyio.Event)
    # Set each time an instance signals readiness; replaced before a reload restart.
    ready: anyio.Event = field(default_factory=anyio.Event)
    started: bool = False

    def public(self) -> dict[str, Any]:
        """The record as `status` shows it."""
        return {
            "name": self.spec.name,
            "state": self.state,
            "restarts": self.restarts,
            "reload_restarts": self.reloads,
            "last_error": self.last_error,
            "since": self.since,
        }


class Supervisor:
    """Runs services under one task group with a checked lifecycle."""

    def __init__(
        self,
        specs: list[ServiceSpec],
        *,
        drain_timeout: Callable[[], float],
        on_reload_request: Callable[[str], Coroutine[Any, Any, object]] | None = None,
        outages: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.records = [ServiceRecord(spec=spec) for spec in specs]
        # Errors that mean something outside went away (Redis): a service ended by one is
        # restarted like any other, but logged as a warning line, not an error with a
        # traceback (an outage ends every service that uses it; its cause is logged once
        # by what watches it).
        self._outages = outages
        self.state = LifecycleState.CREATED
        self.started_at = time.time()
        self.ready_at: float | None = None
        self.fatal_error: BaseException | None = None
        self.forced = False
        self.stop_reason: str | None = None
        self._drain_timeout = drain_timeout
        self._on_reload_request = on_reload_request
        self._stop_requested = anyio.Event()
        self._startup_scope = anyio.CancelScope()
        self._tg: TaskGroup | None = None

    # -- lifecycle ---------------------------------------------------------------

    def _transition(self, new: LifecycleState) -> None:
        if new not in _TRANSITIONS[self.state]:
            raise RuntimeError(f"illegal lifecycle transition {self.state.value} -> {new.value}")
        log.debug("lifecycle %s -> %s", self.state.value, new.value)
        self.state = new

    @property
    def stopping(self) -> bool:
        """True once a stop was requested: services stop taking new work."""
        return self._stop_requested.is_set()

    async def wait_stopping(self) -> None:
        """Return when a stop has been requested."""
        await self._stop_requested.wait()

    def request_stop(self, reason: str) -> None:
        """Ask for a graceful stop (drain, then cancel after the deadline)."""
        if not self._stop_requested.is_set():
            log.info("stopping: %s", reason)
            self.stop_reason = reason
            self._stop_requested.set()

    def force_stop(self) -> None:
        """Skip the drain: cancel every service now (cleanup still runs)."""
        self.forced = True
        self.request_stop("forced")
        for rec in self.records:
            rec.scope.cancel()

    async def run(self) -> int:
        """Run until stopped; returns the process exit code."""
        self._transition(LifecycleState.STARTING)
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._handle_signals, name="supervisor:signals")
            tg.start_soon(self._startup, name="supervisor:startup")
            await self._stop_requested.wait()
            self._transition(LifecycleState.STOPPING)
            await self._shutdown()
            tg.cancel_scope.cancel()
        self._transition(LifecycleState.STOPPED)
        if self.fatal_error is not None:
            return EXIT_STARTUP_FAILED
        return EXIT_FORCED if self.forced else EXIT_OK

    async def _startup(self) -> None:
        assert self._tg is not None
        with self._startup_scope:
            for rec in self.records:
                try:
                    await self._tg.start(self._run_service, rec, name=f"service:{rec.spec.name}")
                except StartupError as exc:
                    self.fatal_error = exc
                    log.error("cannot start %s: %s", rec.spec.name, exc)
                    self.request_stop(f"{rec.spec.name} failed to start")
                    return
            self._transition(LifecycleState.RUNNING)
            self.ready_at = time.time()
            log.info(
                "ready: %d services running (%s)",
                len(self.records),
                ", ".join(r.spec.name for r in self.records),
            )

    async def _shutdown(self) -> None:
        self._startup_scope.cancel()
        for rec in self.records:
            if rec.spec.starts_work:
                rec.scope.cancel()
                if rec.started or rec.instance is not None:
                    await rec.done.wait()
        if not self.forced:
            # Draining services finish their current work together, within one deadline.
            with anyio.move_on_after(self._drain_timeout()):
                for rec in self.records:
                    if rec.spec.drains and (rec.started or rec.instance is not None):
                        await rec.done.wait()
        for rec in reversed(self.records):
            rec.scope.cancel()
            # Runners that never started have nothing to wait for.
            if rec.started or rec.instance is not None:
                await rec.done.wait()

    async def _handle_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    if self._on_reload_request is not None and self._tg is not None:
                        self._tg.start_soon(self._on_reload_request, "signal", name="reload")
                elif not self.stopping:
                    self.request_stop(f"received {signal.Signals(signum).name}")
                elif signum == signal.SIGINT:
                    log.warning("second SIGINT: forcing shutdown")
                    self.force_stop()

    # -- services ----------------------------------------------------------------

    async def _run_service(self, rec: ServiceRecord, *, task_status: TaskStatus[None]) -> None:
        backoff = RESTART_BACKOFF_MIN_S
        try:
            with rec.scope:
                while True:
                    began = time.monotonic()
                    try:
                        await self._run_instance(rec, task_status)
                    except StartupError as exc:
                        if not rec.started:
                            rec.state = "failed"
                            rec.last_error = redact_text(str(exc))
                            raise
                        self._record_crash(rec, exc)
                    except Exception as exc:  # a crashed service must not take the daemon down
                        self._record_crash(rec, exc)
                    else:
                        if rec.restart_requested:
                            rec.restart_requested = False
                            continue
                        if self.stopping:
                            return
                        self._record_crash(rec, None)
                    if time.monotonic() - began > HEALTHY_RUN_S:
                        backoff = RESTART_BACKOFF_MIN_S
                    rec.state = "restarting"
                    await anyio.sleep(backoff)
                    backoff = min(backoff * 2, RESTART_BACKOFF_MAX_S)
        finally:
            rec.state = "stopped" if rec.state != "failed" else "failed"
            rec.done.set()

    async def _run_instance(self, rec: ServiceRecord, task_status: TaskStatus[None]) -> None:
        rec.restart_requested = False
        rec.dependency = rec.spec.depends_on()
        rec.instance = rec.spec.factory()
        rec.state = "starting"
        with anyio.CancelScope() as instance_scope:
            rec.instance_scope = instance_scope
            try:
                async with anyio.create_task_group() as tg:
                    await tg.start(_call_run, rec.instance, name=rec.spec.name)
                    rec.state = "running"
                    rec.since = time.time()
                    rec.generation += 1
                    rec.ready.set()
                    if not rec.started:
                        rec.started = True
                        task_status.started()
            except BaseExceptionGroup as group:
                raise first_error(group) from None

    def _record_crash(self, rec: ServiceRecord, exc: BaseException | None) -> None:
        rec.restarts += 1
        rec.since = time.time()
        if exc is None:
            rec.last_error = "service returned unexpectedly"
            log.error("service %s returned unexpectedly; restarting", rec.spec.name)
            return
        rec.last_error = redact_text(f"{type(exc).__name__}: {exc}")
        if isinstance(exc, self._outages):
            log.warning(
                "service %s ended by an outage: %s; restarting", rec.spec.name, rec.last_error
            )
        else:
            log.error(
                "service %s crashed: %s; restarting", rec.spec.name, rec.last_error, exc_info=exc
            )

    async def restart_changed(self) -> list[str]:
        """Restart (in order) every service whose dependency value changed."""
        restarted: list[str] = []
        for rec in self.records:
            if rec.instance is None or rec.spec.depends_on() == rec.dependency:
                continue
            restarted.append(rec.spec.name)
            rec.ready = anyio.Event()
            rec.restart_requested = True
            rec.reloads += 1
            if rec.instance_scope is not None:
                rec.instance_scope.cancel()
            with anyio.move_on_after(RELOAD_RESTART_WAIT_S) as waited:
                await rec.ready.wait()
            if waited.cancelled_caught:
                log.warning(
                    "%s not ready %ss after its reload restart",
                    rec.spec.name,
                    RELOAD_RESTART_WAIT_S,
                )
        return restarted

    def status(self) -> dict[str, Any]:
        """Lifecycle and per-service state."""
        return {
            "state": self.state.value,
            "ready_at": self.ready_at,
            "stop_reason": self.stop_reason,
            "services": [rec.public() for rec in self.records],
        }

    def instance(self, name: str) -> Service | None:
        """The running instance of a service, by name."""
        for rec in self.records:
            if rec.spec.name == name:
                return rec.instance
        return None


async def _call_run(service: Service, *, task_status: TaskStatus[None]) -> None:
    await service.run(task_status=task_status)
