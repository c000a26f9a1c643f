"""The daemon as a real subprocess: readiness, status, signals, embedded Redis."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from selfheal.cli import cli
from tests.support.daemon import DaemonProcess, Daemons
from tests.support.servers import RedisServer, wait_until

pytestmark = pytest.mark.slow


def _item(daemon: DaemonProcess, key: str) -> object:
    items = daemon.call("config.show", {"effective": True})["items"]
    return next(i["value"] for i in items if i["key"] == key)


def test_starts_on_defaults_and_stops_cleanly(daemon_factory: Daemons) -> None:
    daemon = daemon_factory.start()  # no config file: embedded defaults

    status = daemon.status()
    assert status["state"] == "running"
    assert status["pid"] == daemon.process.pid  # type: ignore[union-attr]
    assert status["config"]["exists"] is False
    assert status["redis"]["mode"] == "embedded"
    assert status["redis"]["connected"] is True
    assert {s["name"] for s in status["services"]} >= {"control", "redis", "embedded-redis"}
    assert all(s["state"] == "running" for s in status["services"])

    sock = daemon.socket_path
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700

    servers = daemon.redis_servers()
    assert len(servers) == 1, "exactly one embedded redis-server"
    redis_pid = servers[0].pid

    assert daemon.stop() == 0
    assert not psutil.pid_exists(redis_pid) or psutil.Process(redis_pid).status() == "zombie"
    assert daemon.redis_servers() == []
    assert not sock.exists(), "socket removed on exit"
    # AOF on and the data in the state dir.
    assert (daemon.state_dir / "redis").is_dir()
    assert any((daemon.state_dir / "redis").glob("appendonly*"))


def test_sigint_also_drains_and_exits_zero(daemon_factory: Daemons) -> None:
    daemon = daemon_factory.start()
    daemon.signal(signal.SIGINT)
    assert daemon.wait_exit() == 0
    assert daemon.redis_servers() == []


def test_embedded_redis_killed_comes_back(daemon_factory: Daemons) -> None:
    daemon = daemon_factory.start()
    [server] = daemon.redis_servers()
    server.kill()  # SIGKILL

    def back() -> bool:
        status = daemon.status()
        st, emb = status["redis"], status["redis"]["embedded"]
        [service] = [s for s in status["services"] if s["name"] == "embedded-redis"]
        return bool(
            service["restarts"] >= 1
            and "exited" in (service["last_error"] or "")
            and emb["pid"] not in (None, server.pid)
            and st["connected"]
        )

    wait_until(back, 30, "embedded redis restarted and reconnected")
    [again] = daemon.redis_servers()
    assert again.pid != server.pid
    assert daemon.status()["state"] == "running"
    assert daemon.stop() == 0
    assert daemon.redis_servers() == []


def test_daemon_killed_leaves_no_orphan_redis(daemon_factory: Daemons) -> None:
    daemon = daemon_factory.start()
    [server] = daemon.redis_servers()
    daemon.kill()  # SIGKILL: no chance to clean up
    # Linux: the parent-death signal stops it. Elsewhere the next start reaps it.
    wait_until(
        lambda: not server.is_running() or server.status() == "zombie",
        15,
        "embedded redis-server to exit after its daemon was killed",
    )
    again = daemon_factory.start()
    assert len(again.redis_servers()) == 1
    assert again.stop() == 0


def test_second_daemon_on_same_socket_refuses(daemon_factory: Daemons) -> None:
    first = daemon_factory.start()
    second = daemon_factory.start(wait=False, log_name="second.log")
    assert second.wait_exit() == 1
    assert "already" in second.log().lower()
    assert first.status()["state"] == "running", "the first daemon is untouched"
    assert first.stop() == 0


def test_stale_socket_is_replaced(daemon_factory: Daemons) -> None:
    daemon = daemon_factory.start()
    daemon.kill()  # leaves the socket file behind
    assert daemon.socket_path.exists()
    again = daemon_factory.start()
    assert again.status()["pid"] == again.process.pid  # type: ignore[union-attr]
    assert again.stop() == 0


def test_url_mode_reconnects_when_redis_returns(daemon_factory: Daemons, tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "ext").start()
    try:
        daemon = daemon_factory.start(config={"selfheal": {"redis": {"url": server.url}}})
        st = daemon.status()["redis"]
        assert st["mode"] == "url" and st["connected"] is True
        assert "embedded" not in st
        assert daemon.redis_servers() == [], "no embedded server in URL mode"

        server.stop(kill=True)
        wait_until(
            lambda: daemon.status()["redis"]["connected"] is False,
            15,
            "the daemon to notice Redis is gone",
        )
        assert daemon.status()["state"] == "running", "a lost Redis does not stop the daemon"
        shown = CliRunner().invoke(cli, ["status"], env=daemon.env())
        assert shown.exit_code == 5 and "DEGRADED: Redis is not connected" in shown.output
        assert "embedded-redis" not in shown.output  # an external Redis has no embedded slot
        server.start()
        wait_until(
            lambda: daemon.status()["redis"]["connected"] is True, 40, "the daemon to reconnect"
        )
        assert daemon.stop() == 0
    finally:
        server.stop(kill=True)


def test_invalid_config_at_start_exits_2_naming_the_key(daemon_factory: Daemons) -> None:
    daemon = daemon_factory.start(config={"backupFailureRouter": {"sleepMinMs": -1}}, wait=False)
    assert daemon.wait_exit() == 2
    assert "sleepMinMs" in daemon.log()
    assert daemon.redis_servers() == []
    assert os.path.exists(daemon.config_path), "the bad file is left as it was"
