"""Typesense failing under a real daemon.

Down, or hung past the snapshot timeout: classified from the evidence as transient and
retried, not escalated, not mistaken for a NAS problem. A snapshot that cannot be made
where we read it (Typesense answers 500, or answers success having written nothing):
a configuration problem no retry fixes, so escalated at once, notified once.

Typesense 0.24 itself answers 201 to a snapshot it could not write (a read-only or
full folder, a path under /proc: checked by hand), so "wrote nothing" is made with the
real server and a read-only mount. The 500 (what a newer server or a proxy in front of
it answers) comes from a small HTTP proxy in front of the real server that passes every
call through except the snapshot.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from selfheal.backup.sources.typesense import API_KEY_HEADER
from selfheal.backup.transports.mount import mark_nas
from tests.support.daemon import Daemons
from tests.support.http import Posted, Reply, played_service
from tests.support.mounts import Mounts
from tests.support.servers import wait_until
from tests.support.typesense import TypesenseServer

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("fault", ["down", "hung"])
def test_a_typesense_fault_is_classified_and_retried(
    short_home: Path, daemon_factory: Daemons, tmp_path: Path, fault: str
) -> None:
    server = TypesenseServer(tmp_path / "ts").start()
    nas = short_home / "nas"
    nas.mkdir()
    mark_nas(nas, "three-body")
    config: dict[str, Any] = {
        "selfheal": {
            "backups": {
                "redis": {"enabled": False},
                "typesense": {
                    "url": server.url,
                    "apiKey": server.api_key,
                    "snapshotRoot": str(tmp_path / "snapshots"),
                    "snapshotTimeoutSeconds": 2,
                    "mountRoot": str(nas),
                    "requireMountPoint": False,
                },
            }
        }
    }
    try:
        daemon = daemon_factory.start(config=config)
        assert server.process is not None
        if fault == "down":
            server.stop()
        else:
            server.process.send_signal(signal.SIGSTOP)  # alive, answering nothing
        daemon.call("backup.run", {"target": "typesense"})

        def incident() -> dict[str, Any] | None:
            rows = daemon.call("incidents.list", {"limit": 10})["incidents"]
            return next((r for r in rows if r["incidentId"].startswith("backup:typesense")), None)

        wait_until(incident, 60, f"the {fault} Typesense raised as an incident")
        found = incident()
        assert found is not None
        last = daemon.status()["backups"]["last_runs"]["typesense"]
        assert last["status"] == "failed"
        detail = str(last["detail"])
        assert "Typesense" in detail and ("Timeout" in detail if fault == "hung" else True)
        assert found["state"] == "scheduled", found  # retried within the budget
        assert found["lastClass"].startswith("transient"), found
        assert not list(nas.rglob("typesense-*")), "nothing reached the NAS"
        assert daemon.stop() == 0
    finally:
        if server.process is not None and server.process.poll() is None:
            server.process.send_signal(signal.SIGCONT)
        server.stop(kill=True)


def typesense_config(url: str, api_key: str, snapshots: Path, nas: Path) -> dict[str, Any]:
    return {
        "redis": {"enabled": False},
        "typesense": {
            "url": url,
            "apiKey": api_key,
            "snapshotRoot": str(snapshots),
            "mountRoot": str(nas),
            "requireMountPoint": False,
        },
    }


@pytest.mark.parametrize("fault", ["answers 500", "writes nothing"])
def test_a_snapshot_typesense_cannot_make_is_escalated_once(
    short_home: Path, daemon_factory: Daemons, tmp_path: Path, mounts: Mounts, fault: str
) -> None:
    server = TypesenseServer(tmp_path / "ts").start()
    nas = short_home / "nas"
    nas.mkdir()
    mark_nas(nas, "three-body")
    snapshots = tmp_path / "snapshots"
    if fault == "writes nothing":
        mounts.mount_at(snapshots, "1m", read_only=True)
    snapshot_calls: list[str] = []

    def pass_through(posted: Posted) -> Reply:
        if posted.path.startswith("/operations/snapshot"):
            snapshot_calls.append(posted.path)
            return Reply(500, {"message": "Error while creating the snapshot."})
        answer = httpx.get(f"{server.url}{posted.path}", headers={API_KEY_HEADER: server.api_key})
        return Reply(answer.status_code, answer.json())

    try:
        with played_service() as hook, played_service(pass_through) as proxy:
            url = proxy.base if fault == "answers 500" else server.url
            config: dict[str, Any] = {
                "selfheal": {
                    "notifiers": {"webhook": {"url": f"{hook.base}/hook"}},
                    "backups": typesense_config(url, server.api_key, snapshots, nas),
                }
            }
            daemon = daemon_factory.start(config=config)
            daemon.call("backup.run", {"target": "typesense"})

            def escalated() -> list[dict[str, Any]]:
                rows = daemon.call("incidents.list", {"limit": 10})["incidents"]
                return [r for r in rows if r["state"] == "escalated"]

            wait_until(escalated, 60, f"the snapshot that Typesense {fault} escalated")
            wait_until(lambda: len(hook.posts) >= 1, 30, "the notification")
            [incident] = escalated()
            assert incident["incidentId"].startswith("backup:typesense"), incident
            assert incident["lastClass"] == "config", incident
            assert incident["retriesUsed"] == 0, "a configuration problem is not retried"
            last = daemon.status()["backups"]["last_runs"]["typesense"]
            assert last["status"] == "failed", last
            expected = "snapshot failed (500)" if fault == "answers 500" else "no snapshot files"
            assert expected in str(last["detail"]), last
            if fault == "answers 500":
                assert snapshot_calls, "the snapshot call never reached the proxy"
            shown = daemon.call("incidents.show", {"id": incident["incidentId"]})
            assert len(shown["manualQueue"]) == 1, shown["manualQueue"]
            assert len(hook.posts) == 1, [p.body for p in hook.posts]
            assert not list(nas.rglob("typesense-*")), "nothing reached the NAS"
            assert not list(snapshots.iterdir()), "no empty snapshot folder left behind"
            assert httpx.get(f"{server.url}/health").json() == {"ok": True}
            assert daemon.stop() == 0
    finally:
        server.stop(kill=True)
