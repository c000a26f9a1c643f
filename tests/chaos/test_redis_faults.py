"""The bus's Redis restarted, SIGKILLed and paused under a stream of self-healing requests.

One real daemon on an external redis-server (an append-only file fsynced on every
write) gets requests through its control socket, one after another, while Redis
is restarted gracefully (SIGTERM), SIGKILLed and started again on the same files,
or paused (SIGSTOP) for 20 s. A send the daemon acknowledged is "in"; one it
refused or never answered is not acknowledged (it may or may not be in: the
sender is told to send it again). What must hold:

- the daemon reconnects by itself: the same process sees Redis go, and its status
  shows Redis connected and every service running again within a bounded time;
- every request that is in gets its outcome on `system/self.healing.completed`
  (none lost), exactly one (none doubled), none is dead-lettered, and no outcome
  answers a request nobody sent.

The counts (in, not acknowledged, out, lost, doubled) are printed and named in the
assertion messages.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from selfheal.core.events import SELF_HEALING_REQUESTED
from selfheal.errors import ControlError
from tests.support.daemon import DaemonProcess, Daemons
from tests.support.healing import outcomes, retry_request
from tests.support.servers import RedisServer, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SEND_INTERVAL_S = 0.02
PAUSE_S = 20.0
# The link probes every 5 s and gives a probe 2 s (bus/connection.py).
NOTICE_S = 15.0
# From Redis answering again until the status shows it connected, every service running.
RECONNECT_S = 20.0
SETTLE_S = 60.0
# Requests sent with a delay just before the fault, due while Redis is away (it is
# away longer: the daemon takes seconds to notice, and waits for that).
DELAYED = 5
DELAY_MS = 2_000


class Sender(threading.Thread):
    """Sends requests through the control socket, one incident each, until stopped."""

    def __init__(self, daemon: DaemonProcess, tag: str) -> None:
        super().__init__(name=f"sender-{tag}", daemon=True)
        self.client = daemon.client()
        self.tag = tag
        self.acked: dict[str, str] = {}  # incident id -> request event id
        self.unacked: dict[str, str] = {}  # incident id -> the error
        self.stopped = threading.Event()

    def run(self) -> None:
        number = 0
        while not self.stopped.is_set():
            incident_id = f"chaos:{self.tag}:{number}"
            number += 1
            data = retry_request(incident_id)
            try:
                reply = self.client.call(
                    "events.send", {"name": SELF_HEALING_REQUESTED, "data": data}
                )
            except ControlError as exc:
                self.unacked[incident_id] = exc.code
            else:
                self.acked[incident_id] = reply["id"]
            self.stopped.wait(SEND_INTERVAL_S)

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=30)
        assert not self.is_alive(), "the sender did not stop"


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", durable=True).start()
    try:
        yield server
    finally:
        server.stop(kill=True)


def disconnected(daemon: DaemonProcess) -> bool:
    return not daemon.status()["redis"]["connected"]


def reconnected(daemon: DaemonProcess, pid: int) -> bool:
    status = daemon.status()
    assert status["pid"] == pid, "the daemon was replaced"
    running = all(s["state"] == "running" for s in status["services"])
    return bool(status["redis"]["connected"]) and running


def graceful_restart(server: RedisServer, daemon: DaemonProcess) -> None:
    server.stop()  # SIGTERM: Redis writes its AOF out and exits
    wait_until(lambda: disconnected(daemon), NOTICE_S, "the daemon to see Redis gone")
    server.start()


def sigkill_restart(server: RedisServer, daemon: DaemonProcess) -> None:
    server.stop(kill=True)  # only what was fsynced to the AOF is left
    wait_until(lambda: disconnected(daemon), NOTICE_S, "the daemon to see Redis gone")
    server.start()


def sigstop_pause(server: RedisServer, daemon: DaemonProcess) -> None:
    server.pause()
    began = time.monotonic()
    try:
        wait_until(lambda: disconnected(daemon), NOTICE_S, "the daemon to see Redis hang")
        time.sleep(max(0.0, PAUSE_S - (time.monotonic() - began)))  # the fault: 20 s of silence
    finally:
        server.resume()


@pytest.mark.parametrize("fault", [graceful_restart, sigkill_restart, sigstop_pause])
def test_requests_outlive_a_redis_fault(
    daemon_factory: Daemons,
    durable_redis: RedisServer,
    fault: Callable[[RedisServer, DaemonProcess], None],
) -> None:
    config = {
        "selfheal": {
            "redis": {"url": durable_redis.url},
            "bus": {"reclaimIdleSeconds": 2},
            "backups": {"typesense": {"enabled": False}, "redis": {"enabled": False}},
        }
    }
    daemon = daemon_factory.start(config=config)
    pid = daemon.status()["pid"]
    sender = Sender(daemon, fault.__name__)
    delayed: list[str] = []
    sender.start()
    try:
        wait_until(lambda: len(sender.acked) >= 20, 30, "requests acknowledged before the fault")
        before = len(sender.acked)
        # Requests on timers that come due while Redis is down: fired once it is back.
        for n in range(DELAYED):
            incident_id = f"chaos:{fault.__name__}:timer:{n}"
            params = {
                "name": SELF_HEALING_REQUESTED,
                "data": retry_request(incident_id),
                "delayMs": DELAY_MS,
            }
            daemon.call("events.send", params)
            delayed.append(incident_id)
        fault(durable_redis, daemon)
        back = time.monotonic()
        try:
            wait_until(lambda: reconnected(daemon, pid), RECONNECT_S, "the daemon to reconnect")
        except AssertionError as exc:
            services = json.dumps(daemon.status()["services"])
            raise AssertionError(f"{exc}\n{services}\n{daemon.log()[-6000:]}") from None
        took = time.monotonic() - back
        during = len(sender.acked)
        wait_until(lambda: len(sender.acked) >= during + 20, 30, "requests acknowledged after")
    finally:
        sender.stop()

    client = durable_redis.client()
    acked = set(sender.acked) | set(delayed)

    def answered() -> Counter[str | None]:
        return Counter(o.incident_id for o in outcomes(client))

    try:
        wait_until(lambda: acked <= set(answered()), SETTLE_S, "an outcome for every request in")
    except AssertionError:
        pass  # what is missing is counted and reported below
    out = answered()
    lost = sorted(acked - set(out))
    doubled = {i: n for i, n in out.items() if n > 1}
    unacked_out = sum(1 for i in sender.unacked if i in out)
    counts = (
        f"{fault.__name__}: in {len(acked)} ({before} before the fault, {DELAYED} on timers), "
        f"not acknowledged "
        f"{len(sender.unacked)} {dict(Counter(sender.unacked.values()))} ({unacked_out} of "
        f"them out anyway), out {sum(out.values())}, lost {len(lost)}, doubled "
        f"{len(doubled)}; reconnected {took:.1f}s after Redis was back"
    )
    print(counts)  # noqa: T201 - the counts of this fault
    assert not lost, f"{counts}: lost {lost[:20]}\n{daemon.log()[-6000:]}"
    assert not doubled, f"{counts}: {doubled}"
    assert set(out) <= acked | set(sender.unacked), f"{counts}: an outcome nobody asked for"
    stats = daemon.call("queue.stats")
    assert stats["deadLetters"] == 0, json.dumps(daemon.call("queue.dead", {"count": 10}))
    assert daemon.status()["pid"] == pid
    assert daemon.stop() == 0
