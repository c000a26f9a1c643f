"""The worker watchdog end to end: a real daemon, a real worker process, real Redis;
only launchd (and systemd) are played by stand-ins that really stop and start it."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from selfheal.cli import cli
from selfheal.core.events import SELF_HEALING_REQUESTED, WORKER_RESTART_REQUESTED
from selfheal.spanfile import read_spans
from tests.support.daemon import DaemonProcess, Daemons
from tests.support.http import PlayedService, Posted, Reply, played_service
from tests.support.servers import RedisServer, wait_until
from tests.support.worker import Worker

pytestmark = pytest.mark.slow

INCIDENT = "worker:w"


@pytest.fixture
def worker(short_home: Path) -> Iterator[Worker]:
    made = Worker(short_home / "worker")
    made.start()
    try:
        yield made
    finally:
        made.stop()


@pytest.fixture
def hook() -> Iterator[PlayedService]:
    with played_service() as service:
        yield service


def config(redis: RedisServer, worker: Worker, hook: PlayedService, **overrides: Any) -> Any:
    return {
        "selfheal": {
            "redis": {"url": redis.url},
            "watchdog": {"enabled": True, "workers": [worker.settings(**overrides)]},
            "notifiers": {"webhook": {"url": f"http://127.0.0.1:{hook.port}/hook"}},
        }
    }


def start(
    daemons: Daemons, redis: RedisServer, worker: Worker, hook: PlayedService, **overrides: Any
) -> DaemonProcess:
    return daemons.start(config=config(redis, worker, hook, **overrides), env=worker.env())


def incident(daemon: DaemonProcess) -> dict[str, Any] | None:
    found: dict[str, Any] | None = None
    for row in daemon.call("incidents.list", {})["incidents"]:
        if row["incidentId"] == INCIDENT:
            found = row
    return found


def incident_state(daemon: DaemonProcess) -> str | None:
    row = incident(daemon)
    return None if row is None else str(row["state"])


def escalations(hook: PlayedService) -> list[Any]:
    return [p for p in hook.posts if "escalat" in str(p.body).lower()]


def test_a_killed_worker_is_restarted_verified_and_the_incident_remediated(
    daemon_factory: Daemons, redis_server: RedisServer, worker: Worker, hook: PlayedService
) -> None:
    daemon = start(daemon_factory, redis_server, worker, hook)
    first = worker.pid()
    killed_at = time.monotonic()
    worker.kill()
    wait_until(lambda: incident_state(daemon) == "remediated", 40, "the incident remediated")
    took = time.monotonic() - killed_at
    assert worker.healthy() and worker.pid() != first
    assert len(worker.calls("kickstart")) == 1
    assert worker.registrations() >= 1  # re-registered with the SDK after the restart
    status = daemon.call("watchdog.status")
    [entry] = status["workers"]
    assert entry["last_restart"]["outcome"] == "remediated"
    assert entry["restarts_in_window"] == 1
    assert "watchdog" in daemon.status()
    assert took < 30, took
    # The restart is in the trace of the decision that ordered it: one trace per incident.
    span_file = Path(daemon.status()["telemetry"]["span_file"])

    def traces(name: str) -> set[str]:
        return {s["context"]["trace_id"] for s in read_spans(span_file) if s["name"] == name}

    wait_until(lambda: traces("selfheal.worker.restart"), 15, "the restart span")
    assert traces("selfheal.worker.restart") <= traces("selfheal.route.decide")


def test_a_hung_worker_is_restarted_too(
    daemon_factory: Daemons, redis_server: RedisServer, worker: Worker, hook: PlayedService
) -> None:
    daemon = start(daemon_factory, redis_server, worker, hook)
    first = worker.pid()
    worker.set_mode("hang")  # accepts, never answers
    wait_until(lambda: worker.calls("kickstart"), 40, "a restart of the hung worker")
    worker.set_mode("ok")  # the restarted process answers
    wait_until(lambda: incident_state(daemon) == "remediated", 40, "the incident remediated")
    assert worker.pid() != first


def test_a_flapping_worker_stops_at_the_restart_limit_and_escalates_once(
    daemon_factory: Daemons, redis_server: RedisServer, worker: Worker, hook: PlayedService
) -> None:
    (worker.folder / "crash-after").write_text("3")  # each new start lives 3 s
    daemon = start(daemon_factory, redis_server, worker, hook, maxRestartsPerWindow=2)
    worker.kill()
    wait_until(lambda: incident_state(daemon) == "escalated", 90, "the escalation")
    assert len(worker.calls("kickstart")) == 2
    row = daemon.call("incidents.show", {"id": INCIDENT})
    assert "restart limit reached" in str(row)
    wait_until(lambda: escalations(hook), 20, "the escalation notice")

    def notified() -> list[dict[str, Any]]:
        entries = daemon.call("incidents.show", {"id": INCIDENT})["timeline"]
        return [e for e in entries if e["event"].startswith("notified")]

    wait_until(notified, 20, "the notice on the incident's timeline")
    [notice] = notified()
    assert notice["detail"] == "webhook ok"
    [escalation] = [
        e
        for e in daemon.call("incidents.show", {"id": INCIDENT})["timeline"]
        if e["event"] == "escalate"
    ]
    assert "rule hard_failure" in escalation["detail"] and "restart limit" in escalation["detail"]

    def failures() -> int:
        return int(daemon.call("watchdog.status")["workers"][0]["consecutive_failures"])

    seen = failures()
    wait_until(lambda: failures() >= seen + 4, 30, "the daemon to keep probing")
    assert len(escalations(hook)) == 1  # one notice, however long it stays down
    assert len(worker.calls("kickstart")) == 2


def restarts_settled(redis: RedisServer) -> bool:
    """No retry waits on a timer, and every restart request was served."""
    stream = f"{{selfheal}}:stream:{WORKER_RESTART_REQUESTED}"
    with redis.client() as client:
        if client.zcard("{selfheal}:timers"):
            return False
        last = client.xinfo_stream(stream)["last-generated-id"]
        groups = client.xinfo_groups(stream)
    return all(g["pending"] == 0 and g["last-delivered-id"] == last for g in groups)


def healing_requests(redis: RedisServer) -> int:
    """Self-healing requests published for the worker's incident so far."""
    stream = f"{{selfheal}}:stream:{SELF_HEALING_REQUESTED}"
    with redis.client() as client:
        entries = client.xrange(stream)
    return sum(INCIDENT.encode() in b"".join(fields.values()) for _, fields in entries)


def test_three_daemons_restart_a_worker_once(
    daemon_factory: Daemons,
    redis_server: RedisServer,
    worker: Worker,
    hook: PlayedService,
    short_home: Path,
) -> None:
    # Each in its own HOME (config, socket, state dir), on the same Redis and namespace.
    # They see the worker down after 2, 3 and 4 failing probes: their reports come
    # before, during and after the restart the first one brings about.
    one = start(daemon_factory, redis_server, worker, hook)
    others = [Daemons(short_home / name) for name in ("second", "third")]
    try:
        daemons = [one] + [
            fleet.start(
                config=config(redis_server, worker, hook, failureThreshold=threshold),
                env=worker.env(),
            )
            for fleet, threshold in zip(others, (3, 4), strict=True)
        ]
        for episode in (1, 2):
            worker.kill()
            wait_until(
                lambda n=episode: len(worker.calls("kickstart")) >= n, 40, f"restart {episode}"
            )
            wait_until(lambda: incident_state(one) == "remediated", 40, "the incident remediated")
            # Every daemon sees the worker answer again, every report is decided and
            # every restart it asked for is served.
            wait_until(
                lambda: (
                    all(
                        d.call("watchdog.status")["workers"][0]["consecutive_failures"] == 0
                        for d in daemons
                    )
                    and restarts_settled(redis_server)
                ),
                20,
                "every daemon to see the worker back, every restart served",
            )
            assert len(worker.calls("kickstart")) == episode, f"episode {episode}"
            # One request per failure, whichever daemons saw it: a report that comes
            # after the restart made the worker answer is not sent (it would spend the
            # incident's retry budget on a failure already mended).
            assert healing_requests(redis_server) == episode, f"episode {episode}"
    finally:
        for fleet in others:
            fleet.kill_all()


def test_binding_drift_escalates_without_a_restart(
    daemon_factory: Daemons, redis_server: RedisServer, worker: Worker, hook: PlayedService
) -> None:
    stale = "/Users/joel/old-clone/worker"
    daemon = start(daemon_factory, redis_server, worker, hook, expectedWorkingDirectory=stale)
    worker.kill()
    wait_until(lambda: incident_state(daemon) == "escalated", 40, "the escalation")
    assert worker.calls("kickstart") == [] and not worker.healthy()
    shown = str(daemon.call("incidents.show", {"id": INCIDENT}))
    assert "binding drift" in shown and stale in shown and str(worker.folder) in shown
    wait_until(lambda: escalations(hook), 20, "the escalation notice")


def test_a_worker_inside_its_start_grace_is_skipped_and_reported(
    daemon_factory: Daemons, redis_server: RedisServer, worker: Worker, hook: PlayedService
) -> None:
    daemon = start(daemon_factory, redis_server, worker, hook, startGraceSeconds=3600)
    worker.set_mode("error")  # running (young) but answering 500
    wait_until(
        lambda: (
            (daemon.call("watchdog.status")["workers"][0]["last_restart"] or {}).get("outcome")
            == "skipped"
        ),
        40,
        "a skipped restart",
    )
    [entry] = daemon.call("watchdog.status")["workers"]
    assert "startGraceSeconds" in entry["last_restart"]["detail"]
    assert worker.calls("kickstart") == []
    assert incident_state(daemon) != "remediated"  # a skip is never a fix


def test_force_restarts_inside_the_cooldown_and_plain_restart_does_not(
    daemon_factory: Daemons, redis_server: RedisServer, worker: Worker, hook: PlayedService
) -> None:
    daemon = start(
        daemon_factory, redis_server, worker, hook, restartCooldownMinutes=30, failureThreshold=100
    )
    runner = CliRunner()
    first = runner.invoke(cli, ["watchdog", "restart", "w"], env=daemon.env())
    assert first.exit_code == 0, first.output
    assert first.output.startswith("remediated")
    again = runner.invoke(cli, ["watchdog", "restart", "w"], env=daemon.env())
    assert again.exit_code == 4 and "cooldown" in again.output
    forced = runner.invoke(cli, ["watchdog", "restart", "w", "--force"], env=daemon.env())
    assert forced.exit_code == 0, forced.output
    assert len(worker.calls("kickstart")) == 2
    shown = runner.invoke(cli, ["watchdog", "status"], env=daemon.env())
    assert shown.exit_code == 0 and "2/3" in shown.output, shown.output
    unknown = runner.invoke(cli, ["watchdog", "restart", "nope"], env=daemon.env())
    assert unknown.exit_code == 4 and "no watchdog worker 'nope'" in unknown.output


def test_a_systemd_user_unit_is_restarted_with_systemctl(
    daemon_factory: Daemons, redis_server: RedisServer, worker: Worker, hook: PlayedService
) -> None:
    daemon = start(daemon_factory, redis_server, worker, hook, serviceManager="systemd")
    worker.kill()
    wait_until(lambda: incident_state(daemon) == "remediated", 40, "the incident remediated")
    assert [c[:3] for c in worker.calls("restart")] == [["systemctl", "--user", "restart"]]


def test_a_log_line_alone_raises_the_incident(
    daemon_factory: Daemons, redis_server: RedisServer, worker: Worker, hook: PlayedService
) -> None:
    daemon = start(daemon_factory, redis_server, worker, hook, failureThreshold=100)
    with open(worker.folder / "worker.log", "a") as log:
        log.write("Error: Unable to reach SDK URL http://127.0.0.1:3111/api/inngest\n")
    wait_until(lambda: worker.calls("kickstart"), 40, "a restart after the log line")
    wait_until(lambda: incident_state(daemon) == "remediated", 40, "the incident remediated")
    row = daemon.call("incidents.show", {"id": INCIDENT})
    assert "Unable to reach SDK URL" in str(row["request"]) or "log line" in str(row)
    assert os.path.exists(worker.folder / "worker.log")


def test_a_failed_inngest_run_naming_the_worker_raises_the_incident(
    daemon_factory: Daemons, redis_server: RedisServer, worker: Worker, hook: PlayedService
) -> None:
    failed = {
        "run_id": "01RUN",
        "function_id": "system-bus/backup",
        "status": "Failed",
        "output": {"error": {"message": f"Unable to reach SDK URL {worker.url}"}},
    }

    def inngest_api(request: Posted) -> Reply:
        if request.path.startswith("/v1/events?"):
            return Reply(200, {"data": [{"internal_id": "01EVT", "name": "x"}]})
        if request.path == "/v1/events/01EVT/runs":
            return Reply(200, {"data": [failed]})
        return Reply(404, {})

    with played_service(inngest_api) as inngest:
        cfg = config(redis_server, worker, hook, failureThreshold=100)
        cfg["selfheal"]["watchdog"].update(inngestUrl=inngest.base, inngestScanSeconds=1)
        daemon = daemon_factory.start(config=cfg, env=worker.env())
        wait_until(lambda: worker.calls("kickstart"), 40, "a restart after the failed run")
        wait_until(lambda: incident_state(daemon) == "remediated", 40, "the incident remediated")
        shown = daemon.call("incidents.show", {"id": INCIDENT})
        assert "01RUN" in str(shown["request"])
        assert daemon.call("watchdog.status")["inngest"]["error"] is None
    assert len(worker.calls("kickstart")) == 1  # the run was inspected once


def test_a_restart_due_after_the_watchdog_was_turned_off_is_not_done(
    daemon_factory: Daemons, redis_server: RedisServer, worker: Worker, hook: PlayedService
) -> None:
    cfg = config(redis_server, worker, hook)
    cfg["selfheal"]["watchdog"]["enabled"] = False
    daemon = daemon_factory.start(config=cfg, env=worker.env())
    daemon.call("events.send", {"name": "system/worker.restart.requested", "data": {"worker": "w"}})
    wait_until(lambda: incident_state(daemon) == "escalated", 30, "the escalation")
    assert worker.calls("kickstart") == []
    [entry] = daemon.call("watchdog.status")["workers"]
    assert entry["last_restart"]["outcome"] == "escalated"
    assert "watchdog is off" in entry["last_restart"]["detail"]
