"""Three daemons on one Redis: work is done once, and a killed one's work is taken over.

Each daemon has its own HOME (config, control socket, state dir) and the same
`selfheal.redis.url` and namespace, as three machines sharing one bus would. What
must hold:

- a scheduled backup runs once per tick: one request published for the tick,
  one artifact on the NAS, one `backup.completed`, however many schedulers saw it;
- each self-healing request is decided once: one outcome per request (none lost,
  none doubled), one retry per incident, while requests come in through all three
  sockets at once;
- a daemon SIGKILLed while it holds requests (read, not yet acknowledged) leaves
  them to the others, which answer them within `reclaimIdleSeconds` and a margin.

(That three daemons restart a crashed worker once is tests/integration/test_watchdog.py.)
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest

from selfheal.backup.transports.mount import mark_nas
from selfheal.bus.consumer import consumer_name
from selfheal.bus.keys import Keys
from selfheal.core.artifacts import MANIFEST_SUFFIX
from selfheal.core.events import BACKUP_COMPLETED, BACKUP_REQUESTED, SELF_HEALING_REQUESTED
from selfheal.core.schedule import tick_key
from selfheal.healing.router import ROUTER_GROUP
from tests.support.daemon import DaemonProcess, Daemons
from tests.support.healing import outcomes, retry_request
from tests.support.http import PlayedService, Posted, Reply, played_service
from tests.support.servers import RedisServer, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

KEYS = Keys("selfheal")
RECLAIM_IDLE_S = 2
# How long past reclaimIdleSeconds the others may take to answer a dead daemon's requests.
RECLAIM_MARGIN_S = 3.0


class Trio:
    """Daemons in HOMEs of their own, all killed (with anything they left) afterwards."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.fleets: list[Daemons] = []

    def start(self, *configs: dict[str, Any]) -> list[DaemonProcess]:
        """Start one daemon per config, at once, and wait until each answers."""
        started: list[DaemonProcess] = []
        for config in configs:
            fleet = Daemons(self.home / f"d{len(self.fleets)}")
            self.fleets.append(fleet)
            started.append(fleet.start(config=config, wait=False))
        for daemon in started:
            daemon.wait_ready()
        return started

    def kill_all(self) -> None:
        for fleet in self.fleets:
            fleet.kill_all()


@pytest.fixture
def trio(short_home: Path) -> Iterator[Trio]:
    made = Trio(short_home)
    try:
        yield made
    finally:
        made.kill_all()


def bus_config(redis_server: RedisServer, **more: Any) -> dict[str, Any]:
    return {
        "selfheal": {
            "redis": {"url": redis_server.url, "namespace": KEYS.namespace},
            "bus": {"reclaimIdleSeconds": RECLAIM_IDLE_S},
            "backups": {"typesense": {"enabled": False}, "redis": {"enabled": False}},
            **more,
        }
    }


def send(daemon: DaemonProcess, incident_id: str) -> str:
    reply = daemon.call(
        "events.send", {"name": SELF_HEALING_REQUESTED, "data": retry_request(incident_id)}
    )
    return str(reply["id"])


def entries(redis_server: RedisServer, event_name: str) -> list[dict[str, Any]]:
    """A stream's events: their wire fields, the data decoded."""
    with redis_server.client() as client:
        raw = client.xrange(KEYS.stream(event_name))
    found = []
    for _entry, fields in raw:
        wire = {k.decode(): v.decode() for k, v in fields.items()}
        wire["data"] = json.loads(wire["data"])
        found.append(wire)
    return found


def nas_runs(folder: Path) -> Counter[str]:
    """Artifacts on the NAS per run id (from their manifests)."""
    manifests = folder.glob(f"*{MANIFEST_SUFFIX}") if folder.exists() else []
    return Counter(json.loads(path.read_text())["runId"] for path in manifests)


def group_settled(redis_server: RedisServer, event_name: str) -> bool:
    """Every entry of the stream delivered to each of its groups and acknowledged."""
    stream = KEYS.stream(event_name)
    with redis_server.client() as client:
        last = client.xinfo_stream(stream)["last-generated-id"]
        groups = client.xinfo_groups(stream)
    return bool(groups) and all(
        g["pending"] == 0 and g["last-delivered-id"] == last for g in groups
    )


def test_three_daemons_run_each_tick_once_and_decide_each_request_once(
    trio: Trio, redis_server: RedisServer, short_home: Path
) -> None:
    nas = short_home / "nas"
    nas.mkdir()
    mark_nas(nas, "three-body")
    config = bus_config(redis_server)
    config["selfheal"]["backups"]["redis"] = {
        "source": redis_server.url,
        "mountRoot": str(nas),
        "requireMountPoint": False,
        "schedule": "* * * * *",  # every minute: the next tick is at most a minute away
        "retention": {"keepLast": 100},
    }
    daemons = trio.start(config, config, config)

    # The first scheduler to start counted from its start; the tick is the next minute.
    with redis_server.client() as client:
        raw = client.get(f"{KEYS.tag}:schedule:last:redis")
    assert raw is not None, "no scheduler started"
    since = datetime.fromisoformat(raw.decode())
    tick = since.replace(second=0, microsecond=0) + timedelta(minutes=1)

    # Meanwhile: requests through all three sockets at once, five per incident.
    incidents, per_incident = 12, 5
    sent: dict[str, str] = {}  # request id -> incident id
    errors: list[BaseException] = []
    lock = threading.Lock()

    def sender(daemon: DaemonProcess, start: int) -> None:
        try:
            for n in range(start, incidents * per_incident, len(daemons)):
                incident_id = f"trio:{n % incidents}"
                request_id = send(daemon, incident_id)
                with lock:
                    sent[request_id] = incident_id
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=sender, args=(daemon, i)) for i, daemon in enumerate(daemons)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert len(sent) == incidents * per_incident

    client = redis_server.client()
    wait_until(
        lambda: set(sent) <= {o.request_id for o in outcomes(client)},
        30,
        "an outcome for every request",
    )
    wait_until(lambda: group_settled(redis_server, SELF_HEALING_REQUESTED), 15, "the router idle")
    answered = Counter(o.request_id for o in outcomes(client))
    doubled = {r: n for r, n in answered.items() if n > 1}
    counts = f"in {len(sent)}, out {sum(answered.values())}, doubled {len(doubled)}"
    assert not doubled, f"{counts}: {doubled}"
    assert set(answered) == set(sent), f"{counts}: outcomes for requests nobody sent"
    # One decision per incident: one retry scheduled, every later request joined it.
    assert client.zcard(KEYS.timers) == incidents, counts
    for i in range(incidents):
        shown = daemons[i % 3].call("incidents.show", {"id": f"trio:{i}"})
        assert shown["retriesUsed"] == 1, shown
    routed = {
        d.status()["pid"]: d.status()["healing"]["consumers"]["router"]["handled"] for d in daemons
    }
    print(f"three daemons: requests {counts}; handled per daemon {routed}")  # noqa: T201

    # The tick: one request published for it, one run, one artifact.
    key = tick_key("redis", tick)

    def ticked() -> list[dict[str, Any]]:
        return [e for e in entries(redis_server, BACKUP_REQUESTED) if e["idempotencyKey"] == key]

    wait_until(ticked, max(0.0, tick.timestamp() - time.time()) + 30, f"the tick {key}")
    [request] = ticked()
    run_id = request["id"]

    def delivered() -> list[dict[str, Any]]:
        return [e for e in entries(redis_server, BACKUP_COMPLETED) if e["data"]["runId"] == run_id]

    wait_until(delivered, 60, f"the run of {key} delivered")
    # Every scheduler has woken for the tick (they sleep until it) and every backup
    # request is handled.
    wait_until(
        lambda: (
            time.time() > tick.timestamp() + 2 and group_settled(redis_server, BACKUP_REQUESTED)
        ),
        30,
        "the schedulers past the tick, the backups idle",
    )
    scheduled = [e for e in entries(redis_server, BACKUP_REQUESTED) if "@" in e["idempotencyKey"]]
    per_key = Counter(e["idempotencyKey"] for e in scheduled)
    assert per_key[key] == 1, per_key
    assert len(delivered()) == 1, delivered()
    on_nas = nas_runs(nas / "redis")
    assert on_nas[run_id] == 1, on_nas
    assert set(on_nas) <= {e["id"] for e in scheduled}, "an artifact nobody scheduled"
    for daemon in daemons:
        assert daemon.call("queue.stats")["deadLetters"] == 0
    print(f"three daemons: tick {key} -> run {run_id}; NAS {dict(on_nas)}")  # noqa: T201


def test_a_killed_daemons_requests_are_answered_by_the_others(
    trio: Trio, redis_server: RedisServer
) -> None:
    """The victim asks a model that answers the first request late and no other at all:
    it holds what it read; SIGKILLed, the others take it over."""
    first = "victim:0"
    let_first_go = threading.Event()
    release = threading.Event()  # the model's other answers: at the end of the test

    def model(posted: Posted) -> Reply:
        (let_first_go if first in json.dumps(posted.body) else release).wait(60)
        return Reply(500, {"error": "overloaded"})  # no advice: the policy decides

    with played_service(model) as endpoint:
        try:
            run_victim_test(trio, redis_server, endpoint, first, let_first_go)
        finally:
            release.set()
            let_first_go.set()


def consumer_pending(redis_server: RedisServer, consumer: str) -> list[str]:
    """Entry ids of the router group pending on `consumer`."""
    with redis_server.client() as client:
        rows = client.xpending_range(
            KEYS.stream(SELF_HEALING_REQUESTED),
            ROUTER_GROUP,
            min="-",
            max="+",
            count=1000,
            consumername=consumer,
        )
    return [row["message_id"].decode() for row in rows]


def recent_waits(redis_server: RedisServer, pids: list[int], seconds: int) -> list[str]:
    """Commands of these processes waiting in Redis that began less than `seconds` ago."""
    ports = {
        conn.laddr.port
        for pid in pids
        for conn in psutil.Process(pid).net_connections(kind="tcp")
        if conn.raddr and conn.raddr.port == redis_server.port
    }
    with redis_server.client() as client:
        clients = client.client_list()
    return [
        f"{c['cmd']} for {c['idle']}s"
        for c in clients
        if int(str(c["addr"]).rsplit(":", 1)[1]) in ports
        and "b" in str(c["flags"])
        and int(c["idle"]) < seconds
    ]


def run_victim_test(
    trio: Trio,
    redis_server: RedisServer,
    endpoint: PlayedService,
    first: str,
    let_first_go: threading.Event,
) -> None:
    advisor = {
        "enabled": True,
        "endpoint": endpoint.base,
        "timeoutMs": 60_000,
        "circuitBreakerFailures": 1000,
    }
    victim, *others = trio.start(
        bus_config(redis_server, advisor=advisor),
        bus_config(redis_server),
        bus_config(redis_server),
    )
    name = consumer_name(psutil.Process(victim.status()["pid"]))
    client = redis_server.client()

    # The others are frozen while the victim reads: only it can take the requests once
    # the router reads they had waiting in Redis are over. Such a read waits no longer
    # than the consumer's next look for entries to reclaim (half of reclaimIdleSeconds
    # here, 1 s), so once each read still waiting began 2 s ago or more, none is the
    # router's. The freeze is kept that short: a daemon frozen past its reads'
    # deadlines restarts them, and then takes over a dead local daemon's entries at
    # once, which is not the way under test.
    for other in others:
        other.signal(signal.SIGSTOP)
    try:
        frozen = [o.process.pid for o in others if o.process is not None]
        wait_until(lambda: not recent_waits(redis_server, frozen, 2), 5, "the frozen reads to end")
        ids = [send(victim, first)]
        wait_until(lambda: len(consumer_pending(redis_server, name)) == 1, 15, "the first read")
        held = 8
        ids += [send(victim, f"victim:{n}") for n in range(1, held + 1)]
        let_first_go.set()  # the victim decides the first, then reads the rest in one go
        wait_until(
            lambda: len(consumer_pending(redis_server, name)) == held, 15, "the victim's batch"
        )
        pending = consumer_pending(redis_server, name)
        victim.kill()
        killed_at = time.monotonic()
    finally:
        for other in others:
            other.signal(signal.SIGCONT)

    def answered() -> set[str]:
        return {o.request_id for o in outcomes(client)}

    try:
        wait_until(
            lambda: set(ids) <= answered(),
            RECLAIM_IDLE_S + RECLAIM_MARGIN_S + 30,
            "the others to answer the victim's requests",
        )
    except AssertionError as exc:
        logs = "\n".join(o.log()[-4000:] for o in others)
        raise AssertionError(f"{exc}: {len(set(ids) - answered())} unanswered\n{logs}") from None
    took = time.monotonic() - killed_at
    reclaimed = sum(o.status()["healing"]["consumers"]["router"]["reclaimed"] for o in others)
    answers = Counter(o.request_id for o in outcomes(client))
    counts = (
        f"victim held {len(pending)}, others reclaimed {reclaimed}, answered "
        f"{sum(answers[i] for i in ids)} of {len(ids)} in {took:.1f}s after the kill"
    )
    print(counts)  # noqa: T201
    assert all(answers[i] == 1 for i in ids), f"{counts}: {answers}"
    assert reclaimed == held, counts
    # Reclaimed as idle entries of a dead member: neither took them over in a restart.
    for other in others:
        [router] = [s for s in other.status()["services"] if s["name"] == "router"]
        assert router["restarts"] == 0, router
    assert took <= RECLAIM_IDLE_S + RECLAIM_MARGIN_S, counts
    assert not consumer_pending(redis_server, name)
    for other in others:
        assert other.call("queue.stats")["deadLetters"] == 0
