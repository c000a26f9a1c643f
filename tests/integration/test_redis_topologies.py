"""The daemon on a real Redis Cluster and a real Sentinel set-up, failovers included.

Cluster: three masters started from the daemon's own redis-server binary; every bus
key carries the namespace's hash tag, so all of them live on the one master that
serves its slot. With a replica each, that master fails over (CLUSTER FAILOVER), is
killed or hangs under load: the daemon, same process, goes on with the promoted
replica and decides every acknowledged request the new master holds once.
Sentinel: one master, one replica, three sentinels; a failover (SENTINEL FAILOVER,
or the master killed) while requests arrive loses none that the daemon acknowledged
(with `ackReplicas: 1`, an acknowledgement means a replica holds the request), and
the daemon moves to the new master by itself, same process.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
import redis
import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from selfheal.bus.connection import ClusterSeeds, RedisLink
from selfheal.bus.keys import Keys
from selfheal.bus.streams import Bus
from selfheal.config.schema import RedisSettings
from selfheal.core.events import SELF_HEALING_REQUESTED, new_event
from selfheal.errors import ControlError
from tests.support.daemon import DaemonProcess, Daemons
from tests.support.http import PlayedService, played_service
from tests.support.redis_topologies import (
    MASTER_NAME,
    ConfiguredRedis,
    RedisClusterSet,
    SentinelSet,
    running_cluster,
    running_sentinels,
)
from tests.support.servers import RedisServer, wait_until

pytestmark = pytest.mark.slow

NAMESPACE = "selfheal"
REQUESTS = f"{{{NAMESPACE}}}:stream:{SELF_HEALING_REQUESTED}"
COMPLETIONS = f"{{{NAMESPACE}}}:stream:system/self.healing.completed"
# How long the daemon may take to be on the new master after the sentinels agree on it.
FOLLOW_TIMEOUT_S = 20.0
# How long every acknowledged request may take to be decided once the failover is over.
DECIDED_TIMEOUT_S = 30.0
# redis-py's default read timeout (5 s) and a bit: an idle consumer waits longer than
# that in one read (10 s), which must not be taken for a dead server.
IDLE_CHECK_S = 7.0


def request(incident: str, *, retries: int = 3, sleep_ms: int = 600_000) -> dict[str, Any]:
    """A self-healing request for its own incident; a long sleep keeps its retry
    timer from firing during the test unless asked to."""
    return {
        "sourceFunction": "system/backup.redis",
        "targetComponent": "redis",
        "problemSummary": "copy to NAS failed",
        "attempt": 0,
        "retryPolicy": {
            "maxRetries": retries,
            "sleepMinMs": sleep_ms,
            "sleepMaxMs": sleep_ms,
            "sleepStepMs": 0,
        },
        "evidence": [{"errno": "ETIMEDOUT"}],
        "playbook": {"actions": ["retry"]},
        "incidentId": incident,
        "domain": "backup",
    }


def send(daemon: DaemonProcess, data: dict[str, Any]) -> str:
    """events.send through the control socket; the acknowledged event's id."""
    reply = daemon.call("events.send", {"name": SELF_HEALING_REQUESTED, "data": data})
    return str(reply["id"])


def completions_by_request(client: redis.Redis) -> Counter[str]:
    """How many completions answer each request event (their idempotency key is
    `<request id>/completed`)."""
    counts: Counter[str] = Counter()
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(COMPLETIONS))
    for _entry, fields in entries:
        key = fields[b"idempotencyKey"].decode()
        counts[key.removesuffix("/completed")] += 1
    return counts


def restarts(daemon: DaemonProcess) -> dict[str, int]:
    return {s["name"]: s["restarts"] for s in daemon.status()["services"] if s["restarts"]}


# -- Redis Cluster --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterSet]:
    """Three masters, all slots assigned, cluster_state:ok on each (shared by the
    module's cluster tests, each in its own namespace)."""
    with running_cluster(tmp_path_factory.mktemp("cluster")) as made:
        yield made


@pytest.fixture
def receiver() -> Iterator[PlayedService]:
    """A webhook endpoint for escalation notices."""
    with played_service() as service:
        yield service


def test_daemon_on_cluster_routes_each_request_once_on_one_master(
    cluster: RedisClusterSet, daemon_factory: Daemons, receiver: PlayedService
) -> None:
    config = {
        "selfheal": {
            "redis": {"url": cluster.url, "cluster": True, "namespace": NAMESPACE},
            "notifiers": {"webhook": {"url": f"{receiver.base}/hook"}},
        }
    }
    daemon = daemon_factory.start(config=config)
    link = daemon.status()["redis"]
    assert link["mode"] == "cluster" and link["connected"] is True, link
    assert link["server_version"], "INFO reached a node"

    sent = [send(daemon, request(f"cluster:{n}")) for n in range(20)]
    # One escalates at once (the notifier's delivery and its timeline note, a
    # MULTI/EXEC pipeline); one asks for a retry in 50 ms (the timer pump moves it).
    sent.append(send(daemon, request("cluster:escalate", retries=0)))
    sent.append(send(daemon, request("cluster:soon", sleep_ms=50)))

    owner = cluster.node_of_slot(cluster.keyslot("{" + NAMESPACE + "}"))
    with owner.client() as bus:
        wait_until(
            lambda: set(completions_by_request(bus)) >= set(sent),
            20,
            "a completion for every request",
        )
        counts = completions_by_request(bus)
        assert all(counts[event_id] == 1 for event_id in sent), counts
        wait_until(
            lambda: bus.xlen(f"{{{NAMESPACE}}}:stream:system/backup.retry.requested") >= 1,
            15,
            "the 50 ms retry timer to fire",
        )
    wait_until(lambda: len(receiver.posts) == 1, 15, "the escalation notice")
    assert receiver.posts[0].body["incidentId"] == "cluster:escalate"
    wait_until(
        lambda: daemon.call("incidents.show", {"id": "cluster:escalate"})["notices"],
        15,
        "the notice on the incident's timeline",
    )
    stats = daemon.call("queue.stats", {})
    assert stats["deadLetters"] == 0

    # One hash tag per namespace: every key of the bus is on the master of its slot.
    for node in cluster.nodes:
        with node.client() as client:
            keys = list(client.scan_iter(match="{" + NAMESPACE + "}:*", count=1000))
        if node is owner:
            assert len(keys) > 20, "the bus keys are on the owner of the namespace's slot"
        else:
            assert keys == [], f"bus keys on another master ({node.port}): {keys[:5]}"
    assert restarts(daemon) == {}, daemon.log()[-3000:]
    assert daemon.stop() == 0


@pytest.mark.anyio
async def test_bus_on_cluster_blocking_read_and_batch_publish(cluster: RedisClusterSet) -> None:
    client = RedisCluster.from_url(cluster.url)
    bus = Bus(client, Keys("bus-on-cluster"))  # type: ignore[arg-type]
    try:
        await bus.ensure_group("test/blocking", "readers")
        stream = bus.keys.stream("test/blocking")
        # A read that waits longer than the client's read timeout (redis-py: 5 s) must
        # come back empty, not as a timeout after the cluster client's retries.
        started = time.monotonic()
        with anyio.fail_after(15):
            assert await bus.read_group(stream, "readers", "c1", count=10, block_ms=8000) == []
        assert time.monotonic() - started < 8.5

        # A batch publish (a pipeline of script calls elsewhere) appends in order.
        now = int(time.time() * 1000)
        events = [new_event("test/blocking", {"n": n}, now_ms=now) for n in range(5)]
        assert await bus.publish_many(events) == 5
        with anyio.fail_after(15):
            read = await bus.read_group(stream, "readers", "c1", count=10, block_ms=8000)
        assert [json.loads(fields["data"])["n"] for _id, fields in read] == list(range(5))
    finally:
        await client.aclose()


# -- Redis Sentinel ---------------------------------------------------------------------------


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    """Master, replica and three sentinels, killed afterwards by pid."""
    with running_sentinels(tmp_path / "sentinel") as made:
        yield made


def sentinel_config(topology: SentinelSet) -> dict[str, Any]:
    return {
        "selfheal": {
            "redis": {
                "url": topology.url,
                "sentinelMaster": MASTER_NAME,
                "namespace": NAMESPACE,
                # Acknowledged only once the replica holds it: a failover cannot lose it.
                "ackReplicas": 1,
                "ackTimeoutSeconds": 1,
            }
        }
    }


def test_daemon_on_sentinel_routes_each_request_once(
    sentinels: SentinelSet, daemon_factory: Daemons
) -> None:
    daemon = daemon_factory.start(config=sentinel_config(sentinels))
    link = daemon.status()["redis"]
    assert link["mode"] == "sentinel" and link["connected"] is True, link
    assert link["master"] == sentinels.master.address

    sent = [send(daemon, request(f"sentinel:{n}")) for n in range(20)]
    # A resend with the same key is acknowledged as the one already held, not doubled.
    keyed = {"name": SELF_HEALING_REQUESTED, "data": request("sentinel:keyed")}
    first = daemon.call("events.send", {**keyed, "idempotencyKey": "keyed-1"})
    again = daemon.call("events.send", {**keyed, "idempotencyKey": "keyed-1"})
    assert first["deduplicated"] is False and again["deduplicated"] is True
    sent.append(first["id"])
    with sentinels.master.client() as bus, sentinels.replica.client() as replica:
        wait_until(lambda: set(completions_by_request(bus)) >= set(sent), 20, "every completion")
        assert all(completions_by_request(bus)[event_id] == 1 for event_id in sent)
        # Acknowledged means replicated: the replica holds every request.
        assert replica.xlen(REQUESTS) >= len(sent)

    # Idle consumers wait 10 s in one read; longer than redis-py's 5 s read timeout,
    # which must not end them as if the master were gone.
    wait_until(lambda: daemon.status()["uptime_seconds"] > IDLE_CHECK_S, 20, "an idle spell")
    assert restarts(daemon) == {}, daemon.log()[-3000:]
    assert daemon.stop() == 0


class Load:
    """Sends a request every few milliseconds until stopped; records which the daemon
    acknowledged (events.send returned an id) and which it refused, and when."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.daemon = daemon
        self.acked: dict[str, float] = {}
        self.refused: list[tuple[float, str]] = []
        self.reasons: dict[str, str] = {}  # a refusal's message, by code (the last one)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def _run(self) -> None:
        n = 0
        deadline = time.monotonic() + 90  # bounded even if the test forgets to stop it
        while not self._stop.is_set() and time.monotonic() < deadline:
            n += 1
            try:
                event_id = send(self.daemon, request(f"load:{n}"))
            except ControlError as exc:
                self.refused.append((time.monotonic(), exc.code))
                self.reasons[exc.code] = str(exc)
            else:
                self.acked[event_id] = time.monotonic()
            self._stop.wait(0.01)

    def acked_since(self, moment: float) -> int:
        return sum(1 for at in list(self.acked.values()) if at > moment)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the load thread did not stop"


def follow_and_check(
    daemon: DaemonProcess, sentinels: SentinelSet, load: Load, old: str, failed_at: float
) -> str:
    """The sentinels agree on a new master, the daemon (same process) connects to it
    and acknowledges requests again; returns the new master's address."""
    wait_until(
        lambda: sentinels.agreed_master() not in (None, old), 30, "the sentinels' new master"
    )
    new = sentinels.agreed_master()
    assert new is not None and new != old

    def on_new_master() -> bool:
        link = daemon.status()["redis"]
        return bool(link["connected"] and link["master"] == new)

    try:
        wait_until(on_new_master, FOLLOW_TIMEOUT_S, "the daemon to connect to the new master")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{daemon.log()[-4000:]}\n{sentinels.logs()}") from None
    followed_at = time.monotonic()
    wait_until(lambda: load.acked_since(followed_at) >= 20, 30, "acknowledgements to resume")
    assert load.acked_since(failed_at) > 0
    return new


def check_nothing_lost(
    daemon: DaemonProcess, sentinels: SentinelSet, load: Load, new: str, pid: int
) -> None:
    """Every acknowledged request is decided, once, on the new master; the daemon is
    the process that started."""
    assert len(load.acked) > 50, "a load worth the name"
    with sentinels.server_at(new).client() as bus:

        def missing() -> set[str]:
            return set(load.acked) - set(completions_by_request(bus))

        try:
            wait_until(lambda: not missing(), DECIDED_TIMEOUT_S, "every acknowledged request")
        except AssertionError as exc:
            lost = sorted(missing(), key=load.acked.__getitem__)
            raise AssertionError(
                f"{exc}: {len(lost)} of {len(load.acked)} acknowledged requests have no "
                f"decision, e.g. {lost[:5]}\n{daemon.log()[-4000:]}"
            ) from None
        counts = completions_by_request(bus)
        doubled = {event_id: n for event_id, n in counts.items() if n != 1}
        assert doubled == {}, f"requests decided more than once: {doubled}"
    status = daemon.status()
    assert status["pid"] == pid and daemon.process is not None and daemon.process.poll() is None
    assert status["state"] == "running"


def test_sentinel_failover_under_load_loses_no_acknowledged_request(
    sentinels: SentinelSet, daemon_factory: Daemons
) -> None:
    daemon = daemon_factory.start(config=sentinel_config(sentinels))
    pid = daemon.status()["pid"]
    old = sentinels.master.address
    with Load(daemon) as load:
        wait_until(lambda: len(load.acked) >= 40, 20, "requests flowing")
        failed_at = time.monotonic()
        sentinels.failover()
        new = follow_and_check(daemon, sentinels, load, old, failed_at)
    assert new == sentinels.replica.address
    # The old master took writes until the sentinels demoted it, and dropped them then:
    # none of those was acknowledged (no replica confirmed them).
    check_nothing_lost(daemon, sentinels, load, new, pid)
    assert daemon.stop() == 0


def test_sentinel_master_killed_under_load_loses_no_acknowledged_request(
    sentinels: SentinelSet, daemon_factory: Daemons
) -> None:
    daemon = daemon_factory.start(config=sentinel_config(sentinels))
    pid = daemon.status()["pid"]
    old = sentinels.master
    with Load(daemon) as load:
        wait_until(lambda: len(load.acked) >= 40, 20, "requests flowing")
        killed_at = time.monotonic()
        assert old.process is not None
        os.kill(old.process.pid, signal.SIGKILL)
        old.process.wait(timeout=10)
        wait_until(
            lambda: sentinels.agreed_master() not in (None, old.address),
            30,
            "the sentinels to promote the replica",
        )
        new = sentinels.agreed_master()
        assert new == sentinels.replica.address
        # The promoted replica has no replica of its own: nothing can be acknowledged
        # (ackReplicas: 1) until the old server comes back as its replica.
        wait_until(
            lambda: any(at > killed_at and code == "not_replicated" for at, code in load.refused),
            30,
            "a request refused as not replicated",
        )
        sentinels.rejoin_as_replica(old, new)
        follow_and_check(daemon, sentinels, load, old.address, killed_at)
    check_nothing_lost(daemon, sentinels, load, new, pid)
    assert daemon.stop() == 0


# -- Redis Cluster failover ------------------------------------------------------------------

# cluster-node-timeout of the failover tests: a killed master is failed over ~2-4 s after.
CLUSTER_NODE_TIMEOUT_MS = 2000


@pytest.fixture
def replicated_cluster(tmp_path: Path) -> Iterator[RedisClusterSet]:
    """Three masters with one replica each (six servers), killed afterwards by pid."""
    with running_cluster(
        tmp_path / "cluster", replicas=1, node_timeout_ms=CLUSTER_NODE_TIMEOUT_MS
    ) as made:
        yield made


class StatusWatch:
    """Asks the daemon for `status` every 100 ms until stopped; records each answer's
    time, the Redis node it names as the master of the namespace's slot, and every
    call that failed."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.daemon = daemon
        self.seen: list[tuple[float, bool, str | None]] = []  # (at, connected, master)
        self.failed: list[tuple[float, str]] = []
        self.slowest_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status", daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 90
        while not self._stop.is_set() and time.monotonic() < deadline:
            asked = time.monotonic()
            try:
                link = self.daemon.status()["redis"]
            except Exception as exc:  # a timeout, a refused connection, a bad answer
                self.failed.append((asked, repr(exc)))
            else:
                answered = time.monotonic()
                self.slowest_s = max(self.slowest_s, answered - asked)
                self.seen.append((answered, bool(link["connected"]), link.get("master")))
            self._stop.wait(0.1)

    def first_on(self, master: str, since: float) -> float | None:
        """When status first named `master`, connected, after `since`."""
        for at, connected, named in list(self.seen):
            if at > since and connected and named == master:
                return at
        return None

    def __enter__(self) -> StatusWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the status thread did not stop"


def stream_ids(client: redis.Redis, stream: str) -> set[str]:
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(stream))
    return {fields[b"id"].decode() for _entry, fields in entries}


def fail_master(cluster: RedisClusterSet, master: ConfiguredRedis, fault: str) -> None:
    """failover: CLUSTER FAILOVER on its replica (orderly); kill: SIGKILL; pause: SIGSTOP
    (the master hangs, connections open and unanswered, as a host that drops off the
    network); the cluster fails a killed or paused master over after its node timeout."""
    if fault == "failover":
        (replica,) = cluster.replicas_of(master)
        cluster.failover(replica)
    elif fault == "kill":
        assert master.process is not None
        os.kill(master.process.pid, signal.SIGKILL)
        master.process.wait(timeout=10)
    else:
        master.pause()  # killed (SIGKILL works on a stopped process) at teardown


@pytest.mark.parametrize("fault", ["failover", "kill", "pause"])
def test_cluster_failover_under_load_loses_no_acknowledged_request(
    replicated_cluster: RedisClusterSet, daemon_factory: Daemons, fault: str
) -> None:
    """The master of the namespace's slot fails over (CLUSTER FAILOVER on its replica),
    is killed, or hangs, while requests arrive. The daemon, same process, goes on with
    the promoted replica, answers `status` throughout, and decides every acknowledged
    request that the new master holds exactly once. An orderly failover loses nothing.
    A killed or hung master takes with it what it had not yet sent to its replica
    (Redis Cluster replicates asynchronously, and ackReplicas is refused on a cluster):
    those are counted and reported; none may be one acknowledged after the promotion.
    The daemon's URL names the failing master itself (the {selfheal} slot, 3037, is
    in the first node's range), so its client must find the others on its own."""
    cluster = replicated_cluster
    config = {"selfheal": {"redis": {"url": cluster.url, "cluster": True, "namespace": NAMESPACE}}}
    daemon = daemon_factory.start(config=config)
    pid = daemon.status()["pid"]
    slot = cluster.keyslot("{" + NAMESPACE + "}")
    old = cluster.node_of_slot(slot)
    (replica,) = cluster.replicas_of(old)
    assert cluster.url == old.url
    assert daemon.status()["redis"]["master"] == old.address
    survivors = [node for node in cluster.nodes if node is not old or fault == "failover"]
    with StatusWatch(daemon) as watch, Load(daemon) as load:
        wait_until(lambda: len(load.acked) >= 40, 20, "requests flowing")
        faulted_at = time.monotonic()
        fail_master(cluster, old, fault)
        try:
            wait_until(
                lambda: cluster.agreed_master_of(slot, survivors) is replica,
                30,
                "the cluster to promote the replica",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{cluster.logs()}") from None
        promoted_at = time.monotonic()
        try:
            wait_until(
                lambda: load.acked_since(promoted_at) >= 20,
                FOLLOW_TIMEOUT_S,
                "acknowledgements to resume on the new master",
            )
            wait_until(
                lambda: watch.first_on(replica.address, faulted_at),
                FOLLOW_TIMEOUT_S,
                "status to name the new master",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{daemon.log()[-6000:]}") from None
    assert len(load.acked) > 50, "a load worth the name"
    # The sender's outage: the longest pause between two acknowledgements around the
    # fault; it ends when the daemon acknowledges on the new master.
    times = sorted(load.acked.values())
    stalled_from, resumed_at = max(
        ((a, b) for a, b in itertools.pairwise(times) if b > faulted_at), key=lambda g: g[1] - g[0]
    )
    named_at = watch.first_on(replica.address, faulted_at)
    assert named_at is not None

    with replica.client() as bus:
        held = stream_ids(bus, REQUESTS) & set(load.acked)
        lost = sorted(set(load.acked) - held, key=load.acked.__getitem__)

        def undecided() -> set[str]:
            return held - set(completions_by_request(bus))

        try:
            wait_until(lambda: not undecided(), DECIDED_TIMEOUT_S, "every request held decided")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}: {len(undecided())} of {len(held)} acknowledged requests on the new "
                f"master have no decision, e.g. {sorted(undecided())[:5]}\n"
                f"{daemon.log()[-6000:]}"
            ) from None
        counts = completions_by_request(bus)
        doubled = {event_id: n for event_id, n in counts.items() if n != 1}
        assert doubled == {}, f"requests decided more than once: {doubled}"

    refused = dict(Counter(code for _at, code in load.refused))
    print(  # noqa: T201 - the figures of this fault
        f"\ncluster {fault}: {len(load.acked)} requests acknowledged, {len(load.refused)} "
        f"refused {refused}, {len(held)} decided once on the new master, {len(lost)} lost; "
        f"replica promoted {promoted_at - faulted_at:.2f} s after the fault; no "
        f"acknowledgement for {resumed_at - stalled_from:.2f} s, from "
        f"{stalled_from - faulted_at:+.2f} s to {resumed_at - faulted_at:+.2f} s; status "
        f"named the new master at {named_at - faulted_at:.2f} s; status answered "
        f"{len(watch.seen)} times, slowest {watch.slowest_s:.2f} s; service restarts "
        f"{restarts(daemon)}"
    )
    if fault == "failover":
        # The old master stops its clients until the replica has caught up: nothing lost.
        assert lost == [], f"acknowledged requests lost in a CLUSTER FAILOVER: {lost[:5]}"
    else:
        # Only what the old master had acknowledged and not yet replicated.
        late = [event_id for event_id in lost if load.acked[event_id] > promoted_at]
        assert late == [], f"requests acknowledged after the promotion lost: {late[:5]}"
    # A send the daemon could not place is refused as `unavailable` (send it again).
    failed = daemon.log().partition("control method 'events.send' failed")[2][:4000]
    assert {code for _at, code in load.refused} <= {"unavailable"}, f"{load.reasons}\n{failed}"
    assert watch.failed == [], f"status did not answer: {watch.failed[:5]}"
    status = daemon.status()
    assert status["pid"] == pid and daemon.process is not None and daemon.process.poll() is None
    assert status["state"] == "running" and status["redis"]["connected"] is True
    assert daemon.stop() == 0


@pytest.mark.anyio
async def test_cluster_link_starts_again_without_its_url_node(
    replicated_cluster: RedisClusterSet,
) -> None:
    """The URL names one node. Once it is gone, the link's next start (the supervisor
    builds a new link) still connects, from the nodes the previous link's client
    found; from the URL alone it could not."""
    cluster = replicated_cluster
    owner = cluster.node_of_slot(cluster.keyslot("{" + NAMESPACE + "}"))
    (gone,) = cluster.replicas_of(owner)  # a replica: the cluster stays ok without it
    settings = RedisSettings.model_validate(
        {"url": gone.url, "cluster": True, "namespace": NAMESPACE, "connectTimeoutSeconds": 1}
    )
    seeds = ClusterSeeds()
    first = RedisLink(settings, cluster_seeds=seeds)
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            await tg.start(first.run)
            assert first.status.master == owner.address
            tg.cancel_scope.cancel()
    assert sorted(f"{host}:{port}" for host, port in seeds.nodes) == sorted(
        node.address for node in cluster.nodes
    )
    gone.stop(kill=True)

    alone, again = RedisLink(settings), RedisLink(settings, cluster_seeds=seeds)
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(alone.run)
            await tg.start(again.run)
            assert again.status.connected and again.status.master == owner.address
            bus = Bus(again.client, Keys(NAMESPACE))
            event = new_event("test/seeds", {"n": 1}, now_ms=int(time.time() * 1000))
            assert await bus.publish(event) is not None
            while alone.status.last_error is None:  # noqa: ASYNC110 - bounded by fail_after
                await anyio.sleep(0.05)
            assert alone.status.connected is False, "the URL's node is gone"
            tg.cancel_scope.cancel()


# -- client-side timeouts and configuration ---------------------------------------------------


@pytest.mark.anyio
async def test_a_reply_that_comes_too_late_is_not_read_as_the_next_ones(tmp_path: Path) -> None:
    """A master that stops answering (paused, or a failover in progress): the command
    fails, and the reply it gets later is not taken for the next command's."""
    server = RedisServer(tmp_path / "r").start()
    assert server.process is not None
    # No retries: the first late reply is the one under test (a retry would reconnect).
    client = aioredis.Redis(
        host="127.0.0.1", port=server.port, socket_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    bus = Bus(client, Keys("late"))
    try:
        await bus.execute_packed("SET", "before", "its own value")
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            with anyio.fail_after(30), pytest.raises(redis.exceptions.TimeoutError):
                await bus.execute_packed("SET", "during", "1")
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        with anyio.fail_after(10):
            assert await bus.execute_packed("GET", "before") == b"its own value"
    finally:
        await client.aclose()
        server.stop(kill=True)


def test_ack_replicas_needs_a_redis_with_replicas() -> None:
    url = "redis://127.0.0.1:1,127.0.0.1:2"
    fine = RedisSettings.model_validate({"url": url, "sentinelMaster": "m", "ackReplicas": 1})
    assert fine.ack_replicas == 1
    for bad in (
        {"url": "redis://127.0.0.1:1", "cluster": True, "ackReplicas": 1},
        {"url": "embedded", "ackReplicas": 1},
        {"url": url, "sentinelMaster": "m", "cluster": True},
    ):
        with pytest.raises(ValidationError):
            RedisSettings.model_validate(bad)
