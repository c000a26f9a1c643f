"""Backups through the real daemon and CLI: run at start, --follow, list, verify, retention."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from selfheal.backup.transports.mount import MARKER_NAME, mark_nas
from selfheal.cli import cli
from selfheal.errors import ControlError
from tests.support.daemon import Daemons
from tests.support.nas import ssh_nowhere
from tests.support.servers import RedisServer, free_port, wait_until

pytestmark = pytest.mark.slow


def test_quickstart_style_backup_is_delivered_listed_and_verified(
    short_home: Path, daemon_factory: Daemons
) -> None:
    nas = short_home / "nas"
    nas.mkdir()
    mark_nas(nas, "test-nas")
    config = {
        "backupTransport": ssh_nowhere(short_home),
        "selfheal": {
            "backups": {
                "redis": {
                    "source": "bus",
                    "runAtStart": True,
                    "mountRoot": str(nas),
                    "requireMountPoint": False,
                },
                "typesense": {"enabled": False},
            }
        },
    }
    daemon = daemon_factory.start(config=config)

    def delivered() -> bool:
        runs = daemon.status()["backups"]["last_runs"]
        return runs.get("redis", {}).get("status") == "delivered"

    wait_until(delivered, 60, "the run-at-start backup of the embedded Redis")
    env = daemon.env()
    runner = CliRunner()

    listed = json.loads(runner.invoke(cli, ["backup", "list", "redis", "--json"], env=env).output)
    [artifact] = [a for a in listed["artifacts"] if a["where"] == "mount"]
    assert (nas / "redis" / artifact["name"]).is_file()

    assert artifact["verified"] is True and artifact["created"] and artifact["drill"] is None
    drilled = runner.invoke(cli, ["backup", "drill", "redis", artifact["name"]], env=env)
    assert drilled.exit_code == 0, drilled.output
    human = runner.invoke(cli, ["backup", "list", "redis"], env=env)
    assert human.exit_code == 0, human.output
    header, row = human.output.splitlines()[:2]
    assert header.split() == ["TARGET", "ARTIFACT", "CREATED", "SIZE", "WHERE", "VERIFIED"]
    assert artifact["name"] in row and " ago)" in row and "yes, drill ok" in row
    assert ("KiB" in row or " B " in row) and "mount" in row

    by_path = str(nas / "redis" / artifact["name"])  # a path works as well as a name
    verified = runner.invoke(cli, ["backup", "verify", by_path, "--json"], env=env)
    assert verified.exit_code == 0, verified.output
    assert json.loads(verified.output)["ok"] is True

    followed = runner.invoke(cli, ["backup", "run", "redis", "--follow"], env=env)
    assert followed.exit_code == 0, followed.output
    assert "redis: delivered" in followed.output
    # Not a terminal: plain lines (no carriage returns), the transfer reaching 100%.
    assert "\r" not in followed.output and "ship 100% " in followed.output
    assert followed.output.index("snapshot...") < followed.output.index("ship 100% ")
    as_lines = runner.invoke(cli, ["backup", "run", "redis", "--follow", "--json"], env=env)
    assert as_lines.exit_code == 0, as_lines.output
    items = [json.loads(line) for line in as_lines.output.splitlines()]
    assert all(" " not in line for line in as_lines.output.splitlines())  # compact
    assert items[0]["stage"] == "snapshot" and items[-1]["stage"] == "done"
    assert items[-1]["status"] == "delivered"
    assert isinstance(items[-1]["bytes"], int) and items[-1]["bytes"] == items[-1]["total"] > 0
    assert len(list((nas / "redis").glob("redis-*.rdb"))) >= 1

    shown = runner.invoke(cli, ["status"], env=env)
    assert shown.exit_code == 0, shown.output
    assert "backup      redis: delivered " in shown.output and "verified" in shown.output
    assert "; next in " in shown.output and "running" in shown.output
    assert "backup:typesense" not in shown.output and "RESTARTS" not in shown.output
    every = runner.invoke(cli, ["status", "-v"], env=env)
    assert "RESTARTS" in every.output and "backup:redis:requested" in every.output
    assert "backup:typesense" not in every.output  # typesense is off here

    watched = runner.invoke(
        cli, ["status", "--watch", "--interval", "0.1", "--count", "2"], env=env
    )
    assert watched.exit_code == 0, watched.output
    assert watched.output.count("(refreshing every 0.1s") == 2
    assert "backup      redis: delivered " in watched.output and "; next in " in watched.output
    assert "incidents   0 open" in watched.output and "dead letters" in watched.output
    lines = runner.invoke(
        cli, ["status", "--watch", "--json", "--interval", "0.1", "--count", "2"], env=env
    )
    views = [json.loads(line) for line in lines.output.splitlines()]
    assert len(views) == 2 and all({"status", "queue", "incidents"} <= set(v) for v in views)
    last = views[-1]["status"]["backups"]["last_runs"]["redis"]
    assert last["bytes"] > 0 and last["seconds"] > 0

    plan = runner.invoke(cli, ["backup", "retention", "redis", "--json"], env=env)
    assert plan.exit_code == 0, plan.output
    assert json.loads(plan.output)["dryRun"] is True

    # A corrupted copy on the NAS is caught by verify.
    target = nas / "redis" / artifact["name"]
    target.write_bytes(b"not an rdb")
    bad = runner.invoke(cli, ["backup", "verify", artifact["name"]], env=env)
    assert bad.exit_code == 4 and "MISMATCH" in bad.output
    target.unlink()  # its manifest stays
    gone = runner.invoke(cli, ["backup", "verify", artifact["name"]], env=env)
    assert gone.exit_code == 4 and "is not on the NAS" in gone.output
    # The NAS unreachable (its marker gone, no SSH): the listing says so and still
    # answers with what is on this machine.
    (nas / MARKER_NAME).unlink()
    away = runner.invoke(cli, ["backup", "list", "redis"], env=env)
    assert away.exit_code == 0, away.output
    assert "redis: the NAS cannot be listed right now" in away.output
    assert json.loads(runner.invoke(cli, ["backup", "list", "--json"], env=env).output)[
        "unreachable"
    ].keys() == {"redis", "typesense"}
    assert daemon.stop() == 0


def test_an_ssh_only_set_up_needs_no_mount_and_names_only_ssh_when_it_fails(
    short_home: Path, daemon_factory: Daemons
) -> None:
    known_hosts = short_home / "known_hosts"
    known_hosts.touch()
    config = {
        "backupTransport": {
            "nasSshHost": "nobody@127.0.0.1",
            "nasSshFlags": f"-o BatchMode=yes -p {free_port()} -o UserKnownHostsFile={known_hosts}",
        },
        "selfheal": {
            # No mountRoot anywhere: nothing to mount. The NAS stays down: spool at once.
            "nas": {"useMount": False, "waitForNasSeconds": 0},
            "backups": {"redis": {"source": "bus"}, "typesense": {"enabled": False}},
        },
    }
    daemon = daemon_factory.start(config=config)
    runner = CliRunner()
    followed = runner.invoke(cli, ["backup", "run", "redis", "--follow"], env=daemon.env())
    assert followed.exit_code == 4, followed.output  # spooled is not a success
    final = followed.output.splitlines()[-2]
    assert final.startswith("redis: spooled redis-") and "waits in the spool: ssh: " in final
    assert "mount" not in final
    assert daemon.stop() == 0


def test_a_disabled_or_unknown_target_is_refused_with_and_without_follow(
    short_home: Path, daemon_factory: Daemons
) -> None:
    # Issue 11.10: `backup run typesense --follow` on a disabled target waited forever
    # (and without --follow it said "requested" and exited 0).
    nas = short_home / "nas"
    nas.mkdir()
    mark_nas(nas, "test-nas")
    config = {
        "selfheal": {
            "backups": {
                "redis": {"source": "bus", "mountRoot": str(nas), "requireMountPoint": False},
                "typesense": {"enabled": False},
            }
        },
    }
    daemon = daemon_factory.start(config=config)
    env = daemon.env()
    runner = CliRunner()
    for args in (["typesense"], ["typesense", "--follow"], ["typesense", "--follow", "--json"]):
        started = time.monotonic()
        refused = runner.invoke(cli, ["backup", "run", *args], env=env)
        assert refused.exit_code == 4, (args, refused.output)
        assert "'typesense' is disabled (selfheal.backups.typesense.enabled is false)" in (
            refused.output
        )
        assert time.monotonic() - started < 10, "refused at once, not after a timeout"
    unknown = runner.invoke(cli, ["backup", "run", "mysql", "--follow"], env=env)
    assert unknown.exit_code == 2 and "'mysql' is not one of" in unknown.output
    with pytest.raises(ControlError) as caught:
        daemon.call("backup.run", {"target": "mysql", "follow": True})
    assert caught.value.code == "invalid_params"
    assert 'target must be one of typesense, redis (got "mysql")' in caught.value.message
    assert daemon.stop() == 0


def test_a_restore_drill_proves_the_backup_and_a_damaged_one_raises_the_incident(
    short_home: Path, daemon_factory: Daemons, redis_server: RedisServer
) -> None:
    source = redis_server.client()
    for db, count in ((0, 30), (3, 5)):
        source.execute_command("SELECT", db)
        source.mset({f"k{db}:{i}": str(i) for i in range(count)})
    source.execute_command("SELECT", 0)
    nas = short_home / "nas"
    nas.mkdir()
    mark_nas(nas, "test-nas")
    config = {
        "selfheal": {
            "backups": {
                "redis": {
                    "source": redis_server.url,
                    "mountRoot": str(nas),
                    "requireMountPoint": False,
                },
                "typesense": {"enabled": False},
            }
        }
    }
    daemon = daemon_factory.start(config=config)
    env = daemon.env()
    runner = CliRunner()
    made = runner.invoke(cli, ["backup", "run", "redis", "--follow"], env=env)
    assert made.exit_code == 0, made.output

    drilled = runner.invoke(cli, ["backup", "drill", "redis", "--json"], env=env)
    assert drilled.exit_code == 0, drilled.output
    result = json.loads(drilled.output)
    assert result["ok"] and result["found"] == {"db0": 30, "db3": 5} == result["expected"]
    assert not list((daemon.state_dir / "drill").iterdir())  # the throwaway folder is gone

    [artifact] = list((nas / "redis").glob("redis-*.rdb"))
    artifact.chmod(0o644)
    artifact.write_bytes(artifact.read_bytes()[:-20] + b"\0" * 20)
    broken = runner.invoke(cli, ["backup", "drill", "redis", artifact.name], env=env)
    assert broken.exit_code == 4 and "FAILED" in broken.output
    assert "checksum mismatch" in broken.output

    def raised() -> bool:
        rows = daemon.call("incidents.list", {})["incidents"]
        return any(r["incidentId"] == "backup:redis" for r in rows)

    wait_until(raised, 30, "the failed drill to raise the redis incident")
    assert daemon.call("backup.drills", {})["redis"]["ok"] is False


def test_a_followed_run_that_only_spools_exits_non_zero(
    short_home: Path, daemon_factory: Daemons
) -> None:
    unmarked = short_home / "not-the-nas"
    unmarked.mkdir()
    config = {
        "backupTransport": ssh_nowhere(short_home, nasMaxAttempts=1),
        "selfheal": {
            "nas": {"waitForNasSeconds": 0},  # the NAS stays down: spool at once
            "backups": {
                "redis": {"source": "bus", "mountRoot": str(unmarked), "requireMountPoint": False},
                "typesense": {"enabled": False},
            },
        },
    }
    daemon = daemon_factory.start(config=config)
    followed = CliRunner().invoke(cli, ["backup", "run", "redis", "--follow"], env=daemon.env())
    assert followed.exit_code == 4, followed.output
    assert "redis: spooled" in followed.output and "ended spooled" in followed.output
