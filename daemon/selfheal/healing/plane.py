"""The self-healing plane as the daemon runs it: bus services and control methods.

It builds the timer pump, the router's consumer and the notification sink on top
of the daemon's Redis link, and answers `events.send`, `queue.stats` and
`incidents.*` on the control socket.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx
import redis.asyncio as aioredis
from anyio.abc import TaskStatus

from selfheal.bus.consumer import IDLE_READ_MS, ConsumerOptions, StreamConsumer
from selfheal.bus.keys import Keys
from selfheal.bus.streams import Bus, Replication
from selfheal.bus.timers import TimerPump
from selfheal.config import Settings
from selfheal.control.server import Handler
from selfheal.core.events import (
    BACKUP_COMPLETED,
    BACKUP_FAILED,
    BACKUP_FAILURE_ROUTER,
    SELF_HEALING_REQUESTED,
)
from selfheal.core.policy import Knobs
from selfheal.healing.advice import ModelAdvice
from selfheal.healing.advisor import Advisor
from selfheal.healing.backup_adapter import BackupFailureAdapter
from selfheal.healing.control import HealingControl
from selfheal.healing.domains import Domains
from selfheal.healing.notify_sink import NotificationSink
from selfheal.healing.router import (
    NOTIFY_REQUESTED,
    ROUTER_BATCH,
    ROUTER_CONCURRENCY,
    ROUTER_GROUP,
    Router,
)
from selfheal.supervisor import Service, ServiceSpec
from selfheal.telemetry import Telemetry

NOTIFIER_GROUP = "system/self.healing.notifier"
# How long the timer pump sleeps when no timer of ours is due sooner.
PUMP_MAX_SLEEP_S = 30.0
HOUR_MS = 3_600_000


class HealingPlane:
    """Owns the healing services' construction and their control methods."""

    def __init__(
        self,
        *,
        settings: Callable[[], Settings],
        client: Callable[[], aioredis.Redis],
        telemetry: Telemetry,
        consumer_name: str,
        stopping: Callable[[], bool],
        wait_stopping: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._settings = settings
        self._wait_stopping = wait_stopping
        # Domains register themselves here (see healing/domains.py) before services start.
        self.domains = Domains()
        self._client = client
        self.telemetry = telemetry
        self.consumer_name = consumer_name
        self._stopping = stopping
        self._bus: Bus | None = None
        self.router: Router | None = None
        self.consumers: dict[str, StreamConsumer] = {}
        self.pump: TimerPump | None = None
        self.advisor: Advisor | None = None

    def bus(self) -> Bus:
        """A bus over the current Redis client (rebuilt when the link reconnects anew)."""
        client = self._client()
        settings = self._settings()
        keys = Keys(settings.redis.namespace)
        maxlen = settings.bus.stream_max_len
        if (
            self._bus is None
            or self._bus.client is not client
            or self._bus.keys != keys
            or self._bus.maxlen != maxlen
        ):
            self._bus = Bus(client, keys, maxlen=maxlen)
        return self._bus

    def consumer_options(self, **overrides: Any) -> ConsumerOptions:
        """Delivery options from the config's bus section, with per-consumer overrides."""
        bus = self._settings().bus
        base: dict[str, Any] = {
            "reclaim_idle_ms": int(bus.reclaim_idle_seconds * 1000),
            "max_deliveries": bus.max_deliveries,
            # Reads wait long (a stop ends the wait): an idle daemon stays asleep. It
            # looks for entries to reclaim as often (twice per reclaimIdleSeconds when
            # that is sooner).
            "block_ms": IDLE_READ_MS,
            "reclaim_every_s": IDLE_READ_MS / 1000,
        }
        return ConsumerOptions(**{**base, **overrides})

    def knobs(self) -> Knobs:
        """Router knobs from the live config."""
        hours = self._settings().transport.recovery_window_hours
        return Knobs(recovery_window_ms=int(hours * HOUR_MS))

    def replication(self) -> Replication | None:
        """The replicas an event must reach before `events.send` acknowledges it."""
        redis = self._settings().redis
        if not redis.ack_replicas:
            return None
        return Replication(redis.ack_replicas, max(1, int(redis.ack_timeout_seconds * 1000)))

    # -- services ---------------------------------------------------------------------

    def specs(self, depends_on: Callable[[], object]) -> list[ServiceSpec]:
        """Services to run after the Redis link, restarted whenever the link is."""
        return [
            ServiceSpec(
                name="timers", factory=self._make_pump, depends_on=depends_on, starts_work=True
            ),
            ServiceSpec(
                name="router",
                factory=self._make_router,
                # A changed advisor section rebuilds the router with a new advisor.
                depends_on=lambda: (depends_on(), self._settings().advisor),
                drains=True,
            ),
            ServiceSpec(
                name="notifier", factory=self._make_notifier, depends_on=depends_on, drains=True
            ),
            ServiceSpec(
                name="backup-failures",
                factory=lambda: self._make_adapter(BACKUP_FAILED),
                depends_on=depends_on,
                drains=True,
            ),
            ServiceSpec(
                name="backup-completions",
                factory=lambda: self._make_adapter(BACKUP_COMPLETED),
                depends_on=depends_on,
                drains=True,
            ),
        ]

    def _make_adapter(self, event_name: str) -> Service:
        assert self.router is not None, "the router starts before the adapter"
        bus = self.bus()
        adapter = BackupFailureAdapter(bus, self.router, lambda: self._settings().router)
        handler = adapter.on_failed if event_name == BACKUP_FAILED else adapter.on_completed
        consumer = StreamConsumer(
            bus,
            event_name,
            BACKUP_FAILURE_ROUTER,
            self.consumer_name,
            handler,
            options=self.consumer_options(),
            stopping=self._stopping,
            wait_stopping=self._wait_stopping,
        )
        consumer.name = f"adapter:{event_name}"
        self.consumers[consumer.name] = consumer
        return consumer

    def _make_pump(self) -> Service:
        # Its own timers wake it (events.send, the router's commits); other daemons'
        # timers are fired by their own pumps, so a long sleep loses nothing.
        self.pump = TimerPump(self.bus(), max_sleep_s=PUMP_MAX_SLEEP_S)
        return self.pump

    def _make_router(self) -> Service:
        self.domains.check()  # a retry route nothing serves is refused before any request
        bus = self.bus()
        http = httpx.AsyncClient() if self._settings().advisor.enabled else None
        self.router = Router(
            bus,
            self.telemetry,
            knobs=self.knobs,
            domains=self.domains,
            advice=self._advice(http),
            on_timers=lambda: self.pump.wake() if self.pump is not None else None,
        )
        consumer = StreamConsumer(
            bus,
            SELF_HEALING_REQUESTED,
            ROUTER_GROUP,
            self.consumer_name,
            self.router.handle,
            options=self.consumer_options(batch=ROUTER_BATCH, concurrency=ROUTER_CONCURRENCY),
            stopping=self._stopping,
            wait_stopping=self._wait_stopping,
            # Fresh entries are routed a batch at a time; reclaimed ones, and those a
            # batch leaves (invalid, or whose routing raised), one by one.
            batch_handler=self.router.handle_batch,
        )
        consumer.name = "router"
        self.consumers["router"] = consumer
        return _Closing(consumer, http)

    def _advice(self, http: httpx.AsyncClient | None) -> ModelAdvice | None:
        settings = self._settings()
        if http is None:
            self.advisor = None
            return None
        model, fallback = settings.advisor_models
        self.advisor = Advisor(
            settings.advisor,
            model=model,
            fallback_model=fallback,
            client=http,
            telemetry=self.telemetry,
        )
        return ModelAdvice(self.advisor)

    def _make_notifier(self) -> Service:
        bus = self.bus()
        sink = NotificationSink(bus, lambda: self._settings().notifiers, self.telemetry)
        consumer = StreamConsumer(
            bus,
            NOTIFY_REQUESTED,
            NOTIFIER_GROUP,
            self.consumer_name,
            sink.handle,
            options=self.consumer_options(),
            stopping=self._stopping,
            wait_stopping=self._wait_stopping,
        )
        consumer.name = "notifier"
        self.consumers["notifier"] = consumer
        return consumer

    def handlers(self) -> dict[str, Handler]:
        """Control-socket methods of the healing plane."""
        return HealingControl(self).handlers()


class _Closing:
    """A service that closes the HTTP client it was built with when it stops."""

    def __init__(self, inner: StreamConsumer, http: httpx.AsyncClient | None) -> None:
        self.name = inner.name
        self._inner = inner
        self._http = http

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the inner service; close the client however it ends."""
        try:
            await self._inner.run(task_status=task_status)
        finally:
            if self._http is not None:
                with anyio.CancelScope(shield=True):
                    await self._http.aclose()
