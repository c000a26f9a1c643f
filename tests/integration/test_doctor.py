"""`selfheal doctor` on real parts: a marked (or unmarked) NAS folder, a real
Typesense with a right or wrong key, a played webhook, no daemon or a running one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from selfheal.backup.transports.mount import mark_nas
from selfheal.cli import cli
from tests.support.daemon import Daemons
from tests.support.http import played_service
from tests.support.sshd import SshServer
from tests.support.typesense import TypesenseServer

pytestmark = pytest.mark.slow


def setup(home: Path, **selfheal: Any) -> dict[str, Any]:
    nas = home / "nas"
    nas.mkdir(exist_ok=True)
    known_hosts = home / "known_hosts"
    known_hosts.touch()
    config: dict[str, Any] = {
        "backupTransport": {
            "nasSshHost": "nobody@127.0.0.1",
            "nasSshFlags": f"-o BatchMode=yes -p 1 -o UserKnownHostsFile={known_hosts}",
        },
        "selfheal": {
            "backups": {
                "redis": {"source": "bus", "mountRoot": str(nas), "requireMountPoint": False},
                "typesense": {"enabled": False},
            },
            **selfheal,
        },
    }
    path = home / ".joelclaw" / "system-bus.config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))
    return config


def doctor(home: Path, *args: str) -> Result:
    env = {"HOME": str(home), "SELFHEAL_CONFIG": None, "PATH": "/usr/bin:/bin"}
    return CliRunner().invoke(cli, ["doctor", *args], env=env)


def checks(result: Result) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in json.loads(result.output)["checks"]}


def test_a_marked_nas_without_a_daemon_passes_with_warnings(short_home: Path) -> None:
    setup(short_home)
    mark_nas(short_home / "nas", "test-nas")
    result = doctor(short_home)
    assert result.exit_code == 0, result.output
    assert "WARN  daemon" in result.output and "selfheal run" in result.output
    assert "ok    nas redis " in result.output
    found = checks(doctor(short_home, "--json"))
    assert found["ssh"]["status"] == "warn"  # the mount works: only the fallback is missing
    assert found["redis"]["status"] == "ok" and found["schedule redis"]["status"] == "ok"
    assert found["notifiers"]["status"] == "warn"


def test_an_unmarked_nas_fails_with_the_fix(short_home: Path) -> None:
    setup(short_home)
    result = doctor(short_home)
    assert result.exit_code == 1, result.output
    assert "FAIL  nas redis" in result.output and "selfheal nas mark" in result.output
    assert checks(doctor(short_home, "--json"))["ssh"]["status"] == "fail"  # and no fallback


def test_an_invalid_config_fails_naming_the_key(short_home: Path) -> None:
    setup(short_home, drainTimeoutSeconds="soon")
    result = doctor(short_home)
    assert result.exit_code == 1 and "drainTimeoutSeconds" in result.output


def test_typesense_with_a_wrong_key_fails(short_home: Path, tmp_path: Path) -> None:
    server = TypesenseServer(tmp_path / "ts").start()
    try:
        snapshots = short_home / "snapshots"
        snapshots.mkdir()
        typesense = {"url": server.url, "snapshotRoot": str(snapshots)}
        config = setup(short_home)
        mark_nas(short_home / "nas", "test-nas")
        config["selfheal"]["backups"]["typesense"] = {**typesense, "apiKey": server.api_key}
        (short_home / ".joelclaw" / "system-bus.config.json").write_text(json.dumps(config))
        assert checks(doctor(short_home, "--json"))["typesense"]["status"] == "ok"
        config["selfheal"]["backups"]["typesense"]["apiKey"] = "wrong-key"
        (short_home / ".joelclaw" / "system-bus.config.json").write_text(json.dumps(config))
        result = doctor(short_home)
        assert result.exit_code == 1 and "the API key is refused" in result.output
    finally:
        server.stop()


def test_send_test_reaches_the_webhook_and_a_running_daemon_is_seen(
    short_home: Path, daemon_factory: Daemons
) -> None:
    with played_service() as hook:
        config = setup(short_home, notifiers={"webhook": {"url": f"{hook.base}/hook"}})
        mark_nas(short_home / "nas", "test-nas")
        daemon_factory.start(config=config)
        result = doctor(short_home, "--send-test")
        assert "ok    daemon" in result.output, result.output
        assert "notify webhook" in result.output and "test notice delivered" in result.output
        [post] = hook.posts
        assert "doctor" in json.dumps(post.body)


def test_ssh_login_write_and_sha256sum_are_checked_on_a_real_sshd(
    short_home: Path, sshd: SshServer
) -> None:
    config = setup(short_home)
    mark_nas(short_home / "nas", "test-nas")
    config["backupTransport"] = {"nasSshHost": sshd.host, "nasSshFlags": sshd.flags()}
    config["selfheal"]["nas"] = {"remoteRoot": str(sshd.remote_root)}
    (short_home / ".joelclaw" / "system-bus.config.json").write_text(json.dumps(config))
    found = checks(doctor(short_home, "--json"))
    assert found["ssh"]["status"] == "ok", found["ssh"]
    assert found["ssh write"]["status"] == "ok" and found["ssh sha256sum"]["status"] == "ok"
    assert [p.name for p in sshd.remote_root.iterdir()] == []  # the test file is gone

    config["backupTransport"]["nasSshFlags"] = sshd.flags(known_hosts=sshd.mismatched_known_hosts)
    (short_home / ".joelclaw" / "system-bus.config.json").write_text(json.dumps(config))
    found = checks(doctor(short_home, "--json"))
    assert found["ssh"]["status"] == "warn"  # the mount still works
    assert "ssh write" not in found
