"""Typesense failing under a real daemon: down, or hung past the snapshot timeout. Each
is classified from its evidence and routed as a transient failure: retried, not
escalated, and not mistaken for a NAS problem."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from selfheal.backup.transports.mount import mark_nas
from tests.support.daemon import Daemons
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
