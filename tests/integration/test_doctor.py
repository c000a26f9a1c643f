"""`selfheal doctor` on real parts: a healthy set-up of real servers (Redis, Typesense,
sshd, a mounted NAS, a running daemon), then each dependency broken in turn: a wrong
Typesense key, a missing marker, a plain folder where the mount should be, an unknown
host key, Redis down, a disk nearly full. Each names the check, its verdict and the fix."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from selfheal.backup.transports.mount import mark_nas
from selfheal.cli import cli
from selfheal.doctor import LOW_SPACE_BYTES
from tests.support.daemon import Daemons
from tests.support.http import played_service
from tests.support.mounts import Mounts
from tests.support.nas import ssh_nowhere
from tests.support.servers import RedisServer, free_port
from tests.support.sshd import SshServer
from tests.support.typesense import TypesenseServer

pytestmark = pytest.mark.slow


def setup(home: Path, **selfheal: Any) -> dict[str, Any]:
    nas = home / "nas"
    nas.mkdir(exist_ok=True)
    config: dict[str, Any] = {
        "backupTransport": ssh_nowhere(home),
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


def write(home: Path, config: dict[str, Any]) -> None:
    """Replace the config `setup` wrote."""
    (home / ".joelclaw" / "system-bus.config.json").write_text(json.dumps(config))


def doctor(home: Path, *args: str) -> Result:
    env = {"HOME": str(home), "SELFHEAL_CONFIG": None, "PATH": "/usr/bin:/bin"}
    return CliRunner().invoke(cli, ["doctor", *args], env=env)


def checks(result: Result) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in json.loads(result.output)["checks"]}


def failing(home: Path, name: str) -> dict[str, Any]:
    """The check `name` of a doctor run that must exit 1 (with --json and without)."""
    result = doctor(home, "--json")
    assert result.exit_code == 1, result.output
    assert json.loads(result.output)["ok"] is False
    check = checks(result)[name]
    assert check["status"] == "fail", check
    text = doctor(home)
    assert text.exit_code == 1, text.output
    assert f"FAIL  {name} " in text.output and f"fix: {check['fix']}" in text.output
    return check


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


def test_a_transport_turned_off_is_not_checked_nor_failed(short_home: Path) -> None:
    # SSH-only: no mount anywhere, and the (unreachable) SSH is what is checked.
    setup(short_home, nas={"useMount": False})
    found = checks(doctor(short_home, "--json"))
    assert found["nas"]["status"] == "ok" and "useMount is false" in found["nas"]["detail"]
    assert found["ssh"]["status"] == "fail"  # the only way to the NAS is down: a failure
    # Mount-only: a marked folder, and SSH not looked at.
    setup(short_home, nas={"useSsh": False})
    mark_nas(short_home / "nas", "test-nas")
    result = doctor(short_home, "--json")
    found = checks(result)
    assert found["ssh"]["status"] == "ok" and "useSsh is false" in found["ssh"]["detail"]
    assert found["nas redis"]["status"] == "ok"
    # Nothing to back up: neither the NAS nor SSH can fail the run.
    config = setup(short_home)
    config["selfheal"]["backups"]["redis"]["enabled"] = False
    write(short_home, config)
    found = checks(doctor(short_home, "--json"))
    assert found["nas"]["status"] == "ok" and "no backup target" in found["nas"]["detail"]
    assert "ssh" not in found


def test_an_unmarked_nas_fails_with_the_fix(short_home: Path) -> None:
    setup(short_home)
    nas = failing(short_home, "nas redis")
    assert "no .selfheal-nas marker" in nas["detail"]
    assert (
        nas["fix"]
        == f"run `selfheal nas mark {short_home / 'nas'}` if the share mounted there is the NAS"
    )
    ssh = checks(doctor(short_home, "--json"))["ssh"]
    assert ssh["status"] == "fail"  # and no fallback: nothing listens on port 1
    assert ssh["fix"].startswith("start sshd on 127.0.0.1:1,") and "nasSshFlags" in ssh["fix"]


def test_a_plain_folder_where_the_mount_should_be_fails_until_the_share_is_mounted(
    short_home: Path, mounts: Mounts
) -> None:
    config = setup(short_home)
    nas = short_home / "nas"
    config["selfheal"]["backups"]["redis"]["requireMountPoint"] = True
    write(short_home, config)
    mark_nas(nas, "test-nas")  # marked, but the local disk: the share is not mounted
    check = failing(short_home, "nas redis")
    assert check["detail"] == f"NAS root {nas} is not a mount point (the share is not mounted)"
    assert check["fix"].startswith(f"mount the NAS share on {nas}: a plain folder there")
    assert "nas redis space" not in checks(doctor(short_home, "--json"))

    mounts.mount_at(nas, "2g")  # the share arrives (a real mount), and is marked
    mark_nas(nas, "test-nas")
    result = doctor(short_home, "--json")
    assert result.exit_code == 0, result.output
    found = checks(result)
    assert found["nas redis"]["status"] == "ok" and found["nas redis space"]["status"] == "ok"


@pytest.mark.parametrize("where", ["tcp", "unix"])
def test_redis_down_fails_with_the_key_to_fix(short_home: Path, where: str) -> None:
    if where == "tcp":  # a loopback port where nothing listens
        port = free_port()
        url, refused = f"redis://127.0.0.1:{port}/0", f"Error 111 connecting to 127.0.0.1:{port}"
    else:  # a socket path with no server behind it
        url, refused = f"unix://{short_home / 'no-redis.sock'}", "No such file or directory"
    setup(short_home, redis={"url": url})
    mark_nas(short_home / "nas", "test-nas")
    check = failing(short_home, "redis")
    assert "ConnectionError" in check["detail"] and refused in check["detail"], check
    assert check["fix"] == (
        "start the Redis that selfheal.redis.url (SELFHEAL_REDIS_URL) names, "
        "or point that key at one that runs"
    )


def test_a_disk_nearly_full_warns_with_the_fix(short_home: Path, mounts: Mounts) -> None:
    nas = mounts.mount_at(short_home / "nas", "1100m")  # just over the 1 GiB threshold
    spool = nas / "spool"
    config = setup(short_home, nas={"spoolDir": str(spool)})
    config["selfheal"]["backups"]["redis"]["requireMountPoint"] = True
    write(short_home, config)
    mark_nas(nas, "test-nas")
    spool.mkdir()
    before = checks(doctor(short_home, "--json"))
    assert before["nas redis space"]["status"] == "ok", before["nas redis space"]
    assert before["spool space"]["status"] == "ok"

    # Something else fills the share until less than the threshold is left.
    free = os.statvfs(nas).f_bavail * os.statvfs(nas).f_frsize
    with open(nas / "other-data", "wb") as filler:
        os.posix_fallocate(filler.fileno(), 0, free - LOW_SPACE_BYTES + (64 << 20))
    result = doctor(short_home, "--json")
    assert result.exit_code == 0, result.output  # a warning: backups may still fit
    found = checks(result)
    for name, held in (("nas redis space", nas), ("spool space", spool)):
        check = found[name]
        assert check["status"] == "warn", check
        assert check["detail"].endswith(" MiB free, under 1.0 GiB"), check
        assert check["fix"] == (
            f"free at least 1.0 GiB on the disk that holds {held}, or move it to a bigger one: "
            "backups are staged, spooled and copied there"
        )
    assert found["state dir space"]["status"] == "ok"  # another disk, with room
    text = doctor(short_home).output
    assert "WARN  nas redis space" in text and "fix: free at least 1.0 GiB" in text


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
        write(short_home, config)
        assert checks(doctor(short_home, "--json"))["typesense"]["status"] == "ok"
        config["selfheal"]["backups"]["typesense"]["apiKey"] = "wrong-key"
        write(short_home, config)
        check = failing(short_home, "typesense")
        assert check["detail"] == "the API key is refused"
        assert check["fix"] == "set backups.typesense.apiKey (TYPESENSE_API_KEY)"
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
    assert str(sshd.mismatched_known_hosts) in found["ssh"]["fix"]


def test_an_unknown_host_key_warns_with_the_mount_and_fails_without(
    short_home: Path, sshd: SshServer
) -> None:
    unknown = short_home / "empty_known_hosts"
    unknown.touch()  # the NAS was never connected to from here
    config = setup(short_home)
    config["backupTransport"] = {
        "nasSshHost": sshd.host,
        "nasSshFlags": sshd.flags(known_hosts=unknown),
    }
    config["selfheal"]["nas"] = {"remoteRoot": str(sshd.remote_root)}
    write(short_home, config)
    mark_nas(short_home / "nas", "test-nas")
    fix = (
        f"add the NAS's host key to {unknown} "
        f"(check its fingerprint, e.g. `ssh-keyscan -p {sshd.port} 127.0.0.1`)"
    )
    result = doctor(short_home, "--json")
    assert result.exit_code == 0, result.output  # the mount works: the fallback is missing
    ssh = checks(result)["ssh"]
    assert ssh["status"] == "warn" and ssh["fix"] == fix, ssh
    assert "Host key is not trusted for host 127.0.0.1" in ssh["detail"], ssh

    (short_home / "nas" / ".selfheal-nas").unlink()  # the mount is away too: no way left
    ssh = failing(short_home, "ssh")
    assert ssh["fix"] == fix and "ssh write" not in checks(doctor(short_home, "--json"))
    assert [p.name for p in sshd.remote_root.iterdir()] == []  # nothing was sent


def test_a_healthy_set_up_of_real_servers_passes(
    short_home: Path,
    tmp_path: Path,
    daemon_factory: Daemons,
    mounts: Mounts,
    redis_server: RedisServer,
    sshd: SshServer,
) -> None:
    typesense = TypesenseServer(tmp_path / "ts").start()
    try:
        nas = mounts.mount_at(short_home / "nas", "2g")
        mark_nas(nas, "test-nas")
        snapshots = short_home / "snapshots"
        snapshots.mkdir()
        with played_service() as hook:
            config = setup(
                short_home,
                redis={"url": redis_server.url},
                nas={"remoteRoot": str(sshd.remote_root)},
                notifiers={"webhook": {"url": f"{hook.base}/hook"}},
            )
            config["backupTransport"] = {"nasSshHost": sshd.host, "nasSshFlags": sshd.flags()}
            backups = config["selfheal"]["backups"]
            backups["redis"]["requireMountPoint"] = True
            backups["typesense"] = {
                "url": typesense.url,
                "apiKey": typesense.api_key,
                "snapshotRoot": str(snapshots),
                "mountRoot": str(nas),
                "requireMountPoint": True,
            }
            daemon_factory.start(config=config)
            result = doctor(short_home, "--json", "--send-test")
        assert result.exit_code == 0, result.output
        found = checks(result)
        healthy = [
            "config", "daemon", "redis", "nas redis", "nas redis space", "nas typesense",
            "nas typesense space", "ssh", "ssh write", "ssh sha256sum", "state dir space",
            "spool space", "schedule redis", "schedule typesense", "typesense", "snapshot root",
            "notify webhook",
        ]  # fmt: skip
        assert {name: found[name]["status"] for name in healthy} == dict.fromkeys(healthy, "ok")
        # Only the service manager may be missing here (no user systemd in a test box).
        others = {name: c for name, c in found.items() if name not in healthy}
        assert set(others) <= {"service"}, others
        assert found["redis"]["detail"] == "answers PING"
        assert found["typesense"]["detail"] == f"{typesense.url} healthy, key accepted"
        assert all(c["fix"] == "" for c in found.values() if c["status"] == "ok")
        [post] = hook.posts
        assert "doctor" in json.dumps(post.body)
    finally:
        typesense.stop()
