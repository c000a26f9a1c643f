"""`selfheal run`: wires config, telemetry, Redis and the control socket under the supervisor."""

from __future__ import annotations

import gc
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import anyio

from selfheal import __version__
from selfheal.backup.plane import BackupPlane
from selfheal.backup.scheduler import upcoming
from selfheal.bus.connection import (
    REDIS_UNREACHABLE,
    ClusterSeeds,
    RedisClient,
    RedisLink,
)
from selfheal.bus.consumer import local_consumer_name
from selfheal.config import LoadedConfig, Settings, load_config
from selfheal.config.locate import socket_record
from selfheal.config.template import write_atomic
from selfheal.config.watcher import ConfigWatcher
from selfheal.control.params import Params
from selfheal.control.server import MAX_CONNECTIONS, ControlServer, Handler
from selfheal.embedded import EmbeddedRedis
from selfheal.errors import ConfigError, ControlError
from selfheal.healing.plane import HealingPlane
from selfheal.instance import StateDirGuard, raise_fd_limit
from selfheal.redact import redact_text
from selfheal.supervisor import Service, ServiceSpec, Supervisor
from selfheal.telemetry import Telemetry, setup_telemetry
from selfheal.watchdog.plane import WatchdogPlane

log = logging.getLogger("selfheal.daemon")


@dataclass
class ReloadResult:
    """The outcome of the last reload attempt, as `status` shows it."""

    at: float
    trigger: str
    ok: bool
    changed: bool = False
    error: str | None = None
    restarted: list[str] = field(default_factory=list)
    restart_required: list[str] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "at": self.at,
            "trigger": self.trigger,
            "ok": self.ok,
            "changed": self.changed,
            "error": self.error,
            "restarted": self.restarted,
            "restart_required": self.restart_required,
        }


def _telemetry_for(settings: Settings, env: Mapping[str, str]) -> Telemetry:
    tel = settings.telemetry
    span_file = tel.span_file or settings.state_dir / "telemetry" / "spans.jsonl"
    return setup_telemetry(
        service_name=tel.service_name,
        service_version=__version__,
        span_file=span_file,
        max_bytes=tel.span_file_max_bytes,
        backups=tel.span_file_backups,
        env=env,
    )


# Settings read once at start-up: a change is accepted but reported as needing a restart.
_RESTART_ONLY: dict[str, Any] = {
    "selfheal.telemetry": lambda s: s.telemetry,
}


class Daemon:
    """One daemon instance: its config, its services, its control methods."""

    def __init__(self, loaded: LoadedConfig, env: Mapping[str, str] | None = None) -> None:
        self.env = dict(os.environ) if env is None else dict(env)
        self.loaded = loaded
        self.generation = 1
        self.last_reload: ReloadResult | None = None
        self.telemetry = _telemetry_for(loaded.settings, self.env)
        self._next_runs_cache = _NextRuns()
        self.embedded: EmbeddedRedis | None = None
        # The cluster nodes the Redis link has found: its next start does not depend
        # on the URL's node alone.
        self._cluster_seeds = ClusterSeeds()
        self._reload_lock: anyio.Lock | None = None
        self._supervisor: Supervisor | None = None
        self.plane = HealingPlane(
            settings=lambda: self.settings,
            client=self._redis_client,
            telemetry=self.telemetry,
            consumer_name=local_consumer_name(),
            stopping=lambda: self.supervisor.stopping,
            wait_stopping=lambda: self.supervisor.wait_stopping(),
        )
        # Each plane that heals a domain registers it with the router's registry.
        self.backups = BackupPlane(
            settings=lambda: self.settings,
            bus=self.plane.bus,
            telemetry=self.telemetry,
            consumer_name=local_consumer_name(),
            stopping=lambda: self.supervisor.stopping,
            wait_stopping=lambda: self.supervisor.wait_stopping(),
            domains=self.plane.domains,
        )
        self.watchdog = WatchdogPlane(
            settings=lambda: self.settings,
            bus=self.plane.bus,
            router=lambda: self.plane.router,
            telemetry=self.telemetry,
            consumer_name=local_consumer_name(),
            stopping=lambda: self.supervisor.stopping,
            wait_stopping=lambda: self.supervisor.wait_stopping(),
            domains=self.plane.domains,
        )

    @property
    def supervisor(self) -> Supervisor:
        """The supervisor; it exists once `run` has started (it needs the event loop)."""
        if self._supervisor is None:
            raise RuntimeError("the daemon is not running")
        return self._supervisor

    @property
    def settings(self) -> Settings:
        """The settings in force (the last good config)."""
        return self.loaded.settings

    # -- services ----------------------------------------------------------------

    def _service_specs(self) -> list[ServiceSpec]:
        # Order matters: the instance lock first, so a second daemon on this state dir
        # stops before it touches anything; the control socket next so `status`
        # answers while Redis is still coming up; the embedded server before the link
        # that uses it.
        return [
            ServiceSpec(
                name="state-guard",
                factory=lambda: StateDirGuard(self.settings.state_dir),
                depends_on=lambda: self.settings.state_dir,
            ),
            ServiceSpec(
                name="control",
                factory=self._make_control,
                depends_on=lambda: self.settings.control_socket,
            ),
            ServiceSpec(
                name="config-watcher",
                factory=lambda: ConfigWatcher(self.loaded.path, self.reload),
            ),
            ServiceSpec(
                name="embedded-redis",
                factory=self._make_embedded,
                depends_on=lambda: (self.settings.redis.url == "embedded", self.settings.state_dir),
            ),
            ServiceSpec(
                name="redis",
                factory=self._make_redis_link,
                depends_on=self._redis_dependency,
            ),
            # The bus services are rebuilt whenever the link they ride on is.
            *self.plane.specs(depends_on=self._redis_dependency),
            *self.backups.specs(depends_on=self._redis_dependency),
            *self.watchdog.specs(depends_on=self._redis_dependency),
        ]

    def _redis_dependency(self) -> object:
        return (self.settings.redis, self.settings.bus, self.settings.state_dir)

    def _next_runs(self) -> dict[str, float]:
        return self._next_runs_cache(self.settings)

    def _redis_client(self) -> RedisClient:
        link = self.redis_link
        if link is None or not link.running:
            # Not started yet, or restarting (Redis was lost, or a Sentinel failover).
            raise ControlError("unavailable", "Redis is not connected yet")
        return link.client

    def _make_control(self) -> Service:
        self._record_socket()
        return ControlServer(self.settings.control_socket, self.handlers())

    def _record_socket(self) -> None:
        """Leave the socket path where a CLI finds it while the config file is unreadable."""
        record = socket_record(self.loaded.path, self.env)
        try:
            write_atomic(record, f"{self.settings.control_socket}\n")
        except OSError as exc:
            log.warning("cannot record the control socket in %s: %s", record, exc)

    def _make_embedded(self) -> Service:
        if self.settings.redis.url != "embedded":
            self.embedded = None
            return _Idle("embedded-redis")
        self.embedded = EmbeddedRedis(self.settings.state_dir)
        return self.embedded

    def _make_redis_link(self) -> Service:
        socket_path = self.embedded.socket_path if self.embedded is not None else None
        return RedisLink(self.settings.redis, socket_path, self._cluster_seeds)

    @property
    def redis_link(self) -> RedisLink | None:
        """The running Redis link service, if started."""
        link = self.supervisor.instance("redis")
        return link if isinstance(link, RedisLink) else None

    # -- run -----------------------------------------------------------------------

    async def run(self) -> int:
        """Run until stopped; returns the exit code."""
        log.info(
            "selfheal %s starting (pid %d, config %s%s)",
            __version__,
            os.getpid(),
            self.loaded.path,
            "" if self.loaded.exists else ", not found: using defaults",
        )
        limit = raise_fd_limit()
        if limit < 4 * MAX_CONNECTIONS:
            log.warning(
                "the open-file limit is %d; a flood of control connections could use up "
                "the descriptors other work needs (raise it to %d or more)",
                limit,
                4 * MAX_CONNECTIONS,
            )
        self._reload_lock = anyio.Lock()
        self._supervisor = Supervisor(
            self._service_specs(),
            drain_timeout=lambda: self.settings.drain_timeout_seconds,
            on_reload_request=self.reload,
            outages=REDIS_UNREACHABLE,
        )
        settle_heap()
        try:
            code = await self.supervisor.run()
        finally:
            self.telemetry.shutdown()
        if self.supervisor.fatal_error is not None:
            log.error("selfheal could not start: %s", self.supervisor.fatal_error)
        else:
            log.info("selfheal stopped (%s)", self.supervisor.stop_reason)
        return code

    # -- reload ----------------------------------------------------------------------

    async def reload(self, trigger: str) -> ReloadResult:
        """Load and validate the whole file, then apply it; a bad file changes nothing."""
        assert self._reload_lock is not None
        async with self._reload_lock:
            with self.telemetry.decision_span(
                "selfheal.config.reload", {"trigger": trigger, "config_path": str(self.loaded.path)}
            ) as span:
                result = await self._reload_locked(trigger)
                span.set_attribute("selfheal.ok", result.ok)
                span.set_attribute("selfheal.changed", result.changed)
                if result.error:
                    span.set_attribute("selfheal.error", result.error)
            # The watcher also reloads on events that turn out to change nothing (a
            # save's temp file, a second event of one rename): those are not news.
            if not (trigger == "watch" and result.ok and not result.changed):
                self.last_reload = result
            return result

    async def _reload_locked(self, trigger: str) -> ReloadResult:
        path = self.loaded.path
        try:
            new = await anyio.to_thread.run_sync(lambda: load_config(path, self.env))
        except ConfigError as exc:
            message = redact_text(str(exc))
            log.error(
                "config reload (%s) rejected, keeping the last good config: %s", trigger, message
            )
            return ReloadResult(at=time.time(), trigger=trigger, ok=False, error=message)
        if self.loaded.exists and not new.exists:
            # An rm (or a save that has not landed yet) must not turn every setting
            # into its default: NAS roots, schedules and notifiers would change silently.
            message = f"{path}: the config file is missing; keeping the last good config"
            log.error("config reload (%s) rejected: %s", trigger, message)
            return ReloadResult(at=time.time(), trigger=trigger, ok=False, error=message)
        if new.digest == self.loaded.digest:
            return ReloadResult(at=time.time(), trigger=trigger, ok=True, changed=False)
        old = self.loaded
        self.loaded = new
        self.generation += 1
        restart_required = [
            key for key, part in _RESTART_ONLY.items() if part(old.settings) != part(new.settings)
        ]
        restarted = await self.supervisor.restart_changed()
        log.info(
            "config reloaded (%s): generation %d, restarted %s",
            trigger,
            self.generation,
            restarted or "nothing",
        )
        return ReloadResult(
            at=time.time(),
            trigger=trigger,
            ok=True,
            changed=True,
            restarted=restarted,
            restart_required=restart_required,
        )

    # -- control methods ---------------------------------------------------------------

    def handlers(self) -> dict[str, Handler]:
        """Control-socket methods this daemon answers."""
        return {
            "ping": self._ping,
            "status": self._status,
            "config.show": self._config_show,
            "config.reload": self._config_reload,
            **self.plane.handlers(),
            **self.backups.handlers(),
            **self.watchdog.handlers(),
        }

    async def _ping(self, params: dict[str, Any]) -> Any:
        return {"pong": True, "pid": os.getpid(), "version": __version__}

    async def _status(self, params: dict[str, Any]) -> Any:
        status = self.status()
        status["watchdog"] = await self.watchdog.status()
        return status

    async def _config_show(self, params: dict[str, Any]) -> Any:
        effective = Params(params).flag("effective", default=True)
        items = [
            {"key": i.key, "value": i.value, "source": i.source, "env": list(i.env_vars)}
            for i in self.loaded.effective_items()
            if effective or i.source != "default"
        ]
        return {"path": str(self.loaded.path), "generation": self.generation, "items": items}

    async def _config_reload(self, params: dict[str, Any]) -> Any:
        if self.supervisor.stopping:
            raise ControlError("unavailable", "the daemon is stopping")
        return (await self.reload("socket")).public()

    def status(self) -> dict[str, Any]:
        """Everything `selfheal status` shows."""
        now = time.time()
        link = self.redis_link
        redis: dict[str, Any] = {
            "mode": "embedded" if self.settings.redis.url == "embedded" else "url",
            "connected": False,
        }
        if link is not None:
            redis.update(vars(link.status))
        if self.embedded is not None:
            redis["embedded"] = vars(self.embedded.status)
        return {
            "version": __version__,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": self.supervisor.started_at,
            "uptime_seconds": round(now - self.supervisor.started_at, 3),
            **self.supervisor.status(),
            "config": {
                "path": str(self.loaded.path),
                "exists": self.loaded.exists,
                "present": self.loaded.path.exists(),
                "generation": self.generation,
                "digest": self.loaded.digest,
            },
            "last_reload": self.last_reload.public() if self.last_reload else None,
            "redis": redis,
            "telemetry": {
                "exporter": self.telemetry.exporter_kind,
                "span_file": str(self.telemetry.span_file) if self.telemetry.span_file else None,
            },
            "control_socket": str(self.settings.control_socket),
            "healing": {
                "router": vars(self.plane.router.stats) if self.plane.router else None,
                "consumers": {name: vars(c.stats) for name, c in self.plane.consumers.items()},
                "timers_fired": self.plane.pump.fired if self.plane.pump else 0,
                "advisor": vars(self.plane.advisor.status) if self.plane.advisor else None,
            },
            "backups": {
                "drainer": {
                    "delivered": self.backups.drainer.delivered,
                    "last_error": self.backups.drainer.last_error,
                },
                "consumers": {n: vars(c.stats) for n, c in self.backups.consumers.items()},
                "last_runs": {t: vars(o) for t, o in self.backups.last_runs.items()},
                "next_runs": self._next_runs(),
            },
        }


def next_runs(settings: Settings) -> dict[str, float]:
    """When each enabled target's schedule fires next (epoch seconds)."""
    found = upcoming(settings, datetime.now(UTC))
    return {target: at.timestamp() for target, (_, at) in found.items()}


class _NextRuns:
    """next_runs, computed again only when the config changes or a run comes due:
    a busy `status` does not walk the cron schedules on every call."""

    def __init__(self) -> None:
        self._settings: Settings | None = None
        self._runs: dict[str, float] = {}

    def __call__(self, settings: Settings) -> dict[str, float]:
        if settings is not self._settings or time.time() >= min(self._runs.values(), default=0):
            self._runs, self._settings = next_runs(settings), settings
        return dict(self._runs)


class _Idle:
    """Placeholder service for a feature the config turns off."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await anyio.sleep_forever()


def run_daemon(config_path: Path, env: Mapping[str, str] | None = None) -> int:
    """Load the config (exit 2 if invalid) and run the daemon on asyncio."""
    loaded = load_config(config_path, env)
    daemon = Daemon(loaded, env)
    return anyio.run(daemon.run, backend="asyncio")


# Collections of the youngest generation start after this many net allocations (the
# interpreter's default is 700). Routing one event allocates a few hundred short-lived
# objects, so the default collects every few events; each young collection stays
# small (the objects it scans are the ones allocated since the last one).
GC_YOUNG_THRESHOLD: Final = 20_000


def settle_heap() -> None:
    """Freeze the start-up objects and space out young collections.

    Start-up objects (modules, config, telemetry) live as long as the process: frozen,
    full collections stop re-scanning them (measured: each full collection under load
    went from ~60 ms to ~12 ms).
    """
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, oldest)
