"""Hot reload of the real daemon: atomic rename, in-place write, SIGHUP, socket, bad edits."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from selfheal.cli import cli
from selfheal.spanfile import read_spans
from tests.support.daemon import DaemonProcess, Daemons
from tests.support.servers import wait_until

pytestmark = pytest.mark.slow

RELOAD_WAIT_S = 10.0


def _value(daemon: DaemonProcess, key: str) -> Any:
    items = daemon.call("config.show", {"effective": True})["items"]
    return next(i for i in items if i["key"] == key)


def _config(max_retries: int) -> dict[str, Any]:
    return {
        "otherProgram": {"keep": True},
        "backupFailureRouter": {"maxRetries": max_retries},
    }


@pytest.fixture
def running(daemon_factory: Daemons) -> DaemonProcess:
    daemon = daemon_factory.start(config=_config(5))
    assert _value(daemon, "router.maxRetries")["value"] == 5
    return daemon


def _wait_value(daemon: DaemonProcess, key: str, value: Any) -> None:
    wait_until(
        lambda: _value(daemon, key)["value"] == value,
        RELOAD_WAIT_S,
        f"{key} == {value!r} after reload",
    )


def test_atomic_rename_edit_is_applied(running: DaemonProcess) -> None:
    running.write_config(_config(7))  # temp file + os.replace
    _wait_value(running, "router.maxRetries", 7)
    item = _value(running, "router.maxRetries")
    assert item["source"] == "file:backupFailureRouter.maxRetries"
    last = running.status()["last_reload"]
    assert last["ok"] is True and last["trigger"] == "watch" and last["changed"] is True
    assert running.status()["config"]["generation"] == 2


def test_in_place_write_is_applied(running: DaemonProcess) -> None:
    with open(running.config_path, "r+") as f:  # same inode, rewritten
        f.seek(0)
        f.truncate()
        f.write(json.dumps(_config(9)))
    _wait_value(running, "router.maxRetries", 9)


def test_invalid_edit_keeps_last_good_config(running: DaemonProcess) -> None:
    bad = _config(5)
    bad["backupFailureRouter"].update({"sleepMinMs": 900000, "sleepMaxMs": 1000})
    running.write_config(bad)
    wait_until(
        lambda: (running.status()["last_reload"] or {}).get("ok") is False,
        RELOAD_WAIT_S,
        "the invalid edit to be rejected",
    )
    status = running.status()
    assert "sleepMinMs" in status["last_reload"]["error"]
    assert status["state"] == "running"
    assert _value(running, "router.sleepMinMs")["value"] == 300000, "last good value kept"
    assert status["config"]["generation"] == 1

    # The rejection is also a span in the daemon's telemetry file.
    span_file = Path(status["telemetry"]["span_file"])

    def rejected_span() -> bool:
        return any(
            s["name"] == "selfheal.config.reload"
            and s["attributes"].get("selfheal.ok") is False
            and "sleepMinMs" in s["attributes"].get("selfheal.error", "")
            for s in read_spans(span_file)
        )

    wait_until(rejected_span, RELOAD_WAIT_S, "a rejected-reload span")

    running.write_config(_config(6))  # the fix is picked up
    _wait_value(running, "router.maxRetries", 6)
    assert running.status()["last_reload"]["ok"] is True


def test_broken_json_is_rejected_with_position(running: DaemonProcess) -> None:
    running.config_path.write_text('{"backupFailureRouter": {"maxRetries": 8,,}}')
    wait_until(
        lambda: (running.status()["last_reload"] or {}).get("ok") is False,
        RELOAD_WAIT_S,
        "the broken JSON to be rejected",
    )
    assert "line 1" in running.status()["last_reload"]["error"]
    assert _value(running, "router.maxRetries")["value"] == 5


def test_sighup_reloads(running: DaemonProcess) -> None:
    running.signal(signal.SIGHUP)
    wait_until(
        lambda: (running.status()["last_reload"] or {}).get("trigger") == "signal",
        RELOAD_WAIT_S,
        "a SIGHUP reload",
    )
    last = running.status()["last_reload"]
    assert last["ok"] is True and last["changed"] is False
    assert running.status()["state"] == "running"


def test_reload_from_socket_and_cli(running: DaemonProcess) -> None:
    runner = CliRunner()
    env = running.env()
    result = runner.invoke(cli, ["reload", "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["ok"] is True

    result = runner.invoke(cli, ["status", "--json"], env=env)
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["last_reload"]["trigger"] == "socket"

    result = runner.invoke(cli, ["status"], env=env)
    assert result.exit_code == 0, result.output
    assert "state running" in result.output and " running" in result.output
    assert "config-watcher" not in result.output  # all running: counted, not listed
    listed = runner.invoke(cli, ["status", "-v"], env=env)
    assert listed.exit_code == 0 and "config-watcher" in listed.output


def test_redis_url_change_restarts_only_redis_services(
    running: DaemonProcess, tmp_path: Path
) -> None:
    from tests.support.servers import RedisServer

    server = RedisServer(tmp_path / "ext").start()
    try:
        cfg = _config(5)
        cfg["selfheal"] = {"redis": {"url": server.url}}
        running.write_config(cfg)
        wait_until(
            lambda: (
                running.status()["redis"]["mode"] == "url"
                and running.status()["redis"]["connected"]
            ),
            20,
            "switch to the URL Redis",
        )
        wait_until(
            lambda: (running.status()["last_reload"] or {}).get("changed") is True,
            20,
            "the reload to finish restarting what depends on Redis",
        )
        last = running.status()["last_reload"]
        # The link and everything riding on it restart; the rest keeps running.
        restarted = set(last["restarted"])
        assert {"embedded-redis", "redis", "timers", "router", "notifier", "scheduler"} <= restarted
        assert not restarted & {"control", "config-watcher"}
        wait_until(lambda: running.redis_servers() == [], 15, "embedded redis stopped")
        assert running.stop() == 0
    finally:
        server.stop(kill=True)


def test_the_cli_finds_the_daemon_through_a_config_it_refused(daemon_factory: Daemons) -> None:
    config: dict[str, Any] = {**_config(5), "selfheal": {"controlSocket": "./run/ctl.sock"}}
    daemon = DaemonProcess(daemon_factory.home, config=config)
    daemon.socket_path = daemon.config_path.parent / "run" / "ctl.sock"
    daemon_factory.made.append(daemon)
    daemon.start()
    env = daemon.env()
    runner = CliRunner()
    assert runner.invoke(cli, ["status"], env=env).exit_code == 0

    # An edit the daemon refuses (broken JSON) still names no other socket: the CLI reads
    # the socket leniently, reaches the daemon and shows why the edit was refused.
    daemon.config_path.write_text('{"selfheal": {"controlSocket": "./run/ctl.sock",,}}')
    wait_until(
        lambda: (daemon.status()["last_reload"] or {}).get("ok") is False,
        RELOAD_WAIT_S,
        "the broken JSON to be rejected",
    )
    shown = runner.invoke(cli, ["status"], env=env)
    assert shown.exit_code == 5, shown.output  # degraded: the edit was refused
    assert "REJECTED" in shown.stdout and "line 1" in shown.stdout
    assert "invalid JSON" in shown.stderr and "using control socket" in shown.stderr

    # A valid file whose other keys are wrong: the socket key still leads to the daemon.
    bad = {**config, "backupFailureRouter": {"maxRetries": "many"}}
    daemon.write_config(bad)
    wait_until(
        lambda: "maxRetries" in ((daemon.status()["last_reload"] or {}).get("error") or ""),
        RELOAD_WAIT_S,
        "the invalid value to be rejected",
    )
    shown = runner.invoke(cli, ["status", "--json"], env=env)
    assert shown.exit_code == 5, shown.output
    assert json.loads(shown.stdout)["control_socket"] == str(daemon.socket_path)
    assert shown.stderr == ""  # nothing was guessed

    # --config naming a missing file is called out, not silently replaced by defaults.
    missing = runner.invoke(cli, ["--config", str(daemon.home / "nope.json"), "status"], env=env)
    assert "--config" in missing.stderr and "does not exist" in missing.stderr
    assert missing.exit_code == 3  # the default socket has no daemon
