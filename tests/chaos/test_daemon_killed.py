"""The real daemon SIGKILLed at seeded random moments of its backups, again and again.

Each round starts a daemon on the same state, asks for one Redis backup and kills
the daemon at a random moment of it (anywhere from before the request is read to
after the delivery). A last daemon then runs undisturbed. What must hold:

- every requested run is delivered exactly once: one artifact per run on the NAS,
  under its final name, matching its manifest (no run lost, none doubled);
- nothing partial is left: no `.partial` on the NAS, nothing of ours in staging or
  the spool, no run marker;
- the daemon's queue ends empty (no request pending or dead-lettered).

The kill count is SELFHEAL_CHAOS_KILLS (default 30) and the moments come from
SELFHEAL_CHAOS_SEED (default: a fixed seed; the seed used is printed).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest

from selfheal.backup.transports.mount import mark_nas
from selfheal.core.artifacts import (
    MANIFEST_SUFFIX,
    PARTIAL_SUFFIX,
    parse_artifact_name,
)
from tests.support.daemon import DaemonProcess, Daemons
from tests.support.mounts import Mounts
from tests.support.nas import ssh_nowhere
from tests.support.servers import RedisServer, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

KILLS = int(os.environ.get("SELFHEAL_CHAOS_KILLS", "30"))
SEED = int(os.environ.get("SELFHEAL_CHAOS_SEED", "20261204"))
MIB = 1 << 20
SETTLE_S = 180.0


def finals(folder: Path) -> list[str]:
    names = os.listdir(folder) if folder.exists() else []
    skip = (PARTIAL_SUFFIX, MANIFEST_SUFFIX)
    return sorted(n for n in names if parse_artifact_name(n) and not n.endswith(skip))


def ours(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return sorted(str(p) for p in folder.rglob("*") if p.is_file() and "redis-" in p.name)


def settled(daemon: DaemonProcess, folder: Path, runs: list[str]) -> bool:
    """Every requested run is on the NAS and nothing is left in flight."""
    made = {
        json.loads((folder / f"{name}{MANIFEST_SUFFIX}").read_text()).get("runId")
        for name in finals(folder)
    }
    queue = daemon.call("queue.stats")
    pending = sum(g["pending"] for st in queue["streams"] for g in st["groups"] or [])
    return (
        set(runs) <= made
        and not ours(daemon.state_dir / "staging")
        and not ours(daemon.state_dir / "spool")
        and not list((daemon.state_dir / "runs").glob("*.json"))
        and pending == 0
    )


def test_a_daemon_killed_at_random_moments_of_its_backups_loses_and_doubles_nothing(
    short_home: Path, daemon_factory: Daemons, redis_server: RedisServer, mounts: Mounts
) -> None:
    print(f"chaos: {KILLS} kills, seed {SEED}")  # noqa: T201 - the seed, to replay a run
    rng = random.Random(SEED)
    client = redis_server.client()
    for i in range(8):  # incompressible: each stage of a run takes a moment
        client.set(f"blob:{i}", os.urandom(MIB))
    nas = mounts.tmpfs("nas", size="1g")
    mark_nas(nas, "three-body")
    config: dict[str, Any] = {
        "backupTransport": ssh_nowhere(short_home),
        "selfheal": {
            # Crash-loop protection (a request the daemon dies on N times is set aside
            # and raised as a failure) is another test's subject: here every death is
            # ours, so a request may be in flight at many of them.
            "bus": {"maxDeliveries": 1000},
            "backups": {
                "redis": {
                    "source": redis_server.url,
                    "mountRoot": str(nas),
                    "retention": {"keepLast": 1000},  # every run's artifact stays countable
                },
                "typesense": {"enabled": False},
            },
        },
    }
    folder = nas / "redis"

    # One undisturbed run measures how long a backup takes here.
    first = daemon_factory.start(config=config, log_name="daemon-0.log")
    runs = [first.call("backup.run", {"target": "redis"})["runId"]]
    started = time.monotonic()
    wait_until(lambda: len(finals(folder)) == 1, 60, "the first backup")
    span = time.monotonic() - started
    assert first.stop() == 0

    moments = []
    for round_ in range(1, KILLS + 1):
        daemon = daemon_factory.start(config=config, log_name=f"daemon-{round_}.log")
        runs.append(daemon.call("backup.run", {"target": "redis"})["runId"])
        moment = rng.uniform(0, span * 1.5)
        moments.append(round(moment, 3))
        time.sleep(moment)  # the kill point itself (not a wait for a condition)
        daemon.kill()
    print(f"chaos: a run takes {span:.2f}s; killed after {moments}")  # noqa: T201

    last = daemon_factory.start(config=config, log_name="daemon-last.log")
    try:
        wait_until(lambda: settled(last, folder, runs), SETTLE_S, "every run delivered")
    except AssertionError as exc:
        state = {
            "on the NAS": os.listdir(folder),
            "staging": ours(last.state_dir / "staging"),
            "spool": ours(last.state_dir / "spool"),
            "runs": runs,
        }
        logs = "".join(
            f"--- {path.name} ---\n" + path.read_text(errors="replace")
            for path in sorted(short_home.glob("daemon-*.log"))
        )
        Path(os.environ.get("SELFHEAL_CHAOS_LOGS", "/dev/null")).write_text(logs)
        raise AssertionError(f"{exc}\n{state}\n--- last log ---\n{last.log()[-6000:]}") from None

    names = finals(folder)
    by_run: dict[str, list[str]] = {}
    for name in names:
        manifest = json.loads((folder / f"{name}{MANIFEST_SUFFIX}").read_text())
        data = (folder / name).read_bytes()
        assert manifest["size"] == len(data), name
        assert manifest["sha256"] == hashlib.sha256(data).hexdigest(), name
        by_run.setdefault(manifest["runId"], []).append(name)
    doubled = {run: made for run, made in by_run.items() if len(made) > 1}
    assert not doubled, f"runs delivered more than once: {doubled}"
    assert set(by_run) == set(runs), "every run delivered, and only those"
    # A kill inside a copy leaves a `.partial` (or, between the link and the unlink of
    # the no-replace rename, a second name of the file); the run's redelivery writes or
    # drops it, so none waits for the retention sweep.
    leftovers = [n for n in os.listdir(folder) if n.endswith(PARTIAL_SUFFIX)]
    assert leftovers == [], leftovers
    stats = last.call("queue.stats")
    assert stats["deadLetters"] == 0, json.dumps(last.call("queue.dead", {"count": 10}))
    assert last.stop() == 0


def test_a_request_the_daemon_keeps_dying_on_is_raised_as_a_failed_backup(
    short_home: Path, daemon_factory: Daemons, redis_server: RedisServer
) -> None:
    client = redis_server.client()
    for i in range(8):
        client.set(f"blob:{i}", os.urandom(MIB))
    nas = short_home / "nas"
    nas.mkdir()
    mark_nas(nas, "three-body")
    config: dict[str, Any] = {
        "selfheal": {
            "bus": {"maxDeliveries": 1},
            "backups": {
                "redis": {
                    "source": redis_server.url,
                    "mountRoot": str(nas),
                    "requireMountPoint": False,
                },
                "typesense": {"enabled": False},
            },
        },
    }
    first = daemon_factory.start(config=config, log_name="daemon-1.log")
    run_id = first.call("backup.run", {"target": "redis"})["runId"]
    marker = first.state_dir / "runs" / "redis.json"
    wait_until(marker.exists, 30, "the run to start")
    first.kill()  # it died handling the request: its second delivery is one too many
    second = daemon_factory.start(config=config, log_name="daemon-2.log")

    def raised() -> list[dict[str, Any]]:
        rows = second.call("incidents.list", {"limit": 10})["incidents"]
        return [r for r in rows if r["incidentId"].startswith("backup:redis")]

    wait_until(raised, 30, "the set-aside request raised as an incident")
    [incident] = raised()
    shown = second.call("incidents.show", {"id": incident["incidentId"]})
    assert run_id in shown["request"]["problemSummary"] + json.dumps(shown["request"])
    assert "set aside" in json.dumps(shown["request"])
    [dead] = second.call("queue.dead", {"count": 10})["deadLetters"]
    assert dead["event"] == "system/backup.requested"
    assert second.stop() == 0
