"""The real daemon when the files under it turn hostile or vanish.

The config path replaced by /dev/zero, a FIFO or a huge file; the config deleted;
the whole `~/.joelclaw` folder deleted under a running daemon; a second daemon on
the same state dir; a SIGKILL after all that. The daemon stays up and responsive,
keeps its last good config, rebuilds what it needs, and leaves no process behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from selfheal.config.locate import MAX_CONFIG_BYTES
from tests.support.daemon import DaemonProcess, Daemons
from tests.support.servers import wait_until

pytestmark = pytest.mark.slow

WAIT_S = 15.0
GOOD = {"backupFailureRouter": {"maxRetries": 5}}


def _value(daemon: DaemonProcess, key: str) -> Any:
    items = daemon.call("config.show", {"effective": True})["items"]
    return next(i for i in items if i["key"] == key)["value"]


def _rejected(daemon: DaemonProcess, words: str) -> dict[str, Any]:
    """Wait for a rejected reload whose error names `words`; return it."""

    def seen() -> bool:
        last = daemon.status()["last_reload"] or {}
        return last.get("ok") is False and words in (last.get("error") or "")

    wait_until(seen, WAIT_S, f"a reload rejected with {words!r}")
    last: dict[str, Any] = daemon.status()["last_reload"]
    return last


def _swap_in(daemon: DaemonProcess, make: Any) -> None:
    """Replace the config file by what `make(tmp_path)` creates, with one rename."""
    tmp = daemon.config_path.with_name(".swap")
    make(tmp)
    os.replace(tmp, daemon.config_path)


def _edit_is_applied(daemon: DaemonProcess, retries: int) -> None:
    daemon.write_config({"backupFailureRouter": {"maxRetries": retries}})
    wait_until(
        lambda: _value(daemon, "router.maxRetries") == retries, WAIT_S, "the good edit applied"
    )


@pytest.fixture
def running(daemon_factory: Daemons) -> DaemonProcess:
    daemon = daemon_factory.start(config=GOOD)
    assert _value(daemon, "router.maxRetries") == 5
    return daemon


def test_config_symlinked_to_dev_zero_is_refused_unread(running: DaemonProcess) -> None:
    _swap_in(running, lambda tmp: os.symlink("/dev/zero", tmp))
    last = _rejected(running, "character device")
    assert "not a regular file" in last["error"]
    assert running.call("ping")["pong"] is True
    assert running.process is not None
    rss = psutil.Process(running.process.pid).memory_info().rss
    assert rss < 400 * 2**20, f"the daemon read the device: RSS {rss} bytes"
    assert _value(running, "router.maxRetries") == 5, "last good config kept"
    _edit_is_applied(running, 6)


def test_config_replaced_by_a_fifo_blocks_nothing_and_sigterm_stops(
    running: DaemonProcess,
) -> None:
    _swap_in(running, lambda tmp: os.mkfifo(tmp))
    _rejected(running, "FIFO")
    # Responsive while the FIFO sits there, and a second reload does not hang either.
    assert running.call("config.reload")["ok"] is False
    assert running.call("ping")["pong"] is True
    assert _value(running, "router.maxRetries") == 5
    running.signal(signal.SIGTERM)
    assert running.wait_exit(30) == 0


def test_huge_config_is_refused_once_not_reread(running: DaemonProcess) -> None:
    def big(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            handle.truncate(50 * 2**20)  # 50 MB of zero bytes

    _swap_in(running, big)
    last = _rejected(running, f"at most {MAX_CONFIG_BYTES} bytes")
    # Unchanged, the file is not read again: the watcher only looks at stat().
    generation_at = last["at"]
    wait_until(lambda: running.call("ping")["pong"], WAIT_S, "ping")
    stays = running.status()["last_reload"]
    assert stays["at"] == generation_at, "an unchanged big file is not reloaded every second"
    _edit_is_applied(running, 7)


def test_deleted_config_keeps_the_last_good_one_until_it_returns(running: DaemonProcess) -> None:
    running.config_path.unlink()
    last = _rejected(running, "missing")
    assert "keeping the last good config" in last["error"]
    status = running.status()
    assert status["config"]["present"] is False
    assert _value(running, "router.maxRetries") == 5, "not reset to the default (3)"
    _edit_is_applied(running, 8)
    assert running.status()["config"]["present"] is True


def test_cli_refuses_a_fifo_config_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    result = subprocess.run(
        [sys.executable, "-m", "selfheal", "--config", str(fifo), "nas", "config", "show"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert result.returncode == 2
    assert "FIFO" in result.stderr


def _stream_length(daemon: DaemonProcess, name: str) -> int:
    stats = daemon.call("queue.stats")
    text = json.dumps(stats)
    assert name in text, f"stream {name} not in {text[:500]}"
    for stream in stats["streams"]:
        if stream["event"] == name:
            return int(stream["length"])
    raise AssertionError(f"no stream {name}")


def test_deleting_the_state_folder_is_repaired_and_a_second_daemon_refused(
    daemon_factory: Daemons,
) -> None:
    daemon = daemon_factory.start(config=GOOD)
    sent = daemon.call("events.send", {"name": "test/kept.event", "data": {"n": 1}, "force": True})
    assert sent["entryId"]
    [server] = daemon.redis_servers()

    shutil.rmtree(daemon.home / ".joelclaw")

    # The socket (and its lock) come back; the embedded Redis moves its data into
    # the re-created folder and restarts there.
    wait_until(daemon.socket_path.exists, WAIT_S, "the control socket to be bound again")
    wait_until(
        lambda: (daemon.state_dir / "redis" / "appendonly.aof").exists(),
        WAIT_S,
        "the embedded Redis AOF rewritten into the re-created data dir",
    )

    def restarted_and_connected() -> bool:
        status = daemon.status()
        [embedded] = [s for s in status["services"] if s["name"] == "embedded-redis"]
        return bool(
            status["redis"]["connected"]
            and embedded["restarts"] >= 1
            and "re-created data dir" in (embedded["last_error"] or "")
        )

    wait_until(
        restarted_and_connected,
        30,
        "the embedded Redis restarted on its new folder and reconnected",
    )
    assert not server.is_running() or server.status() == psutil.STATUS_ZOMBIE
    assert _stream_length(daemon, "test/kept.event") == 1, "the event survived the rm -rf"
    assert _value(daemon, "router.maxRetries") == 5, "the deleted config did not reset values"

    second = daemon_factory.start(wait=False, log_name="second.log")
    assert second.wait_exit() == 1
    assert "already running" in second.log()
    assert str(daemon.process.pid) in second.log()  # type: ignore[union-attr]
    assert daemon.status()["state"] == "running"

    [current] = daemon.redis_servers()
    daemon.kill()  # SIGKILL: the parent-death signal must stop redis for good
    wait_until(
        lambda: not current.is_running() or current.status() == psutil.STATUS_ZOMBIE,
        15,
        "the embedded redis-server to exit after its daemon was killed",
    )
